"""The Telegram channel: real python-telegram-bot, our adapter, a real Host, the local Bot API emulator."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fixtures.prose import varied_text

from bots.adapters.telegram import MessageRateLimiter, TelegramAdapter, markdown_to_html
from bots.core.config import ConfigError, Secrets
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound
from bots.testing import FakeLLM
from bots.testing.telegram_server import TelegramServer, utf16_len

TOKEN = "123456:TEST-token_abc"


@pytest.fixture
async def tg() -> AsyncIterator[TelegramServer]:
    async with TelegramServer(token=TOKEN, username="persona_test_bot") as server:
        yield server


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "s3cret-token_1")
    return Secrets()


def make_adapter(tg: TelegramServer, secrets: Secrets, **options: Any) -> TelegramAdapter:
    adapter = TelegramAdapter.from_config(
        "tg", {"base_url": tg.base_url, "poll_timeout": 10, **options}, secrets
    )
    adapter.retry_initial_s = 0.05
    return adapter


async def start(
    harness: Any, tg: TelegramServer, secrets: Secrets, llm: FakeLLM | None = None, **kw: Any
) -> Any:
    return await harness(
        adapter=make_adapter(tg, secrets), llm=llm or FakeLLM(default="hello from Tester"), **kw
    )


# -- conversations -------------------------------------------------------------------------------
async def test_dm_is_answered(harness, tg, secrets):
    h = await start(harness, tg, secrets)
    assert h.adapter.self_name == "persona_test_bot" and h.adapter.self_id == "123456"
    update = tg.private_message("alice", "hi there")
    reply = await tg.next_sent()
    assert reply["text"] == "hello from Tester"
    assert reply["chat"]["id"] == update["message"]["chat"]["id"]
    assert "reply_to_message" not in reply  # a DM needs no reference
    params = tg.requests("sendMessage")[0]
    assert "parse_mode" not in params and params["link_preview_options"] == {"is_disabled": True}
    assert h.llm.last_prompt[-1].content.endswith("hi there")


async def test_group_chatter_ignored_mention_answered_as_reply(harness, tg, secrets):
    h = await start(harness, tg, secrets)
    group = tg.group("Lighthouse keepers")
    tg.group_message(group, "alice", "just chatting among ourselves")
    asked = tg.group_message(group, "bob", "what do you think?", mention_bot=True)
    reply = await tg.next_sent()
    assert reply["reply_to_message"]["message_id"] == asked["message"]["message_id"]
    await tg.wait_confirmed(asked)
    await h.drain()
    assert len(tg.sent) == 1  # the chatter before it got nothing
    assert len(h.llm.prompts) == 1
    assert "@persona_test_bot" not in h.llm.last_prompt[-1].content


async def test_reply_to_the_bot_is_answered(harness, tg, secrets):
    await start(harness, tg, secrets)
    group = tg.group()
    tg.group_message(group, "alice", "hello", mention_bot=True)
    first = await tg.next_sent()
    follow_up = tg.group_message(group, "alice", "and you?", reply_to=first)
    second = await tg.next_sent()
    assert second["reply_to_message"]["message_id"] == follow_up["message"]["message_id"]


async def test_commands_for_this_bot_only(harness, tg, secrets):
    h = await start(harness, tg, secrets)
    group = tg.group()
    tg.command("alice", "ping")
    assert (await tg.next_sent())["text"] == "pong"
    tg.command("alice", "ping", chat=group, to="otherbot")
    mine = tg.command("alice", "ping", chat=group, to=True)
    reply = await tg.next_sent()
    assert reply["text"] == "pong"
    assert reply["reply_to_message"]["message_id"] == mine["message"]["message_id"]
    await h.drain()
    assert len(tg.sent) == 2  # /ping@otherbot went unanswered
    assert h.llm.prompts == []


async def test_forum_topic_answered_in_its_thread(harness, tg, secrets):
    await start(harness, tg, secrets)
    forum = tg.group("Forum", forum=True)
    topic = tg.topic(forum, "Lamps")
    asked = tg.group_message(forum, "alice", "any news?", mention_bot=True, thread=topic)
    reply = await tg.next_sent()
    assert reply["message_thread_id"] == topic
    assert reply["reply_to_message"]["message_id"] == asked["message"]["message_id"]
    # the topic's opening message is not a reply to anyone: plain talk in the topic is not addressed
    tg.group_message(forum, "alice", "just talking", thread=topic)
    tg.group_message(forum, "alice", "still there?", mention_bot=True, thread=topic)
    assert (await tg.next_sent())["text"] == "hello from Tester"
    assert len(tg.sent) == 2


# -- outbound limits, markup and flood control -----------------------------------------------------
def _without_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize(
    ("answer", "question"),
    [
        (varied_text(5000), "tell me everything"),
        # astral emoji count 2 UTF-16 units; a Chinese answer to a question asked in Chinese
        (varied_text(5000, "zh", emoji=True), "请把灯塔的事都讲给我听"),
    ],
    ids=["latin", "cjk-emoji"],
)
async def test_long_answer_split_to_the_utf16_limit(harness, tg, secrets, answer, question):
    assert utf16_len(answer) > 4096
    # longer than [llm] max_answer_chars allows by default (4,000): raise it, as an operator would
    await start(harness, tg, secrets, llm=FakeLLM(default=answer), llm_settings={"max_answer_chars": 6000})
    tg.private_message("alice", question)
    parts = [await tg.next_sent()]
    while _without_space("".join(p["text"] for p in parts)) != _without_space(answer):
        parts.append(await tg.next_sent())
    assert len(parts) >= 2
    assert all(utf16_len(p["text"]) <= 4096 for p in parts)


async def test_flood_control_429_is_retried_and_delivered_once(harness, tg, secrets):
    h = await start(harness, tg, secrets)
    tg.fail_next("sendMessage", retry_after=1)
    tg.private_message("alice", "hi")
    reply = await tg.next_sent(timeout=5)
    assert reply["text"] == "hello from Tester"
    await h.drain()
    assert len(tg.requests("sendMessage")) == 2  # the 429, then the retry
    assert len(tg.sent) == 1


async def test_plain_answers_never_use_parse_mode_and_markdown_becomes_html(harness, tg, secrets):
    tricky = "2*3 = 6, snake_case and <tags> & **stars"
    h = await start(harness, tg, secrets, llm=FakeLLM(default=tricky))
    update = tg.private_message("alice", "math?")
    assert (await tg.next_sent())["text"] == tricky
    chat = ChannelRef("telegram", str(update["message"]["chat"]["id"]), ChannelKind.DM)
    await h.adapter.send(Outbound(chat, "**Bold** and `a<b` in ```\nx < y\n```", markup="markdown"))
    sent = await tg.next_sent()
    assert sent["text"] == "Bold and a<b in x < y"
    assert tg.requests("sendMessage")[-1]["parse_mode"] == "HTML"
    assert markdown_to_html("a <b> & **c**") == "a &lt;b&gt; &amp; <b>c</b>"


async def test_typing_indicator_and_its_errors_are_swallowed(harness, tg, secrets):
    h = await start(harness, tg, secrets)
    update = tg.private_message("alice", "hi")
    await tg.next_sent()
    chat = ChannelRef("telegram", str(update["message"]["chat"]["id"]), ChannelKind.DM)
    await h.adapter.typing(chat)
    await h.adapter.typing(chat)  # within 3 s of the first: skipped
    assert [a["action"] for a in tg.chat_actions] == ["typing"]
    await h.adapter.typing(ChannelRef("telegram", "999", ChannelKind.DM))  # unknown chat: 400, swallowed


# -- acknowledgement, restarts, bad input --------------------------------------------------------
async def test_restart_mid_reply_answers_a_redelivered_update_once(harness, tg, secrets, tmp_path):
    data_dir = tmp_path / "var"
    slow = FakeLLM(default="late", delay_s=5)
    h1 = await harness(adapter=make_adapter(tg, secrets), llm=slow, data_dir=data_dir)
    update = tg.private_message("alice", "are you there?")
    await tg.wait_confirmed(update)  # accepted by the host, the model still thinking
    h1.host.stop_grace_s = 0
    await h1.host.stop()  # a crash: the reply in flight is cancelled
    assert tg.sent == []

    h2 = await harness(adapter=make_adapter(tg, secrets), llm=FakeLLM(default="here"), data_dir=data_dir)
    tg.redeliver(update)  # Telegram sends it again as if never confirmed
    reply = await tg.next_sent()
    assert reply["text"] == "here"
    await tg.wait_confirmed(update)
    await h2.drain()
    assert len(tg.sent) == 1


async def test_malformed_and_other_updates_are_skipped_and_confirmed(harness, tg, secrets, caplog):
    caplog.set_level(logging.DEBUG, logger="bots.adapters.telegram")
    await start(harness, tg, secrets)
    user = tg.user("Alice", "alice")
    chat = {"id": user["id"], "type": "private", "first_name": "Alice"}
    no_date = tg.push_raw(
        {"message": {"message_id": 1, "chat": chat, "from": user, "text": "SECRET-PAYLOAD"}}
    )
    no_chat = tg.push_raw({"message": {"message_id": 2, "date": 1, "from": user, "text": "SECRET-PAYLOAD"}})
    garbage = tg.push_raw({"message": "SECRET-PAYLOAD"})
    edited = tg.push_raw({"edited_message": {"message_id": 3, "date": 1, "chat": chat, "text": "edit"}})
    good = tg.private_message(user, "hi")
    assert (await tg.next_sent())["text"] == "hello from Tester"
    await tg.wait_confirmed(good)
    assert all(tg.is_confirmed(u) for u in (no_date, no_chat, garbage, edited))
    assert len(tg.sent) == 1
    skipped = [r.getMessage() for r in caplog.records if "malformed update" in r.getMessage()]
    assert len(skipped) == 3
    assert str(no_date["update_id"]) in skipped[0] and "KeyError" in skipped[0]
    assert not any("SECRET-PAYLOAD" in r.getMessage() or TOKEN in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_a_refused_event_is_not_confirmed_and_comes_again(tg, secrets, caplog, mode):
    """The host could not record it (sink raised): Telegram must deliver it again."""
    adapter = make_adapter(tg, secrets, mode=mode, port=0)
    accepted: list[MessageEvent] = []
    refusals = iter([RuntimeError("inbox unavailable")])

    async def sink(event: MessageEvent) -> None:
        error = next(refusals, None)
        if error is not None:
            raise error
        accepted.append(event)

    await adapter.start(sink)
    try:
        update = tg.private_message("alice", "hello?")
        await tg.wait_confirmed(update)
        assert [e.text for e in accepted] == ["hello?"]
        if mode == "webhook":
            assert [status for _, status in tg.webhook_deliveries] == [500, 200]
        else:  # refused, asked again from the same offset, confirmed by the next call
            offsets = [params["offset"] for params in tg.requests("getUpdates")]
            assert offsets.count(0) >= 2 and offsets[-1] == update["update_id"] + 1
        assert "not accepted" in caplog.text
    finally:
        await adapter.stop()


async def test_a_batch_of_updates_is_handed_over_at_once_in_order(tg, secrets):
    """One getUpdates batch: every hand-over starts before the first one is done (they share a
    commit), in update order; the offset moves past the batch once all were accepted."""
    adapter = make_adapter(tg, secrets)
    started: list[str] = []
    all_started = asyncio.Event()

    async def sink(event: MessageEvent) -> None:
        started.append(event.text)
        if len(started) == 5:
            all_started.set()
        await asyncio.wait_for(all_started.wait(), 5)  # a hand-over waits for its commit

    updates = [tg.private_message("alice", f"m{i}") for i in range(5)]  # queued before the first poll
    await adapter.start(sink)
    try:
        await tg.wait_confirmed(updates[-1])
        assert started == [f"m{i}" for i in range(5)]
        assert [params["offset"] for params in tg.requests("getUpdates")][:2] == [
            0,
            updates[-1]["update_id"] + 1,
        ]
    finally:
        await adapter.stop()


async def test_a_refused_update_in_a_batch_stops_the_offset_there(tg, secrets, caplog):
    adapter = make_adapter(tg, secrets)
    accepted: list[str] = []
    refused = {"m1"}

    async def sink(event: MessageEvent) -> None:
        if event.text in refused:
            refused.discard(event.text)
            raise RuntimeError("inbox unavailable")
        accepted.append(event.text)

    updates = [tg.private_message("alice", f"m{i}") for i in range(4)]
    await adapter.start(sink)
    try:
        await tg.wait_confirmed(updates[-1])
        offsets = [params["offset"] for params in tg.requests("getUpdates")]
        assert offsets[:2] == [0, updates[1]["update_id"]]  # asked again from the refused one
        assert accepted == ["m0", "m2", "m3", "m1", "m2", "m3"]  # the host drops m2, m3 as duplicates
        assert f"update {updates[1]['update_id']} not accepted" in caplog.text
    finally:
        await adapter.stop()


async def test_polling_survives_api_errors(tg, secrets):
    adapter = make_adapter(tg, secrets)
    events: asyncio.Queue[MessageEvent] = asyncio.Queue()

    async def sink(event: MessageEvent) -> None:
        events.put_nowait(event)

    tg.fail_next("getUpdates", status=502, description="Bad Gateway")
    tg.fail_next("getUpdates", status=409, description="Conflict: terminated by other getUpdates request")
    tg.fail_next("getUpdates", retry_after=0.1)
    await adapter.start(sink)
    try:
        tg.private_message("alice", "still there?")
        assert (await asyncio.wait_for(events.get(), 5)).text == "still there?"
        assert len(tg.requests("getUpdates")) >= 4
    finally:
        await adapter.stop()


async def test_event_fields(tg, secrets):
    adapter = make_adapter(tg, secrets)
    events: asyncio.Queue[MessageEvent] = asyncio.Queue()

    async def sink(event: MessageEvent) -> None:
        events.put_nowait(event)

    await adapter.start(sink)
    try:
        group = tg.group("Keepers")
        carol = tg.user("Carol", None)  # no username: mentioned by text_mention
        first = tg.group_message(group, "alice", "hi @bobby_b and Carol 😀 @persona_test_bot",
                                 text_mentions=[(carol, "Carol")])  # fmt: skip
        event = await asyncio.wait_for(events.get(), 5)
        assert event.channel.kind is ChannelKind.GROUP and event.channel.name == "Keepers"
        assert event.author.name == "Alice" and not event.author.is_bot
        assert event.message_id == str(first["message"]["message_id"])
        assert [(m.user_id, m.name) for m in event.mentions] == [
            ("bobby_b", "bobby_b"), (str(carol["id"]), "Carol"), ("123456", "persona_test_bot")
        ]  # fmt: skip
        assert event.mentions_me and not event.replies_to_me
        tg.group_message(group, "bob", "re", reply_to=first)
        reply = await asyncio.wait_for(events.get(), 5)
        assert reply.reply_to is not None and reply.reply_to.message_id == event.message_id
        assert reply.reply_to.author_id == event.author.id
    finally:
        await adapter.stop()


# -- webhook mode --------------------------------------------------------------------------------
async def test_webhook_answers_with_the_right_secret_only(harness, tg, secrets):
    adapter = make_adapter(tg, secrets, mode="webhook", port=0, path="/tg/hook")
    h = await harness(adapter=adapter, llm=FakeLLM(default="via webhook"))
    assert tg.webhook is not None and tg.webhook["url"].endswith(f":{adapter.webhook_port}/tg/hook")
    assert tg.webhook["secret_token"] == "s3cret-token_1"
    user = tg.user("Mallory", "mallory")
    chat = {"id": user["id"], "type": "private", "first_name": "Mallory"}
    forged = {
        "update_id": 1,
        "message": {"message_id": 99, "date": 1, "chat": chat, "from": user, "text": "forged"},
    }
    assert await tg.webhook_post(forged, secret="wrong") == 403
    assert await tg.webhook_post(forged) == 403  # no header at all
    assert await tg.webhook_post(secret="s3cret-token_1", body=b"{not json") == 400
    update = tg.private_message("alice", "hello hook")
    reply = await tg.next_sent()
    assert reply["text"] == "via webhook"
    await tg.wait_confirmed(update)
    await h.drain()
    assert len(tg.sent) == 1 and [p[-1].content for p in h.llm.prompts] == ["hello hook"]
    assert tg.webhook_deliveries[-1] == (update["update_id"], 200)


# -- configuration ---------------------------------------------------------------------------------
def test_missing_token_env_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_TG_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="MY_TG_TOKEN"):
        TelegramAdapter.from_config("tg", {"token_env": "MY_TG_TOKEN"}, Secrets())


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"mode": "carrier-pigeon"}, "mode"),
        ({"tokn_env": "X"}, "tokn_env"),
        ({"poll_timeout": 0}, "poll_timeout"),
        ({"base_url": "ftp://example.org"}, "base_url"),
        ({"mode": "webhook"}, "webhook_url"),  # api.telegram.org needs the public URL
        ({"mode": "webhook", "webhook_url": "http://bot.example.org/tg"}, "https"),
    ],
)
def test_bad_options_are_config_errors(secrets, options, problem):
    with pytest.raises(ConfigError, match=problem):
        TelegramAdapter.from_config("tg", options, secrets)


def test_webhook_secret_is_required_and_checked(monkeypatch, secrets):
    options = {"mode": "webhook", "webhook_url": "https://bot.example.org/tg"}
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "has spaces!")
    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET") as bad:
        TelegramAdapter.from_config("tg", options, Secrets())
    assert "has spaces" not in str(bad.value)
    monkeypatch.delenv("TELEGRAM_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET"):
        TelegramAdapter.from_config("tg", options, Secrets())


async def test_rejected_token_is_a_config_error_at_start(tg, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:WRONG-token")
    adapter = TelegramAdapter.from_config("tg", {"base_url": tg.base_url}, Secrets())

    async def sink(event: MessageEvent) -> None:
        raise AssertionError("no events expected")

    with pytest.raises(
        ConfigError, match=r"rejected the token in TELEGRAM_BOT_TOKEN \(401 Unauthorized\)"
    ) as err:
        await adapter.start(sink)
    assert "WRONG" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


# -- the emulator answers like Telegram ------------------------------------------------------------
async def test_emulator_rejects_what_telegram_rejects(tg):
    from telegram import Bot
    from telegram.error import BadRequest, InvalidToken

    user = tg.user("Alice", "alice")
    tg.private_message(user, "hi")  # the private chat exists once the user wrote
    async with Bot(TOKEN, base_url=f"{tg.base_url}/bot") as bot:
        for text, parse_mode, error in [
            ("x" * 4097, None, "Message is too long"),
            ("😀" * 2049, None, "Message is too long"),  # 2,049 characters, 4,098 UTF-16 units
            ("  ", None, "Message text is empty"),
            ("a <d> b", "HTML", "Can't parse entities"),
            ("2*3", "Markdown", "Can't parse entities"),
            ("v1.2", "MarkdownV2", "Can't parse entities"),
        ]:
            with pytest.raises(BadRequest, match=error):
                await bot.send_message(user["id"], text, parse_mode=parse_mode)
        with pytest.raises(BadRequest, match="Chat not found"):
            await bot.send_message(42, "who?")
        sent = await bot.send_message(user["id"], "a <b>bold</b> move", parse_mode="HTML")
        assert sent.text == "a bold move" and len(tg.sent) == 1
    wrong = Bot("123456:WRONG", base_url=f"{tg.base_url}/bot")
    with pytest.raises(InvalidToken):
        await wrong.initialize()  # getMe answered 401
    await wrong.shutdown()


async def test_emulator_privacy_mode_hides_group_chatter():
    async with TelegramServer(token=TOKEN, privacy_mode=True) as tg:
        group = tg.group()
        chatter = tg.group_message(group, "alice", "just us here")
        asked = tg.group_message(group, "alice", "hello", mention_bot=True)
        command = tg.command("alice", "ping", chat=group)
        assert "update_id" not in chatter and "update_id" in asked and "update_id" in command
        assert "update_id" in tg.private_message("alice", "hi")


async def test_typing_indicators_do_not_use_up_a_groups_message_limit():
    """Telegram's 20-a-minute limit for a group is on messages; counting "typing" against it made
    replies in busy groups wait seconds behind their own typing indicators."""
    limiter = MessageRateLimiter(group_max_rate=1, group_time_period=600, overall_max_rate=0)
    calls: list[str] = []

    async def request(endpoint: str) -> None:
        async def callback() -> bool:
            calls.append(endpoint)
            return True

        job = limiter.process_request(callback, (), {}, endpoint, {"chat_id": -1001}, None)
        try:
            await asyncio.wait_for(job, timeout=60)
        except TimeoutError:
            raise AssertionError(f"{endpoint} waited for the group's limit (1 in 10 minutes)") from None

    for _ in range(3):
        await request("sendChatAction")
    await request("sendMessage")  # the group's one message goes at once
    assert calls == ["sendChatAction"] * 3 + ["sendMessage"]
