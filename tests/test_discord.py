"""The Discord channel: real discord.py, our adapter, a real Host, the local gateway + REST emulator."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fixtures.prose import varied_text

from bots.adapters.discord import DiscordAdapter, render
from bots.core.config import ConfigError, Secrets
from bots.core.events import (
    Attachment,
    ChannelKind,
    ChannelRef,
    Mention,
    MessageEvent,
    Outbound,
    ReplyTo,
)
from bots.testing import FakeLLM
from bots.testing.discord_server import SEND_MESSAGE, DiscordServer

TOKEN = "MTIz.emulator.token-abc"


@pytest.fixture
async def dc() -> AsyncIterator[DiscordServer]:
    # tests list `dc` before `harness`, so the hosts stop before the emulator does
    async with DiscordServer(token=TOKEN) as server:
        yield server


def make_adapter(dc: DiscordServer, token: str = TOKEN, **kwargs: Any) -> DiscordAdapter:
    """An adapter pointed at ``dc`` by its options (api_base_url, gateway_url): no patching."""
    # discord.py waits 2 s for more servers before READY; one server needs no wait
    options = {"guild_ready_timeout": 0.05, "restart_delay": 0.05, "ready_timeout": 5.0, **kwargs}
    return DiscordAdapter("discord", token=token, **dc.channel_options(), **options)


async def start(harness: Any, dc: DiscordServer, llm: FakeLLM | None = None, **kwargs: Any) -> Any:
    return await harness(adapter=make_adapter(dc), llm=llm or FakeLLM(default="hello from Tester"), **kwargs)


# -- conversations -------------------------------------------------------------------------------
async def test_dm_is_answered(dc, harness):
    h = await start(harness, dc)
    assert h.adapter.self_id == dc.bot.id and h.adapter.self_name == "tester"
    asked = await dc.dm(dc.alice, "hi there")
    reply = await dc.next_sent()
    assert reply.content == "hello from Tester"
    assert reply.channel_id == asked["channel_id"]
    assert reply.reply_to is None  # a DM needs no reference
    assert h.llm.last_prompt[-1].content.endswith("hi there")
    assert dc.intents is not None and dc.intents & (1 << 15)  # Message Content requested


async def test_guild_chatter_ignored_mention_answered_as_reply(dc, harness):
    h = await start(harness, dc)
    await dc.guild_message(dc.general, dc.alice, "just chatting among ourselves")
    asked = await dc.guild_message(dc.general, dc.bob, "what do you think?", mention_bot=True)
    reply = await dc.next_sent()  # the first answer is to the later, addressed message
    assert reply.reply_to == asked["id"]
    assert reply.body["message_reference"]["message_id"] == int(asked["id"])
    await h.drain()
    assert len(dc.sent) == 1 and len(h.llm.prompts) == 1
    prompt = h.llm.last_prompt[-1].content
    assert "what do you think?" in prompt
    assert "@tester" not in prompt and "<@" not in prompt  # own mention stripped


async def test_reply_to_the_bot_in_a_thread_is_answered(dc, harness):
    h = await start(harness, dc)
    await dc.guild_message(dc.thread, dc.alice, "hello", mention_bot=True)
    first = await dc.next_sent()
    assert first.channel_id == dc.thread.id
    # a reply without the @ping: only the reference says it is for the bot
    follow_up = await dc.guild_message(
        dc.thread, dc.alice, "and you?", reply_to=first.message, reply_ping=False
    )
    second = await dc.next_sent()
    assert second.reply_to == follow_up["id"] and second.channel_id == dc.thread.id
    await h.drain()
    assert len(h.llm.prompts) == 2


async def test_commands_are_answered(dc, harness):
    h = await start(harness, dc)
    await dc.dm(dc.alice, "/ping")
    assert (await dc.next_sent()).content == "pong"
    asked = await dc.guild_message(dc.general, dc.bob, "/ping@tester")
    reply = await dc.next_sent()
    assert reply.content == "pong" and reply.reply_to == asked["id"]
    await dc.guild_message(dc.general, dc.bob, "/ping@someotherbot")
    asked = await dc.guild_message(dc.general, dc.bob, "ping", mention_bot=True)
    assert (await dc.next_sent()).reply_to == asked["id"]  # not the command for another bot
    await h.drain()
    assert h.llm.prompts == []


# -- translation ---------------------------------------------------------------------------------
async def test_translation_of_channels_mentions_replies_and_attachments(dc):
    events: asyncio.Queue[MessageEvent] = asyncio.Queue()

    async def sink(event: MessageEvent) -> None:
        events.put_nowait(event)

    adapter = make_adapter(dc)
    await adapter.start(sink)
    try:
        dm = await dc.dm(dc.alice, "look", attachments=[dc.attachment("cat.png", "image/png")])
        event = await asyncio.wait_for(events.get(), 5)
        assert (event.platform, event.message_id, event.self_id) == ("discord", dm["id"], dc.bot.id)
        assert event.author.id == dc.alice.id and event.author.name == "Alice" and not event.author.is_bot
        assert event.channel.kind is ChannelKind.DM and event.channel.id == dm["channel_id"]
        assert event.segments == (Attachment("image", dm["attachments"][0]["url"], "cat.png"),)

        said = await dc.guild_message(dc.general, dc.alice, f"hi <@!{dc.bob.id}>, ask", mentions=[dc.bob])
        event = await asyncio.wait_for(events.get(), 5)
        assert event.channel.kind is ChannelKind.GROUP
        assert (event.channel.name, event.channel.parent_id) == ("general", dc.guild.id)
        assert event.text == "hi @Bob, ask" and event.mentions == [Mention(dc.bob.id, "Bob")]
        assert not event.mentions_me

        # the bot's managed role, which Discord's autocomplete offers beside the bot user
        await dc.guild_message(dc.thread, dc.bob, "you there?", mention_bot_role=True, reply_to=said)
        event = await asyncio.wait_for(events.get(), 5)
        assert event.channel.kind is ChannelKind.THREAD and event.channel.parent_id == dc.general.id
        assert event.text == "@tester you there?" and event.mentions_me
        assert ReplyTo(said["id"], author_id=dc.alice.id) in event.segments

        await dc.dispatch_raw("MESSAGE_CREATE", {**dc.message(dc.general, dc.alice, ""), "type": 7})  # a join
        await dc.guild_message(dc.general, dc.owner, "after the join notice")
        event = await asyncio.wait_for(events.get(), 5)
        assert event.text == "after the join notice"  # system messages are not chat

        other_bot = dc.user("weatherbot", bot=True)
        await dc.guild_message(dc.general, other_bot, "rain at noon")
        event = await asyncio.wait_for(events.get(), 5)
        assert event.author.is_bot and event.author.id == other_bot.id  # the pipeline decides
    finally:
        await adapter.stop()


def test_plain_text_is_escaped_markdown_is_not():
    assert render("2*3*4 and __init__ [x](https://e.com)", "plain") == [
        r"2\*3\*4 and \_\_init\_\_ \[x](https://e.com)"
    ]
    assert render("see https://example.com/a_b_c", "plain") == ["see https://example.com/a_b_c"]
    assert render("**bold**", "markdown") == ["**bold**"]
    stars = "*" * 1500  # escaping doubles it past the limit: split before escaping
    pieces = render(stars, "plain")
    assert all(len(p) <= 2000 for p in pieces) and "".join(pieces) == "\\*" * 1500


# -- outbound ------------------------------------------------------------------------------------
async def test_a_long_answer_is_split_at_2000_chars(dc, harness):
    answer = varied_text(2_990)  # the gate lets an answer of up to 3,000 characters through
    assert len(answer) > 2_900
    h = await start(harness, dc, FakeLLM(default=answer))
    asked = await dc.guild_message(dc.general, dc.alice, "tell me everything", mention_bot=True)
    await dc.next_sent()
    await h.drain()
    parts = dc.sent
    assert len(parts) >= 2 and all(len(p.content) <= 2000 for p in parts)
    assert re.sub(r"\s+", "", "".join(p.content for p in parts)) == re.sub(r"\s+", "", answer)
    assert [p.reply_to for p in parts] == [asked["id"]] + [None] * (len(parts) - 1)


async def test_a_429_is_retried_and_delivered_once(dc, harness):
    h = await start(harness, dc)
    dc.fail_next(SEND_MESSAGE, retry_after=0.3)
    await dc.dm(dc.alice, "hello?")
    reply = await dc.next_sent()
    await h.drain()
    assert reply.content == "hello from Tester"
    assert dc.rate_limited == 1
    assert dc.requests.count(SEND_MESSAGE) == 2 and len(dc.sent) == 1


async def test_model_output_never_pings(dc, harness):
    await start(harness, dc, FakeLLM(default=f"@everyone look, <@{dc.alice.id}> and @here too"))
    asked = await dc.guild_message(dc.general, dc.bob, "say hi to all", mention_bot=True)
    reply = await dc.next_sent()
    assert "@everyone" in reply.content and reply.reply_to == asked["id"]
    assert reply.allowed_mentions == {"parse": []}  # no @everyone, roles, users, nor the replied user
    assert not reply.mention_everyone and reply.pinged_users == []


async def test_typing_indicator(dc, harness):
    h = await start(harness, dc, FakeLLM(delay_s=1.0))  # longer than the pipeline's TYPING_AFTER_S
    dm = await dc.dm(dc.alice, "are you typing?")
    await dc.next_sent()
    assert dm["channel_id"] in dc.typing_calls  # shown while the model wrote
    await h.adapter.typing(ChannelRef("discord", "404", ChannelKind.GROUP))  # unknown channel: no raise
    await h.host.stop()
    await h.adapter.typing(ChannelRef("discord", dm["channel_id"], ChannelKind.DM))  # stopped: no raise
    assert dc.typing_calls == [dm["channel_id"]]


# -- gateway resilience --------------------------------------------------------------------------
async def test_gateway_drop_resume_with_replay_is_answered_once(dc, harness):
    h = await start(harness, dc)
    first = await dc.dm(dc.alice, "first")
    assert (await dc.next_sent()).content == "hello from Tester"
    # the socket drops; the RESUME replays from `first` on (already seen) plus what came meanwhile
    replay_from = dc.seq_by_message[first["id"]]
    await dc.drop_connection(4000, replay_from=replay_from)
    await dc.dm(dc.alice, "second")
    second = await dc.next_sent()
    await dc.wait_resumed(1)
    await h.drain()
    assert second.content == "hello from Tester"
    assert len(dc.sent) == 2 and len(h.llm.prompts) == 2  # "first" was not answered again
    assert dc.identify_count == 1 and dc.resume_count == 1  # resumed, not a new session
    assert replay_from in dc.replayed  # the client did get "first" a second time


async def test_restart_mid_answer_is_answered_once(dc, harness):
    first = await start(harness, dc, FakeLLM(default="too late", delay_s=5))
    asked = await dc.dm(dc.alice, "tell me a story")
    await dc.wait_typing(asked["channel_id"])  # accepted; the model is writing
    first.host.stop_grace_s = 0
    await first.host.stop()  # a crash: the answer in flight is lost
    assert dc.sent == []

    second = await harness(
        adapter=make_adapter(dc), llm=FakeLLM(default="once upon a time"), data_dir=first.config.data_dir
    )
    await dc.wait_identified(2)
    await dc.redeliver(asked)  # the platform sends it again too
    reply = await dc.next_sent()
    await second.drain()
    assert reply.content == "once upon a time"
    assert [s.content for s in dc.sent] == ["once upon a time"]


def adapter_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("bots.adapters")]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a log record carries a traceback"
    assert "Traceback" not in caplog.text


async def test_malformed_payloads_are_skipped_and_the_connection_stays(dc, harness, caplog):
    caplog.set_level(logging.DEBUG)
    h = await start(harness, dc)
    client = h.adapter.client
    hostile = [
        lambda: dc.dispatch_raw("MESSAGE_CREATE", {"channel_id": dc.general.id, "content": "boom"}),
        lambda: dc.send_raw_frame("this is not { json"),
        lambda: dc.send_raw_frame('["json", "but not an object"]'),
    ]
    for feed in hostile:
        await feed()
        await asyncio.sleep(0.3)  # the mention comes 0.3 s after the bad payload
        asked = await dc.guild_message(dc.general, dc.alice, "still there?", mention_bot=True)
        reply = await dc.next_sent(timeout=10)
        assert reply.reply_to == asked["id"] and reply.content == "hello from Tester"
    assert dc.identify_count == 1 and dc.resume_count == 0  # one connection, never replaced
    assert h.adapter.client is client and h.adapter.restarts == 0
    skipped = [m for m in adapter_lines(caplog) if "skipped" in m]
    assert skipped[0] == "channel discord: skipped a MESSAGE_CREATE event without id, author"
    assert [m.split(" (")[0] for m in skipped[1:]] == [
        "channel discord: skipped a gateway frame it cannot read"
    ] * 2
    assert not [m for m in adapter_lines(caplog) if "boom" in m or "not { json" in m or TOKEN in m]
    assert_no_traceback(caplog)
    assert TOKEN not in caplog.text  # discord.py's own debug logs included


@pytest.mark.parametrize("where", ["dm", "guild"])
async def test_a_message_without_author_is_one_log_line(dc, harness, caplog, where):
    caplog.set_level(logging.INFO)
    h = await start(harness, dc)
    channel = dc.dm_channel(dc.alice) if where == "dm" else dc.general
    broken = dc.message(channel, dc.alice, "who wrote this?")
    del broken["author"]
    await dc.dispatch_raw("MESSAGE_CREATE", broken)
    await dc.dm(dc.alice, "and this one?")
    assert (await dc.next_sent(timeout=10)).content == "hello from Tester"
    assert adapter_lines(caplog).count("channel discord: skipped a MESSAGE_CREATE event without author") == 1
    assert_no_traceback(caplog)
    assert dc.identify_count == 1 and h.adapter.restarts == 0


async def test_a_failing_handler_is_one_log_line(dc, monkeypatch, caplog):
    adapter = make_adapter(dc)
    await adapter.start(lambda event: asyncio.sleep(0))
    try:
        caplog.set_level(logging.INFO)

        failed = asyncio.Event()

        def broken(client: Any) -> None:
            asyncio.get_running_loop().call_soon(failed.set)  # runs once on_error has logged
            raise RuntimeError("a message quoting the payload")

        monkeypatch.setattr(adapter, "_client_ready", broken)
        assert adapter.client is not None
        adapter.client.dispatch("ready")  # discord.py runs on_ready in a task of its own
        await asyncio.wait_for(failed.wait(), 5)  # TimeoutError: on_ready never ran
        [line] = [m for m in adapter_lines(caplog) if "handler failed" in m]
        assert line.startswith(
            "channel discord: the on_ready handler failed (RuntimeError at test_discord.py"
        )
        assert "quoting" not in caplog.text
        assert_no_traceback(caplog)
    finally:
        await adapter.stop()


async def test_a_broken_compressed_frame_resumes_the_session(dc, harness, caplog):
    caplog.set_level(logging.INFO)
    h = await start(harness, dc)
    await dc.send_raw_frame(b"not zlib at all\x00\x00\xff\xff")  # ends like a zlib-stream flush
    meanwhile = await dc.dm(dc.alice, "sent while the connection was replaced")
    await dc.wait_resumed(1)
    first = await dc.next_sent(timeout=10)
    await asyncio.sleep(0.3)
    asked = await dc.guild_message(dc.general, dc.bob, "and now?", mention_bot=True)
    second = await dc.next_sent(timeout=10)
    await h.drain()
    assert first.channel_id == meanwhile["channel_id"] and second.reply_to == asked["id"]
    assert dc.identify_count == 1 and dc.resume_count == 1  # RESUMEd, not a new session
    assert h.adapter.restarts == 0
    assert len([m for m in adapter_lines(caplog) if "gateway stream broke" in m]) == 1
    assert_no_traceback(caplog)


# -- pointing elsewhere, resends -----------------------------------------------------------------
async def test_two_channels_in_one_process_reach_their_own_servers():
    import discord.gateway
    import discord.http

    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordServer(token=TOKEN, bot_name="one") as one, DiscordServer(token=TOKEN) as two:
        events: asyncio.Queue[MessageEvent] = asyncio.Queue()
        adapters = [make_adapter(one), make_adapter(two)]
        for adapter in adapters:
            await adapter.start(events.put)
        try:
            assert [a.self_name for a in adapters] == ["one", "tester"]
            for server, adapter in zip((one, two), adapters, strict=True):
                asked = await server.dm(server.alice, "hi")
                event = await asyncio.wait_for(events.get(), 5)
                assert event.self_id == server.bot.id and event.message_id == asked["id"]
                await adapter.send(Outbound(event.channel, f"from {adapter.self_name}"))
                assert (await server.next_sent()).content == f"from {adapter.self_name}"
        finally:
            for adapter in adapters:
                await adapter.stop()
    assert (base, gateway) == (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)


async def test_a_resent_part_is_posted_once(dc):
    adapter = make_adapter(dc)
    await adapter.start(lambda event: asyncio.sleep(0))
    try:
        general = ChannelRef("discord", dc.general.id, ChannelKind.GROUP, "general")
        long_part = Outbound(general, varied_text(2_600), idempotency_key="outbox:7:0")  # over 2,000
        first = await adapter.send(long_part)
        pieces = len(dc.sent)
        assert pieces >= 2
        again = await adapter.send(long_part)  # a restart replays the part
        assert again == first and len(dc.sent) == pieces  # Discord returned what it had
        assert dc.requests.count(SEND_MESSAGE) == 2 * pieces
        nonces = [s.body["nonce"] for s in dc.sent]
        assert len(set(nonces)) == pieces and all(len(n) <= 25 for n in nonces)  # one per piece
        assert all(s.body["enforce_nonce"] is True for s in dc.sent)
        await adapter.send(Outbound(general, "next part", idempotency_key="outbox:7:1"))
        keyless = Outbound(general, "no key")
        await adapter.send(keyless)
        await adapter.send(keyless)  # discord.py's own nonce is random: each send is new
        assert len(dc.sent) == pieces + 3
    finally:
        await adapter.stop()


# -- configuration -------------------------------------------------------------------------------
def test_missing_token_names_the_env_var(monkeypatch):
    monkeypatch.delenv("DISCORD_BOT_TOKEN", raising=False)
    monkeypatch.delenv("MY_DISCORD_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="DISCORD_BOT_TOKEN"):
        DiscordAdapter.from_config("discord", {}, Secrets())
    with pytest.raises(ConfigError, match="MY_DISCORD_TOKEN"):
        DiscordAdapter.from_config("discord", {"token_env": "MY_DISCORD_TOKEN"}, Secrets())


def test_options_are_strict(monkeypatch):
    monkeypatch.setenv("DISCORD_BOT_TOKEN", TOKEN)
    with pytest.raises(ConfigError, match="tokn_env"):
        DiscordAdapter.from_config("discord", {"tokn_env": "X"}, Secrets())
    with pytest.raises(ConfigError, match="ready_timeout"):
        DiscordAdapter.from_config("discord", {"ready_timeout": -1}, Secrets())
    adapter = DiscordAdapter.from_config("discord", {"ready_timeout": 12}, Secrets())
    assert adapter.ready_timeout == 12 and adapter.capabilities.max_length == 2000
    assert adapter.api_base_url is None and adapter.gateway_url is None  # Discord itself
    for key, bad in [
        ("api_base_url", "localhost:8080/api/v10"),
        ("api_base_url", "http://localhost:8080"),  # no /api/v10: every request would 404
        ("gateway_url", "http://localhost:7878"),
    ]:
        with pytest.raises(ConfigError, match=key):
            DiscordAdapter.from_config("discord", {key: bad}, Secrets())
    proxied = {"api_base_url": "http://nirn:8080/api/v10/", "gateway_url": "wss://gw.example:7878"}
    adapter = DiscordAdapter.from_config("discord", proxied, Secrets())
    assert (adapter.api_base_url, adapter.gateway_url) == (
        "http://nirn:8080/api/v10",
        "wss://gw.example:7878",
    )


async def test_invalid_token_is_a_config_error_at_start(dc, harness, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError, match=r"rejected the token in DISCORD_BOT_TOKEN \(401"):
        await harness(adapter=make_adapter(dc, token="not-the-token"))
    assert "not-the-token" not in caplog.text


async def test_unreachable_discord_fails_start_within_ready_timeout():
    async with DiscordServer(token=TOKEN) as server:
        pass  # its port is free again: nothing listens there
    adapter = make_adapter(server, ready_timeout=0.5)
    with pytest.raises(ConnectionError, match=r"within 0\.5s"):
        await adapter.start(lambda event: asyncio.sleep(0))
    assert adapter.client is not None and adapter.client.is_closed()


async def test_missing_message_content_intent_is_a_config_error(harness):
    async with DiscordServer(token=TOKEN, message_content_intent=False) as server:
        with pytest.raises(ConfigError, match="Message Content"):
            await harness(adapter=make_adapter(server))
