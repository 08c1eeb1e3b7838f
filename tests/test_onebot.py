"""The OneBot v11 channel: our reverse WebSocket server, a real Host, and a fake bridge dialling in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from fixtures.prose import varied_text

from bots.adapters.onebot import OneBotAdapter, OneBotError, parse_cq, read_message
from bots.core.config import ConfigError, Secrets
from bots.core.events import Attachment, ChannelKind, ChannelRef, Mention, MessageEvent, Outbound
from bots.testing import FakeLLM
from bots.testing.onebot_bridge import OneBotBridge, at, face, image, reply, text

TOKEN = "onebot-t0ken_42"
LOGGER = "bots.adapters.onebot"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    monkeypatch.setenv("ONEBOT_ACCESS_TOKEN", TOKEN)
    return Secrets()


@pytest.fixture
async def bridge() -> AsyncIterator[OneBotBridge]:
    """A go-cqhttp-style bridge (CQ strings, ``Authorization: Token``); connect it to ``adapter.url``."""
    async with OneBotBridge(token=TOKEN, heartbeat_interval=None) as fake:
        yield fake


def make_adapter(secrets: Secrets, **options: Any) -> OneBotAdapter:
    settings = {"port": 0, "action_timeout": 2, "reconnect_wait": 2, **options}
    return OneBotAdapter.from_config("qq", settings, secrets)


async def start(harness: Any, secrets: Secrets, llm: FakeLLM | None = None, **options: Any) -> Any:
    llm = llm or FakeLLM(default="hello from Tester")
    return await harness(adapter=make_adapter(secrets, **options), llm=llm)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds (for states with no event of their own to wait on)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (polling is the point)
            await asyncio.sleep(0.01)


class Captured:
    """A sink that records events (adapter tests without a host)."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[MessageEvent] = asyncio.Queue()

    async def __call__(self, event: MessageEvent) -> None:
        self.events.put_nowait(event)

    async def next(self) -> MessageEvent:
        return await asyncio.wait_for(self.events.get(), 5)


# -- conversations -------------------------------------------------------------------------------
async def test_group_mention_is_answered_as_a_reply(harness, secrets, bridge):
    h = await start(harness, secrets)
    await bridge.connect(h.adapter.url)
    asked = await bridge.group_message(5001, 42, "what's new?", at_bot=True, card="Ali")
    assert asked["message"].startswith("[CQ:at,qq=10001] ")  # go-cqhttp posts CQ strings
    sent = await bridge.next_sent()
    assert sent["action"] == "send_group_msg" and sent["group_id"] == 5001
    assert sent["text"] == "hello from Tester"
    assert sent["reply"] == str(asked["message_id"])  # a reply segment to the question
    assert h.adapter.self_id == "10001" and h.adapter.self_name == "PersonaBot"  # get_login_info
    prompt = h.llm.last_prompt[-1].content
    assert "what's new?" in prompt and "@PersonaBot" not in prompt


async def test_private_message_is_answered_napcat_style(harness, secrets):
    h = await start(harness, secrets)
    async with OneBotBridge(token=TOKEN, style="napcat", heartbeat_interval=None) as napcat:
        await napcat.connect(h.adapter.url)
        event = await napcat.private_message(42, "hi there", nickname="Alice")
        assert isinstance(event["message"], list)  # NapCat posts segment arrays
        sent = await napcat.next_sent()
        assert sent["action"] == "send_private_msg" and sent["user_id"] == 42
        assert sent["text"] == "hello from Tester" and sent["reply"] is None  # a DM needs no reference
        assert h.llm.last_prompt[-1].content.endswith("hi there")


async def test_group_chatter_is_ignored_and_a_command_answered(harness, secrets, bridge):
    h = await start(harness, secrets)
    await bridge.connect(h.adapter.url)
    await bridge.group_message(5001, 42, "just chatting among ourselves")
    ping = await bridge.group_message(5001, 43, "/ping")
    sent = await bridge.next_sent()
    assert sent["text"] == "pong" and sent["reply"] == str(ping["message_id"])
    await h.drain()
    assert len(bridge.sent) == 1 and h.llm.prompts == []


async def test_the_same_message_id_twice_is_answered_once(harness, secrets, bridge):
    h = await start(harness, secrets, llm=FakeLLM(default="once"))
    await bridge.connect(h.adapter.url)
    asked = await bridge.group_message(5001, 42, "hello?", at_bot=True)
    assert (await bridge.next_sent())["text"] == "once"
    await bridge.redeliver(asked)
    await bridge.private_message(42, "and now?")  # handed over after the redelivery
    assert (await bridge.next_sent())["message_type"] == "private"
    await h.drain()
    assert [s["message_type"] for s in bridge.sent] == ["group", "private"]


async def test_a_message_accepted_before_a_crash_is_answered_once_after_restart(
    harness, secrets, bridge, tmp_path
):
    data_dir = tmp_path / "var"
    slow = FakeLLM(default="late", delay_s=5)
    h1 = await harness(adapter=make_adapter(secrets), llm=slow, data_dir=data_dir)
    await bridge.connect(h1.adapter.url)
    asked = await bridge.group_message(5001, 42, "are you there?", at_bot=True)
    await eventually(lambda: h1.host.in_flight == 1)  # accepted; the model still thinking
    h1.host.stop_grace_s = 0
    await h1.host.stop()  # a crash: the reply in flight is cancelled
    await bridge.wait_closed()
    assert bridge.sent == []

    h2 = await harness(adapter=make_adapter(secrets, reconnect_wait=5), llm=FakeLLM(default="here"),
                       data_dir=data_dir)  # fmt: skip
    await bridge.connect(h2.adapter.url)  # the host replays the event; the reply waited for us
    await bridge.redeliver(asked)  # the bridge sends it again, too
    await bridge.private_message(42, "marker")  # handed over after the redelivery
    await bridge.next_sent()
    await bridge.next_sent()
    await h2.drain()
    assert sorted((s["message_type"], s["reply"]) for s in bridge.sent) == [
        ("group", str(asked["message_id"])), ("private", None)
    ]  # fmt: skip


async def test_a_long_answer_is_split_to_max_length(harness, secrets, bridge):
    answer = varied_text(160)
    h = await start(harness, secrets, llm=FakeLLM(default=answer), max_length=50)
    await bridge.connect(h.adapter.url)
    asked = await bridge.group_message(5001, 42, "tell me about the fog", at_bot=True)
    await bridge.next_sent()
    await h.drain()
    parts = bridge.sent
    assert len(parts) >= 3 and all(len(p["text"]) <= 50 for p in parts)
    assert parts[0]["reply"] == str(asked["message_id"]) and all(p["reply"] is None for p in parts[1:])
    assert " ".join(p["text"].strip() for p in parts) == answer.strip()


# -- the connection --------------------------------------------------------------------------------
async def test_access_token_is_checked_on_connect(secrets, caplog):
    adapter = make_adapter(secrets)

    async def status(style: Any, token: str | None, **kw: Any) -> int:
        async with OneBotBridge(adapter.url, token, style=style, heartbeat_interval=None) as b:
            try:
                await b.connect(**kw)
            except aiohttp.WSServerHandshakeError as refused:
                return refused.status
            return 101

    await adapter.start(Captured())
    try:
        assert await status("go-cqhttp", None) == 401  # no Authorization header at all
        assert await status("napcat", None) == 401  # "Bearer " with nothing after it
        assert await status("go-cqhttp", "wrong-token") == 403
        assert await status("napcat", "wrong-token") == 403
        assert adapter.connections == 0
        assert await status("go-cqhttp", TOKEN) == 101  # Authorization: Token <t>
        assert await status("napcat", TOKEN) == 101  # Authorization: Bearer <t>
        assert await status("napcat", None, headers={"X-Self-ID": "10001", "X-Client-Role": "Universal"},
                            url=f"{adapter.url}?access_token={TOKEN}") == 101  # fmt: skip
        assert await status("go-cqhttp", TOKEN, headers={"Authorization": f"Bearer {TOKEN}",
                                                         "X-Client-Role": "Event"}) == 400  # fmt: skip
        assert adapter.connections == 3
        assert "without an access token" in caplog.text and "wrong access token" in caplog.text
        assert TOKEN not in caplog.text and "wrong-token" not in caplog.text
    finally:
        await adapter.stop()


async def test_without_a_required_token_loopback_only(monkeypatch):
    monkeypatch.delenv("ONEBOT_ACCESS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="ONEBOT_ACCESS_TOKEN"):
        OneBotAdapter.from_config("qq", {"port": 0}, Secrets())
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0 without an access token.*ONEBOT_ACCESS_TOKEN"):
        OneBotAdapter.from_config("qq", {"port": 0, "listen": "0.0.0.0", "require_token": False}, Secrets())
    adapter = OneBotAdapter.from_config("qq", {"port": 0, "require_token": False}, Secrets())
    await adapter.start(Captured())
    try:
        async with OneBotBridge(adapter.url, style="napcat", heartbeat_interval=None) as napcat:
            await napcat.connect()  # "Authorization: Bearer " is fine when no token is set
            await eventually(lambda: adapter.connected)
    finally:
        await adapter.stop()


async def test_a_reply_made_while_the_bridge_is_away_is_sent_when_it_is_back(
    harness, secrets, bridge, caplog
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    llm = FakeLLM(default="sorry for the wait", delay_s=0.5)
    h = await start(harness, secrets, llm=llm, reconnect_wait=5)
    await bridge.connect(h.adapter.url)
    asked = await bridge.group_message(5001, 42, "still there?", at_bot=True)
    await eventually(lambda: h.host.in_flight == 1)
    await bridge.disconnect()
    await eventually(lambda: "send_group_msg waits for one" in caplog.text)  # the answer is ready
    assert not h.adapter.connected
    await bridge.connect()
    sent = await bridge.next_sent()
    assert sent["text"] == "sorry for the wait" and sent["reply"] == str(asked["message_id"])
    assert h.adapter.connections == 2

    # one connection at a time: a new bridge replaces the old one
    async with OneBotBridge(token=TOKEN, style="napcat", heartbeat_interval=None) as other:
        await other.connect(h.adapter.url)
        assert await bridge.wait_closed() == aiohttp.WSCloseCode.POLICY_VIOLATION
        await other.private_message(7, "who is here now?")
        assert (await other.next_sent())["user_id"] == 7
    assert "replaces the one" in caplog.text


async def test_no_bridge_within_reconnect_wait_fails_clearly(harness, secrets, bridge, caplog):
    h = await start(harness, secrets, llm=FakeLLM(default="lost", delay_s=0.5), reconnect_wait=0.3)
    await bridge.connect(h.adapter.url)
    await bridge.group_message(5001, 42, "anyone?", at_bot=True)
    await eventually(lambda: h.host.in_flight == 1)
    await bridge.disconnect()
    await h.drain()
    assert "no bridge connected within 0.3s; send_group_msg not sent" in caplog.text
    assert bridge.sent == []
    await bridge.connect()  # the adapter takes the bridge back and answers the next message
    await bridge.private_message(42, "hello again")
    assert (await bridge.next_sent())["text"] == "lost"


async def test_heartbeats_and_lifecycle_are_read(secrets, bridge, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    adapter = make_adapter(secrets)
    await adapter.start(Captured())
    try:
        await bridge.connect(adapter.url)
        await bridge.heartbeat()
        await eventually(lambda: adapter.last_heartbeat is not None)
        bridge.set_online(False)
        await bridge.heartbeat()
        await eventually(lambda: "reports the account offline" in caplog.text)
        assert "lifecycle event 'connect'" in caplog.text
    finally:
        await adapter.stop()
    assert await bridge.wait_closed() == aiohttp.WSCloseCode.GOING_AWAY


async def test_malformed_frames_and_events_are_skipped(harness, secrets, bridge, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    h = await start(harness, secrets)
    await bridge.connect(h.adapter.url)
    base = {"post_type": "message", "self_id": 10001, "time": 1700000000}
    await bridge.send_raw("{not json SECRET-PAYLOAD")
    await bridge.send_raw(["SECRET-PAYLOAD"])
    await bridge.send_raw({**base, "post_type": "carrier_pigeon"})
    await bridge.send_raw({**base, "message_type": "group", "message_id": 7, "message": "SECRET-PAYLOAD"})
    await bridge.send_raw({**base, "message_type": "private", "message_id": 8, "user_id": 42, "message": 12})
    await bridge.send_raw({**base, "message_type": "group", "message_id": 9, "user_id": 42, "group_id": 5001,
                           "message": [{"data": {"text": "SECRET-PAYLOAD"}}]})  # fmt: skip
    await bridge.send_raw({**base, "post_type": "notice", "notice_type": "group_increase"})
    await bridge.send_raw({"status": "ok", "retcode": 0, "echo": "nobody-asked"})
    await bridge.private_message(42, "hi")
    assert (await bridge.next_sent())["text"] == "hello from Tester"
    await h.drain()
    assert len(bridge.sent) == 1
    skipped = [r.getMessage() for r in caplog.records if "malformed message event" in r.getMessage()]
    assert len(skipped) == 3
    assert "KeyError" in skipped[0] and "message_id 7" in skipped[0]
    assert "TypeError" in skipped[1] and "message_id 8" in skipped[1]
    assert "not JSON" in caplog.text and "unknown post_type 'carrier_pigeon'" in caplog.text
    assert not any("SECRET-PAYLOAD" in r.getMessage() for r in caplog.records)


async def test_failed_slow_and_unknown_actions_raise_clear_errors(secrets, bridge):
    adapter = make_adapter(secrets, action_timeout=0.3)
    await adapter.start(Captured())
    try:
        await bridge.connect(adapter.url)
        group = ChannelRef("qq", "group:5001", ChannelKind.GROUP)
        bridge.fail_next("send_group_msg", retcode=100, msg="SEND_MSG_API_ERROR", wording="消息发送失败")
        with pytest.raises(OneBotError, match="refused send_group_msg: retcode 100, 消息发送失败") as failed:
            await adapter.send(Outbound(group, "risky"))
        assert failed.value.retcode == 100
        bridge.delay_next("send_group_msg", 1.0)
        with pytest.raises(OneBotError, match=r"did not answer send_group_msg within 0\.3s"):
            await adapter.send(Outbound(group, "slow"))
        with pytest.raises(OneBotError, match=r"retcode 1404.*does not know this action"):
            await adapter.call("no_such_action")
        sent = await adapter.send(Outbound(group, "works", reply_to="77"))
        last = bridge.sent[-1]
        assert last["text"] == "works" and last["reply"] == "77"
        assert sent.message_id == str(last["message_id"]) and sent.channel_id == "group:5001"
    finally:
        await adapter.stop()


# -- translation -----------------------------------------------------------------------------------
async def test_event_fields_mentions_replies_and_images(secrets, bridge):
    sink = Captured()
    adapter = make_adapter(secrets)
    await adapter.start(sink)
    try:
        await bridge.connect(adapter.url)
        first = await bridge.group_message(5001, 42, "hello all", nickname="alice", card="Alice W.",
                                           group_name="Keepers")  # fmt: skip
        event = await sink.next()
        assert event.id == f"qq:group:5001:{first['message_id']}"
        assert event.channel == ChannelRef("qq", "group:5001", ChannelKind.GROUP, name="Keepers")
        assert event.channel.canonical == "qq:group:5001" and event.author.canonical == "qq:42"
        assert event.author.name == "Alice W."
        assert event.self_id == "10001" and event.self_name == "PersonaBot"
        assert event.timestamp.year >= 2024 and not event.mentions_me

        earlier = bridge.remember_bot_message(5001, "an answer from before the restart")
        await bridge.group_message(5001, 43, [at(42), text(" look "), image("https://img.example/p.jpg")],
                                   reply_to=earlier, nickname="Bob")  # fmt: skip
        event = await sink.next()
        assert event.text == "@Alice W. look [image]"  # the name is known from the earlier message
        assert event.mentions == [Mention("42", "Alice W.")]
        assert event.replies_to_me  # get_msg told who wrote the replied message
        assert bridge.calls("get_msg") == [{"message_id": earlier["message_id"]}]
        assert Attachment("image", url="https://img.example/p.jpg") in event.segments

        await bridge.group_message(5001, 44, "+1", reply_to=first)
        event = await sink.next()
        assert event.reply_to is not None and event.reply_to.author_id == "42"
        assert len(bridge.calls("get_msg")) == 1  # recent authors need no lookup
    finally:
        await adapter.stop()


def test_cq_strings_and_segment_arrays_read_the_same():
    cq = (
        "[CQ:reply,id=77][CQ:at,qq=10001] hi &#91;not a code&#93; &amp; [CQ:face,id=14][CQ:face,id=9999]"
        "[CQ:at,qq=all] [CQ:image,file=a.jpg,url=https://img.example/a.jpg?size=1&#44;2] [Grin] @名字"
    )
    array = [
        reply(77), at(10001), text(" hi [not a code] & "), face(14), face(9999), at("all"), text(" "),
        image("https://img.example/a.jpg?size=1,2", "a.jpg"), text(" [Grin] @名字"),
    ]  # fmt: skip
    for message in (cq, array):
        parsed = read_message(message, "10001", "PersonaBot")
        assert parsed.text == "@PersonaBot hi [not a code] & [微笑][face:9999]@全体成员 [image] [Grin] @名字"
        assert parsed.mentions == [Mention("10001", "PersonaBot")] and parsed.reply_id == "77"
        assert parsed.attachments == [Attachment("image", url="https://img.example/a.jpg?size=1,2")]
    assert parse_cq("a &amp;#91; b") == [("text", {"text": "a &#91; b"})]  # one decoding pass
    assert parse_cq("[CQ:share,url=https://x.example/?a=1&amp;b=2,title=T&#44;U]") == [
        ("share", {"url": "https://x.example/?a=1&b=2", "title": "T,U"})
    ]


async def test_wechat_bridge_with_typed_mentions(harness, monkeypatch):
    monkeypatch.setenv("WECHAT_ONEBOT_TOKEN", TOKEN)
    options = {"port": 0, "platform": "wechat", "token_env": "WECHAT_ONEBOT_TOKEN", "action_timeout": 2}
    adapter = OneBotAdapter.from_config("wechat", options, Secrets())
    h = await harness(adapter=adapter, llm=FakeLLM(default="吃面吧"))
    async with OneBotBridge(token=TOKEN, style="napcat", self_id="wxid_bot", nickname="小助手",
                            heartbeat_interval=None) as wechat:  # fmt: skip
        await wechat.connect(adapter.url)
        room = "12345678@chatroom"
        await wechat.group_message(room, "wxid_alice", "大家好[Grin]", nickname="阿丽")
        asked = await wechat.group_message(room, "wxid_alice", "@小助手\u2005今天吃什么[Facepalm]")
        sent = await wechat.next_sent()
        assert sent["group_id"] == room and sent["text"] == "吃面吧"  # ids stay strings
        assert sent["reply"] == str(asked["message_id"])
        prompt = h.llm.last_prompt[-1].content
        assert "今天吃什么[Facepalm]" in prompt and "@小助手" not in prompt
        await h.drain()
        assert len(wechat.sent) == 1
    now = datetime.now(UTC)
    logged = await h.host.history.between("testbot", f"wechat:group:{room}", now - timedelta(hours=1), now)
    assert [(row.author, row.author_name, row.text) for row in logged] == [
        ("wechat:wxid_alice", "阿丽", "大家好[Grin]"),  # emoji codes stay readable for digests
        ("wechat:wxid_alice", "Alice", "今天吃什么[Facepalm]"),
    ]


# -- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"prot": 1}, "prot"),
        ({"platform": "QQ Bridge"}, "platform"),
        ({"path": "no-slash"}, "path"),
        ({"max_length": 0}, "max_length"),
        ({"action_timeout": 0}, "action_timeout"),
        ({"token_env": "not a name"}, "token_env"),
    ],
)
def test_bad_options_are_config_errors(secrets, options, problem):
    with pytest.raises(ConfigError, match=problem):
        OneBotAdapter.from_config("qq", options, secrets)
