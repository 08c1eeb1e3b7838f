"""The WeCom AI bot channel: our adapter, a real Host, and the WeCom emulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fixtures.prose import varied_text
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk

from bots.adapters.wecom import WeComAdapter, WeComSendError, msgid_of, stream_id_for
from bots.adapters.wecom_crypto import SignatureError, WeComCrypto, WeComCryptoError, decode_aes_key
from bots.agent.persona import GroupPolicy
from bots.core.config import ConfigError, Secrets
from bots.core.events import ChannelKind, ChannelRef, Outbound
from bots.plugins import Invocation, Plugin, command
from bots.testing import FakeLLM
from bots.testing.harness import BOT, TEST_PERSONA
from bots.testing.wecom_server import WeComServer

ANSWER = "The lamp is lit. The ships are safe tonight. Sleep well, keepers."


class SlowStreamLLM(FakeLLM):
    """A FakeLLM whose stream takes ``chunk_delay_s`` per word, so a stream visibly grows."""

    chunk_delay_s: float = 0.05

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages):
            await asyncio.sleep(self.chunk_delay_s)
            yield chunk


@pytest.fixture
async def wecom() -> AsyncIterator[WeComServer]:
    async with WeComServer(bot_name="Persona") as server:
        yield server


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, wecom: WeComServer) -> Secrets:
    monkeypatch.setenv("WECOM_BOT_TOKEN", wecom.token)
    monkeypatch.setenv("WECOM_BOT_AES_KEY", wecom.aes_key)
    return Secrets()


def make_adapter(wecom: WeComServer, secrets: Secrets, **options: Any) -> WeComAdapter:
    return WeComAdapter.from_config("wc", {"port": 0, "bot_name": wecom.bot_name, **options}, secrets)


async def start(harness: Any, wecom: WeComServer, secrets: Secrets, llm: Any = None, **kw: Any) -> Any:
    adapter = make_adapter(wecom, secrets, **kw.pop("options", {}))
    h = await harness(adapter=adapter, llm=llm or FakeLLM(default=ANSWER), **kw)
    wecom.callback_url = f"http://127.0.0.1:{adapter.port}/wecom"
    return h


def last_user_text(llm: FakeLLM) -> str:
    return str(llm.last_prompt[-1].content)


# -- crypto --------------------------------------------------------------------------------------
def test_crypto_matches_the_published_sample():
    """The sample of WeCom's crypto docs (Token QDG6eK, ReceiveId wx5823bf96d3bd56c7)."""
    sample = WeComCrypto("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7")
    echostr = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
    plain = sample.verify_url("5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780", echostr)
    assert plain == b"1616140317555161061"
    with pytest.raises(SignatureError):
        sample.verify_url("5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd4", "1409659589", "263014780", echostr)
    aibot = WeComCrypto("QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "")
    with pytest.raises(WeComCryptoError, match="ReceiveId"):
        aibot.decrypt(echostr)  # encrypted for a corp, not for an AI bot


def test_crypto_round_trip_pads_to_32_bytes():
    crypto = WeComCrypto("token1", "a" * 43)
    for size in (0, 1, 11, 12, 44, 1000):
        message = "消".encode() * size
        encrypted = crypto.encrypt(message)
        assert len(base64.b64decode(encrypted)) % 32 == 0
        assert crypto.decrypt(encrypted) == message
    reply = crypto.encrypt_reply(b'{"msgtype":"stream"}', nonce="123", timestamp=1700000000)
    assert set(reply) == {"encrypt", "msgsignature", "timestamp", "nonce"}
    assert reply["timestamp"] == 1700000000
    crypto.verify(reply["msgsignature"], "1700000000", "123", reply["encrypt"])
    with pytest.raises(WeComCryptoError):
        crypto.decrypt("not base64!")
    with pytest.raises(WeComCryptoError):
        WeComCrypto("token1", "b" * 43).decrypt(crypto.encrypt(b"hello"))


@pytest.mark.parametrize(
    ("key", "problem"), [("a" * 42, "43 characters, got 42"), ("a" * 42 + "+", "only the letters")]
)
def test_encoding_aes_key_is_checked(key, problem):
    with pytest.raises(ValueError, match=problem):
        decode_aes_key(key)


def test_stream_ids_lead_back_to_their_message():
    msgid = "CAIQ16HMjQYY/NGagIOAgAMgq4KM0AI="
    assert msgid_of(stream_id_for(msgid)) == msgid
    assert msgid_of("not-ours") is None


# -- configuration -------------------------------------------------------------------------------
def test_config_errors_name_the_variable_never_the_value(monkeypatch, wecom):
    monkeypatch.delenv("WECOM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("WECOM_BOT_AES_KEY", raising=False)
    with pytest.raises(ConfigError, match="WECOM_BOT_TOKEN"):
        make_adapter(wecom, Secrets())
    monkeypatch.setenv("WECOM_BOT_TOKEN", wecom.token)
    with pytest.raises(ConfigError, match="WECOM_BOT_AES_KEY"):
        make_adapter(wecom, Secrets())
    monkeypatch.setenv("WECOM_BOT_AES_KEY", "shortkey123")
    with pytest.raises(ConfigError, match="WECOM_BOT_AES_KEY: the EncodingAESKey must be 43") as info:
        make_adapter(wecom, Secrets())
    assert "shortkey123" not in str(info.value)
    monkeypatch.setenv("WECOM_BOT_AES_KEY", wecom.aes_key)
    monkeypatch.setenv("WECOM_BOT_TOKEN", "has spaces and-dashes")
    with pytest.raises(ConfigError, match="WECOM_BOT_TOKEN: the Token is 1-32 letters and digits"):
        make_adapter(wecom, Secrets())
    monkeypatch.setenv("WECOM_BOT_TOKEN", wecom.token)
    with pytest.raises(ConfigError, match="bot_name"):
        WeComAdapter.from_config("wc", {}, Secrets())
    with pytest.raises(ConfigError, match="prot"):
        WeComAdapter.from_config("wc", {"bot_name": "X", "prot": 1}, Secrets())


# -- URL verification and rejected callbacks --------------------------------------------------------
async def test_url_verification_answers_the_plain_echostr(harness, wecom, secrets):
    await start(harness, wecom, secrets)
    status, body = await wecom.verify_url("8473629105527341009")
    assert (status, body) == (200, "8473629105527341009")  # verbatim: no quotes, no newline
    assert await wecom.verified()
    status, _ = await wecom.verify_url(signature="0" * 40)
    assert status == 403


async def test_wrong_signature_rejected_and_logged_without_payload(harness, wecom, secrets, caplog):
    h = await start(harness, wecom, secrets)
    secret_text = "the secret question nobody should log"
    payload = wecom.message("alice", secret_text)
    body = {"encrypt": wecom.crypto.encrypt(json.dumps(payload).encode())}
    with caplog.at_level(logging.DEBUG):
        status, answer = await wecom.post(body, signature="f" * 40)
    assert status == 403 and answer == b""
    await h.drain()
    assert h.llm.prompts == []
    assert "wrong signature" in caplog.text
    assert secret_text not in caplog.text and body["encrypt"] not in caplog.text


async def test_undecryptable_bodies_rejected(harness, wecom, secrets, caplog):
    h = await start(harness, wecom, secrets)
    stranger = WeComCrypto(wecom.token, "Z" * 43)  # right token, another EncodingAESKey
    with caplog.at_level(logging.DEBUG):
        assert (await wecom.post({"encrypt": stranger.encrypt(b'{"msgid":"x"}')}))[0] == 400
        assert (await wecom.post({"encrypt": "bm90IGEgY2lwaGVydGV4dA=="}))[0] == 400
        assert (await wecom.post(b"this is not json"))[0] == 400
        assert (await wecom.post({"no_encrypt": 1}))[0] == 400
    await h.drain()
    assert h.llm.prompts == []
    assert '"msgid":"x"' not in caplog.text and "bm90IGEgY2lwaGVydGV4dA" not in caplog.text
    assert await wecom.verified()  # still serving


# -- conversations -------------------------------------------------------------------------------
async def test_group_mention_answered_with_a_growing_stream(harness, wecom, secrets, monkeypatch):
    h = await start(harness, wecom, secrets)
    # the agent gates the whole answer, then yields its sentences at once: slow them down here, so
    # that the emulator's refreshes (every 0.05 s) see the stream grow
    agent = h.host.control.runtime.bots[BOT].agent
    stream = agent.stream

    async def slow_stream(inv: Any) -> AsyncIterator[str]:
        async for sentence in stream(inv):
            await asyncio.sleep(0.15)
            yield sentence

    monkeypatch.setattr(agent, "stream", slow_stream)
    chat = await wecom.send_text("bob", "is the lamp lit?", chat="wrGroup01")
    assert chat.frames[0]["stream"] == {"id": chat.stream_id, "finish": False, "content": ""}
    final = await chat.wait()
    assert final.strip() == ANSWER
    contents = chat.contents
    assert len(set(contents)) >= 3, contents  # empty, part of the answer, all of it
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(contents))
    finishes = [frame["stream"]["finish"] for frame in chat.frames]
    assert finishes.count(True) == 1 and finishes[-1] is True
    assert all(status == 200 for status in chat.statuses)
    assert wecom.errors == []
    prompt = last_user_text(h.llm)
    assert prompt.endswith("is the lamp lit?") and "@Persona" not in prompt
    assert h.adapter.self_id == wecom.bot_id


async def test_dm_answered(harness, wecom, secrets):
    h = await start(harness, wecom, secrets)
    chat = await wecom.send_text("alice", "hello there")
    assert (await chat.wait()).strip() == ANSWER
    assert last_user_text(h.llm).endswith("hello there")
    assert wecom.errors == [] and wecom.responses == []


async def test_group_chatter_without_mention_is_not_answered(harness, wecom, secrets):
    h = await start(harness, wecom, secrets)
    chatter = await wecom.send_text("carol", "just chatting among ourselves", chat="wrGroup01", mention=False)
    assert chatter.statuses == [200] and chatter.frames == [] and chatter.stream_id is None
    asked = await wecom.send_text("carol", "and you?", chat="wrGroup01")
    assert (await asked.wait()).strip() == ANSWER
    await h.drain()
    assert len(h.llm.prompts) == 1 and last_user_text(h.llm).endswith("and you?")
    assert wecom.responses == []


async def test_a_persona_that_always_talks_answers_chatter_through_response_url(harness, wecom, secrets):
    chatty = TEST_PERSONA.model_copy(update={"group": GroupPolicy(reply="always")})
    await start(harness, wecom, secrets, persona=chatty)
    chatter = await wecom.send_text("carol", "nice weather", chat="wrGroup01", mention=False)
    assert chatter.frames == []  # no stream for a message that is not to the bot
    response = await wecom.next_response()
    assert response["msgid"] == chatter.msgid
    assert response["body"]["msgtype"] == "markdown"
    assert response["body"]["markdown"]["content"].strip() == ANSWER


async def test_redelivered_msgid_answered_once(harness, wecom, secrets):
    h = await start(harness, wecom, secrets, llm=SlowStreamLLM(default=ANSWER, chunk_delay_s=0.02))
    chat = await wecom.send_text("bob", "once please", chat="wrGroup01")
    again = await wecom.redeliver(chat)  # WeCom calls back the same msgid while we answer
    assert again is not None and again["stream"]["id"] == chat.stream_id
    assert (await chat.wait()).strip() == ANSWER
    after = await wecom.redeliver(chat)  # and once more after the end: the same, final answer
    assert after is not None
    assert after["stream"] == {"id": chat.stream_id, "finish": True, "content": chat.content}
    await h.drain()
    assert len(h.llm.prompts) == 1
    assert wecom.errors == [] and wecom.responses == []


async def test_ping_answered_in_a_group_and_a_dm(harness, wecom, secrets):
    h = await start(harness, wecom, secrets)
    group = await wecom.send_text("dave", "/ping", chat="wrGroup01")
    assert await group.wait() == "pong"
    dm = await wecom.send_text("dave", "/ping")
    assert await dm.wait() == "pong"
    assert h.llm.prompts == []


async def test_malformed_callbacks_skipped_without_stopping_the_channel(harness, wecom, secrets, caplog):
    h = await start(harness, wecom, secrets)
    with caplog.at_level(logging.WARNING):
        assert await wecom.callback(b'{"msgid": "broken", "msgtype": ') == (200, None)
        assert await wecom.callback(b'["a", "list"]') == (200, None)
        no_sender = wecom.message("x", "who am I?")
        del no_sender["from"]
        assert await wecom.callback(no_sender) == (200, None)
        assert await wecom.callback({**wecom.message("x", "?"), "chattype": "channel"}) == (200, None)
    assert "malformed callback" in caplog.text and "who am I?" not in caplog.text
    chat = await wecom.send_text("alice", "still there?")
    assert (await chat.wait()).strip() == ANSWER
    await h.drain()
    assert len(h.llm.prompts) == 1


async def test_emoji_codes_mentions_and_quotes_stay_readable(harness, wecom, secrets):
    h = await start(harness, wecom, secrets)
    text = "[Grin] what does @张三\u2005think of [Facepalm]?"
    chat = await wecom.send_text("erin", text, chat="wrGroup01")
    await chat.wait()
    assert last_user_text(h.llm).endswith("[Grin] what does @张三 think of [Facepalm]?")
    quote = {"msgtype": "text", "text": {"content": "这是今日的测试情况"}}
    mixed = wecom.message(
        "erin", "看看这个", chat="wrGroup01", msgtype="mixed", quote=quote, images=("https://img.invalid/1",)
    )
    await (await wecom.deliver(mixed)).wait()
    prompt = last_user_text(h.llm)
    assert prompt.endswith("看看这个 「这是今日的测试情况」") and "@Persona" not in prompt
    inline = wecom.message("erin", "请问@Persona\u2005灯塔亮了吗？", chat="wrGroup01", mention=False)
    await (await wecom.deliver(inline)).wait()  # an @mention inside Chinese text addresses the bot
    assert last_user_text(h.llm).endswith("请问灯塔亮了吗?")  # (the core folds full-width punctuation)
    email = await wecom.send_text("erin", "mail me at erin@Persona.example", chat="wrGroup01", mention=False)
    assert email.frames == []  # an e-mail address is no mention


async def test_an_answer_longer_than_a_stream_is_cut_to_20480_bytes(harness, wecom, secrets):
    long_answer = varied_text(8_000, "zh")
    assert len(long_answer.encode()) > 23_000
    # longer than [llm] max_answer_chars allows by default (4,000): raise it, as an operator would
    llm = FakeLLM(default=long_answer)
    await start(harness, wecom, secrets, llm=llm, llm_settings={"max_answer_chars": 9000})
    chat = await wecom.send_text("alice", "请把灯塔的事都讲给我听")
    final = await chat.wait()
    assert 20_000 < len(final.encode()) <= 20_480 and long_answer.startswith(final.strip())
    assert wecom.errors == []


async def test_a_proactive_post_is_refused_with_a_pointer_to_the_push_channel(harness, wecom, secrets):
    h = await start(harness, wecom, secrets)
    target = ChannelRef("wecom", "wrGroup01", ChannelKind.GROUP)
    with pytest.raises(WeComSendError, match="wecom_push"):
        await h.host.send(BOT, Outbound(target, "good morning"))


class Chatty(Plugin):
    @command("history", help="a long answer and a second line")
    async def history(self, inv: Invocation) -> None:
        await inv.reply("灯塔的历史。" * 2000)  # 36,000 bytes: two parts
        await inv.reply("(end of history)")


async def test_a_long_command_reply_fills_the_stream_then_uses_the_response_url(harness, wecom, secrets):
    h = await start(harness, wecom, secrets, plugins=["basics", Chatty])
    chat = await wecom.send_text("frank", "/history", chat="wrGroup01")
    final = await chat.wait()
    response = await wecom.next_response()
    assert response["msgid"] == chat.msgid
    rest = response["body"]["markdown"]["content"]
    assert len(final.encode()) <= 20_480 and final.startswith("灯塔的历史。")
    assert (final + rest).replace("灯塔的历史。", "") == ""  # the parts together: the whole reply
    await h.drain()
    assert len(wecom.responses) == 1  # the second line had nowhere left to go (logged by the core)
    assert wecom.errors == []


# -- a restart while WeCom waits for the stream --------------------------------------------------------
@pytest.mark.parametrize("chat_id", [None, "wrGroup01"], ids=["dm", "group"])
async def test_a_restart_mid_answer_finishes_the_same_stream_once(harness, wecom, secrets, tmp_path, chat_id):
    data = tmp_path / "var"
    stuck = SlowStreamLLM(default=ANSWER, chunk_delay_s=5, delay_s=30)  # in flight at the stop
    first = await start(harness, wecom, secrets, llm=stuck, data_dir=data)
    port = first.adapter.port
    chat = await wecom.send_text("alice", "are you there?", chat=chat_id)  # accepted, stream opened
    assert chat.stream_id and not chat.done
    first.host.stop_grace_s = 0
    await first.host.stop()  # the answer in flight is cancelled; WeCom keeps refreshing meanwhile
    await chat.wait_for_status(0)  # a refresh found the bot down
    second = await start(
        harness, wecom, secrets, llm=FakeLLM(default=ANSWER), data_dir=data, options={"port": port}
    )
    assert (await chat.wait(timeout=10)).strip() == ANSWER  # the replayed answer, in the same stream
    await second.drain()
    assert len(second.llm.prompts) == 1
    assert wecom.errors == [] and wecom.responses == []


async def test_a_refresh_nobody_answers_is_finished_after_the_orphan_timeout(harness, wecom, secrets):
    await start(harness, wecom, secrets, options={"orphan_timeout_s": 0.2})
    refresh = {
        "msgid": "refresh-1",
        "aibotid": wecom.bot_id,
        "chattype": "single",
        "from": {"userid": "alice"},
        "msgtype": "stream",
        "stream": {"id": stream_id_for("a message of an earlier run")},
    }
    status, frame = await wecom.callback(refresh)
    assert status == 200 and frame is not None and frame["stream"]["finish"] is False
    await asyncio.sleep(0.25)  # the orphan timeout itself is what is tested here
    _, frame = await wecom.callback({**refresh, "msgid": "refresh-2"})
    assert frame is not None
    assert frame["stream"] == {"id": refresh["stream"]["id"], "finish": True, "content": ""}
    _, frame = await wecom.callback({**refresh, "msgid": "refresh-3", "stream": {"id": "unknown"}})
    assert frame is not None and frame["stream"]["finish"] is True  # not ours: WeCom is told to stop
    assert wecom.errors == []
