"""Discord sharding: shard_count / shard_ids per process (discord.py's AutoShardedClient) against
the emulator, which delivers a guild's events on shard (guild_id >> 22) % shard_count and DMs on
shard 0, as Discord does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bots.adapters.discord import DiscordAdapter
from bots.core.config import ConfigError, Secrets
from bots.testing import FakeLLM
from bots.testing.discord_server import DiscordServer, shard_of

TOKEN = "MTIz.emulator.shards"


@pytest.fixture
async def dc() -> AsyncIterator[DiscordServer]:
    async with DiscordServer(token=TOKEN) as server:
        yield server


def sharded(dc: DiscordServer, **shards: Any) -> DiscordAdapter:
    options = {"guild_ready_timeout": 0.05, "restart_delay": 0.05, "ready_timeout": 10.0}
    return DiscordAdapter("discord", token=TOKEN, **dc.channel_options(), **options, **shards)


async def test_each_shard_process_answers_its_own_guilds_and_dms_go_to_shard_0(dc, harness, tmp_path):
    zero = dc.add_guild("Shard Zero", shard=(0, 2))
    one = dc.add_guild("Shard One", shard=(1, 2))
    assert (shard_of(zero.id, 2), shard_of(one.id, 2)) == (0, 1)
    first = await harness(
        adapter=sharded(dc, shard_count=2, shard_ids=[0]),
        llm=FakeLLM(default="from shard 0"),
        data_dir=tmp_path / "first",
    )
    second = await harness(
        adapter=sharded(dc, shard_count=2, shard_ids=[1]),
        llm=FakeLLM(default="from shard 1"),
        data_dir=tmp_path / "second",
    )
    sessions = dc.account().shards
    assert sorted(sessions) == [0, 1] and {s.shard_count for s in sessions.values()} == {2}
    # each process knows only the guilds of its shard, by discord.py's own formula
    client_zero, client_one = first.adapter.client, second.adapter.client
    assert client_zero.get_guild(int(zero.id)).shard_id == 0 and client_zero.get_guild(int(one.id)) is None
    assert client_one.get_guild(int(one.id)).shard_id == 1 and client_one.get_guild(int(zero.id)) is None

    asked = await dc.guild_message(one.channels[0], dc.alice, "who answers here?", mention_bot=True)
    reply = await dc.next_sent()
    assert (reply.content, reply.channel_id, reply.reply_to) == (
        "from shard 1",
        one.channels[0].id,
        asked["id"],
    )
    await dc.guild_message(zero.channels[0], dc.bob, "and here?", mention_bot=True)
    reply = await dc.next_sent()
    assert (reply.content, reply.channel_id) == ("from shard 0", zero.channels[0].id)
    await dc.dm(dc.alice, "a private word")
    reply = await dc.next_sent()
    assert reply.content == "from shard 0"  # DMs arrive on shard 0
    await first.drain()
    await second.drain()
    assert len(first.llm.prompts) == 2 and len(second.llm.prompts) == 1  # nothing handled twice
    assert len(dc.sent) == 3


async def test_one_process_may_run_every_shard(dc, harness):
    zero = dc.add_guild("Shard Zero", shard=(0, 2))
    one = dc.add_guild("Shard One", shard=(1, 2))
    h = await harness(adapter=sharded(dc, shard_count=2), llm=FakeLLM(default="all shards here"))
    assert sorted(dc.account().shards) == [0, 1]
    for guild in (zero, one):
        await dc.guild_message(guild.channels[0], dc.alice, "hello", mention_bot=True)
        reply = await dc.next_sent()
        assert (reply.content, reply.channel_id) == ("all shards here", guild.channels[0].id)
    assert h.adapter.client.shard_count == 2


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"shard_ids": [0]}, "shard_ids needs shard_count"),
        ({"shard_count": 2, "shard_ids": [2]}, "from 0 to 1"),
        ({"shard_count": 2, "shard_ids": [1, 1]}, "distinct"),
        ({"shard_count": 0}, "shard_count"),
    ],
)
def test_shard_options_are_checked(monkeypatch, options, problem):
    monkeypatch.setenv("DISCORD_BOT_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match=problem):
        DiscordAdapter.from_config("discord", options, Secrets())


def test_shard_options_reach_the_adapter(monkeypatch):
    monkeypatch.setenv("DISCORD_BOT_TOKEN", TOKEN)
    adapter = DiscordAdapter.from_config("discord", {"shard_count": 4, "shard_ids": [2, 3]}, Secrets())
    assert (adapter.shard_count, adapter.shard_ids) == (4, [2, 3])
