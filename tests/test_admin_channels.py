"""Admin commands on the real channels: operators by platform id, never by display name."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bots.adapters.discord import DiscordAdapter
from bots.adapters.telegram import TelegramAdapter
from bots.core.config import Secrets
from bots.core.permissions import NOT_ALLOWED
from bots.testing.discord_server import DiscordServer, patch_discord_py
from bots.testing.telegram_server import TelegramServer

TG_TOKEN = "123456:TEST-token_abc"
DC_TOKEN = "MTIz.emulator.token-abc"


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TelegramServer]:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TG_TOKEN)
    async with TelegramServer(token=TG_TOKEN) as server:
        yield server


@pytest.fixture
async def dc() -> AsyncIterator[DiscordServer]:
    async with DiscordServer(token=DC_TOKEN) as server:
        with patch_discord_py(server):
            yield server


async def test_telegram_operator_by_id_not_by_name(tg, harness):
    operator = tg.user("Wen", "wen_keeper")
    impostor = tg.user("Wen", "wen_keeper_")  # same display name, another account
    member = tg.user("Alice", "alice")
    adapter = TelegramAdapter.from_config("tg", {"base_url": tg.base_url, "poll_timeout": 5}, Secrets())
    await harness(
        adapter=adapter, plugins=["basics", "admin"], roles={"operators": [f"telegram:{operator['id']}"]}
    )
    for user, allowed in ((member, False), (impostor, False), (operator, True)):
        tg.private_message(user, "/mute telegram:-1009")
        reply = (await tg.next_sent())["text"]
        assert (reply == NOT_ALLOWED) is not allowed, (user["username"], reply)
    tg.group_message(tg.group("Readers"), operator, "/status")  # DM-only, even for operators
    assert "direct message" in (await tg.next_sent())["text"]


async def test_discord_operator_by_id_not_by_name(dc, harness):
    impostor = dc.user("alice2", global_name="Alice")  # Alice's display name, another account
    adapter = DiscordAdapter("discord", token=DC_TOKEN, guild_ready_timeout=0.05, ready_timeout=5)
    await harness(
        adapter=adapter, plugins=["basics", "admin"], roles={"operators": [f"discord:{dc.alice.id}"]}
    )
    for user, allowed in ((dc.bob, False), (impostor, False), (dc.alice, True)):
        await dc.dm(user, "/status")
        reply = (await dc.next_sent()).content
        assert (reply == NOT_ALLOWED) is not allowed, (user.username, reply)
