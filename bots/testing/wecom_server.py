"""Local, protocol-faithful fakes of WeCom for tests: the AI bot's callbacks and the group push webhook.

**The AI bot** (:class:`WeComServer`) plays WeCom's side of API mode. Point it at the channel's
callback URL and play the users::

    from bots.testing.wecom_server import WeComServer

    async def test_dm(harness, monkeypatch):
        async with WeComServer() as wecom:
            monkeypatch.setenv("WECOM_BOT_TOKEN", wecom.token)
            monkeypatch.setenv("WECOM_BOT_AES_KEY", wecom.aes_key)
            adapter = WeComAdapter.from_config("wc", {"port": 0, "bot_name": wecom.bot_name}, Secrets())
            await harness(adapter=adapter, llm=FakeLLM(default="hello"))
            wecom.callback_url = f"http://127.0.0.1:{adapter.port}/wecom"
            chat = await wecom.send_text("alice", "hi")          # a signed, encrypted callback
            assert await chat.wait() == "hello"                # refreshed until finish=true

What it does, as the docs (100719, 101031, 101033, 101138) describe WeCom: URL verification (GET with
``msg_signature``, ``timestamp``, ``nonce`` and an encrypted ``echostr``; the answer must be the
plaintext, verbatim); message callbacks (POST ``{"encrypt": ...}``, signed over the ciphertext, the
plaintext JSON with msgid, aibotid, chatid for groups, chattype, from.userid, response_url and the
message: text, mixed, voice, image, file, quote); and, once an answer names a stream, stream refresh
callbacks (``msgtype: "stream"``, a new msgid each, the same stream id) every
``refresh_interval_s`` until an answer says ``finish: true`` or ``give_up_s`` passes (WeCom: 6 min).
Refreshes that fail (connection refused, 5xx) are retried, as across a restart of the bot.

Every answer of the bot is checked and decrypted: HTTP 200; an empty body or exactly
``{"encrypt", "msgsignature", "timestamp", "nonce"}`` with the callback's nonce, a timestamp in
seconds, a valid signature and ReceiveId ""; a ``stream`` frame whose id stays the same and whose
content is at most 20,480 bytes. Violations land in :attr:`WeComServer.errors` (assert it is empty).
A ``response_url`` (``/cgi-bin/aibot/response?response_code=...`` on this server) takes one
markdown POST within an hour; those posts are in :attr:`WeComServer.responses`.

The same crypto module serves both sides (:mod:`bots.adapters.wecom_crypto`), checked against the
spec's published sample in the tests.

**The group push webhook** (:class:`WeComPushServer`): ``POST /cgi-bin/webhook/send?key=KEY`` with
text (at most 2048 UTF-8 bytes) or markdown (4096); answers are HTTP 200 with errcode 0, 93000 for an
unknown key, 40058 for a long text, 45009 past ``limit`` posts in ``window_s`` seconds (20 per
minute by default), 40008 for an unknown msgtype. :meth:`WeComPushServer.fail_next` injects errors;
:attr:`WeComPushServer.received` records what was accepted (with the time it arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from bots.adapters.wecom_crypto import WeComCrypto, WeComCryptoError

JSON = dict[str, Any]
STREAM_MAX_BYTES = 20_480
PUSH_MAX_BYTES = {"text": 2048, "markdown": 4096}
REPLY_KEYS = {"encrypt", "msgsignature", "timestamp", "nonce"}
# the spec's sample Token and EncodingAESKey (any 1-32 alphanumerics / 43 alphanumerics work)
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"


@dataclass
class Conversation:
    """One user message and what the bot answered to it (the first reply and every refresh)."""

    payload: JSON
    statuses: list[int] = field(default_factory=list)  # HTTP status of each callback, refreshes too
    frames: list[JSON] = field(default_factory=list)  # decrypted stream frames, in order
    stream_id: str | None = None
    timed_out: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # finish=true, or given up
    refresher: asyncio.Task[None] | None = None
    _pulse: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def msgid(self) -> str:
        return str(self.payload["msgid"])

    @property
    def content(self) -> str:
        """What the user sees now: the last frame's content."""
        return str(self.frames[-1]["stream"].get("content", "")) if self.frames else ""

    @property
    def contents(self) -> list[str]:
        return [str(frame["stream"].get("content", "")) for frame in self.frames]

    @property
    def done(self) -> bool:
        return bool(self.frames) and self.frames[-1]["stream"].get("finish") is True

    async def wait_for_status(self, status: int, timeout: float = 5.0) -> None:
        """Until a callback of this conversation got HTTP ``status`` (0: the bot was unreachable)."""
        async with asyncio.timeout(timeout):
            while status not in self.statuses:
                await self._pulse.wait()

    def record(self, status: int) -> None:
        self.statuses.append(status)
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def wait(self, timeout: float = 5.0) -> str:
        """The final content, once a frame said finish=true (TimeoutError otherwise)."""
        await asyncio.wait_for(self.finished.wait(), timeout)
        if self.timed_out or not self.done:
            raise TimeoutError(f"message {self.msgid}: the stream never finished")
        return self.content


class WeComServer:
    """WeCom's side of one AI bot in API mode; see the module docstring for a tour."""

    def __init__(
        self,
        token: str = SAMPLE_TOKEN,
        aes_key: str = SAMPLE_AES_KEY,
        *,
        bot_id: str = "aibot_test_01",
        bot_name: str = "Persona",
        corp: str = "wwtestcorp",
        refresh_interval_s: float = 0.05,
        give_up_s: float = 20.0,
    ) -> None:
        self.token = token
        self.aes_key = aes_key
        self.bot_id = bot_id
        self.bot_name = bot_name
        self.corp = corp
        self.refresh_interval_s = refresh_interval_s
        self.give_up_s = give_up_s  # WeCom waits 6 minutes; tests much less
        self.crypto = WeComCrypto(token, aes_key, receive_id="")
        self.callback_url = ""  # the bot's callback URL: set it once the channel listens
        self.conversations: list[Conversation] = []
        self.responses: list[JSON] = []  # response_url posts: {"msgid", "body"}
        self.errors: list[str] = []  # protocol violations found in the bot's answers
        self.port = 0
        self._codes: dict[str, tuple[str, float, bool]] = {}  # response_code -> (msgid, issued, used)
        self._response_queue: asyncio.Queue[JSON] = asyncio.Queue()
        self._msg_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/cgi-bin/aibot/response", self._on_response_url)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def stop(self) -> None:
        for conversation in self.conversations:
            if conversation.refresher:
                conversation.refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await conversation.refresher
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> WeComServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- URL verification ----------------------------------------------------------------------
    async def verify_url(self, echo: str | None = None, *, signature: str | None = None) -> tuple[int, str]:
        """GET the callback URL as WeCom does when an admin saves it; (status, body). The bot
        passes when the status is 200 and the body is ``echo`` exactly (see :meth:`verified`)."""
        echo = echo or str(secrets.randbelow(10**19))
        echostr = self.crypto.encrypt(echo.encode())
        params = self._signed_query(echostr, signature)
        params["echostr"] = echostr
        async with self._http().get(self._require_url(), params=params) as response:
            return response.status, await response.text()

    async def verified(self) -> bool:
        echo = str(secrets.randbelow(10**19))
        status, body = await self.verify_url(echo)
        return status == 200 and body == echo

    # -- the users' side -----------------------------------------------------------------------
    def message(
        self,
        user: str,
        text: str = "",
        *,
        chat: str | None = None,
        mention: bool = True,
        msgtype: str = "text",
        quote: JSON | None = None,
        images: tuple[str, ...] = (),
    ) -> JSON:
        """A message callback's plaintext. In a group (``chat``) ``mention`` puts ``@bot_name``
        first, as WeCom's content keeps it; ``msgtype`` "mixed" adds ``images`` after the text."""
        if chat is not None and mention:
            text = f"@{self.bot_name} {text}"
        msgid = self._new_msgid()
        payload: JSON = {
            "msgid": msgid,
            "aibotid": self.bot_id,
            "chattype": "group" if chat is not None else "single",
            "from": {"userid": user},
            "response_url": self._response_url(msgid),
            "msgtype": msgtype,
        }
        if chat is not None:
            payload["chatid"] = chat
        if msgtype in {"text", "voice"}:
            payload[msgtype] = {"content": text}
        elif msgtype == "mixed":
            items: list[JSON] = [{"msgtype": "text", "text": {"content": text}}]
            items += [{"msgtype": "image", "image": {"url": url}} for url in images]
            payload["mixed"] = {"msg_item": items}
        elif msgtype in {"image", "file"}:
            payload[msgtype] = {"url": images[0] if images else "https://example.invalid/file"}
        if quote is not None:
            payload["quote"] = quote
        return payload

    async def send_text(self, user: str, text: str, **kwargs: Any) -> Conversation:
        """A user's message (see :meth:`message`), delivered; refreshed until the stream finishes."""
        return await self.deliver(self.message(user, text, **kwargs))

    async def deliver(self, payload: JSON) -> Conversation:
        """Deliver a message callback; when the answer opens a stream, keep refreshing it."""
        conversation = Conversation(payload)
        self.conversations.append(conversation)
        await self._exchange(conversation, payload)
        if conversation.stream_id and not conversation.done:
            conversation.refresher = asyncio.create_task(self._refresh(conversation))
        else:
            conversation.finished.set()
        return conversation

    async def redeliver(self, conversation: Conversation) -> JSON | None:
        """Deliver the same message again (same msgid), as WeCom may; the decrypted answer."""
        status, frame = await self.callback(conversation.payload)
        conversation.record(status)
        return frame

    async def callback(self, plaintext: JSON | bytes) -> tuple[int, JSON | None]:
        """One callback with ``plaintext`` (a dict is JSON-encoded); (status, decrypted answer)."""
        plain = (
            plaintext if isinstance(plaintext, bytes) else json.dumps(plaintext, ensure_ascii=False).encode()
        )
        nonce = self._nonce()
        status, body = await self.post({"encrypt": self.crypto.encrypt(plain)}, nonce=nonce)
        return status, self._open_reply(status, body, nonce)

    async def post(
        self, body: JSON | bytes, *, signature: str | None = None, nonce: str | None = None
    ) -> tuple[int, bytes]:
        """POST ``body`` to the callback URL, signed over its ``encrypt`` field unless
        ``signature`` is given; (status, raw body). For malformed and forged callbacks."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        encrypt = body.get("encrypt", "") if isinstance(body, dict) else ""
        params = self._signed_query(str(encrypt), signature, nonce)
        async with self._http().post(
            self._require_url(), params=params, data=raw, headers={"Content-Type": "application/json"}
        ) as response:
            return response.status, await response.read()

    async def next_response(self, timeout: float = 5.0) -> JSON:
        """The next POST the bot made to a response_url: {"msgid", "body"}."""
        return await asyncio.wait_for(self._response_queue.get(), timeout)

    # -- internals -----------------------------------------------------------------------------
    async def _exchange(self, conversation: Conversation, plaintext: JSON) -> bool:
        """One callback of ``conversation``; False when it failed (no answer to read)."""
        try:
            status, frame = await self.callback(plaintext)
        except (aiohttp.ClientError, TimeoutError):
            conversation.record(0)
            return False
        conversation.record(status)
        if frame is None:
            return status == 200
        stream = frame["stream"]
        if conversation.stream_id is None:
            conversation.stream_id = stream.get("id")
        elif stream.get("id") not in (None, conversation.stream_id):
            self.errors.append(f"message {conversation.msgid}: stream id changed")
        conversation.frames.append(frame)
        return True

    async def _refresh(self, conversation: Conversation) -> None:
        deadline = time.monotonic() + self.give_up_s
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(self.refresh_interval_s)
                payload = {
                    "msgid": self._new_msgid(),
                    "aibotid": self.bot_id,
                    "chattype": conversation.payload["chattype"],
                    "from": conversation.payload["from"],
                    "msgtype": "stream",
                    "stream": {"id": conversation.stream_id},
                }
                if "chatid" in conversation.payload:
                    payload["chatid"] = conversation.payload["chatid"]
                await self._exchange(conversation, payload)
                if conversation.done:
                    return
            conversation.timed_out = True
        finally:
            conversation.finished.set()

    def _open_reply(self, status: int, body: bytes, nonce: str) -> JSON | None:
        """Check and decrypt an answer of the bot; None for an empty one (or a violation)."""
        if status != 200 or not body:
            return None
        try:
            reply = json.loads(body)
        except ValueError:
            self.errors.append("an answer that is not JSON")
            return None
        if not isinstance(reply, dict) or set(reply) != REPLY_KEYS:
            self.errors.append(f"answer keys {sorted(reply) if isinstance(reply, dict) else reply!r}")
            return None
        problems = []
        if reply["nonce"] != nonce:
            problems.append("nonce is not the callback's")
        if not isinstance(reply["timestamp"], int) or abs(reply["timestamp"] - time.time()) > 300:
            problems.append("timestamp is not the current time in seconds")
        expected = self.crypto.signature(str(reply["timestamp"]), str(reply["nonce"]), str(reply["encrypt"]))
        if reply["msgsignature"] != expected:
            problems.append("msgsignature does not match")
        try:
            frame = json.loads(self.crypto.decrypt(str(reply["encrypt"])))
        except (WeComCryptoError, ValueError) as exc:
            problems.append(f"encrypt does not decrypt ({exc})")
            frame = None
        if frame is not None:
            problems += _stream_problems(frame)
        if problems:
            self.errors.extend(problems)
            return None
        return frame  # type: ignore[no-any-return]

    async def _on_response_url(self, request: web.Request) -> web.Response:
        code = request.query.get("response_code", "")
        issued = self._codes.get(code)
        if issued is None or issued[2] or time.monotonic() - issued[1] > 3600:
            return _json({"errcode": 600039, "errmsg": "emulator: response_url unknown, used or expired"})
        msgid, at, _used = issued
        self._codes[code] = (msgid, at, True)
        try:
            body = await request.json()
        except ValueError:
            return _json({"errcode": 40001, "errmsg": "emulator: body is not JSON"})
        content = body.get("markdown", {}).get("content") if isinstance(body, dict) else None
        if body.get("msgtype") != "markdown" or not isinstance(content, str):
            return _json({"errcode": 40008, "errmsg": "emulator: expected a markdown message"})
        if len(content.encode()) > STREAM_MAX_BYTES:
            return _json({"errcode": 40058, "errmsg": "markdown.content exceed max length 20480"})
        record = {"msgid": msgid, "body": body}
        self.responses.append(record)
        self._response_queue.put_nowait(record)
        return _json({"errcode": 0, "errmsg": "ok"})

    def _new_msgid(self) -> str:
        return f"CAIQ{next(self._msg_ids):06d}/{secrets.token_hex(6)}+emu="

    def _response_url(self, msgid: str) -> str:
        code = secrets.token_urlsafe(12)
        self._codes[code] = (msgid, time.monotonic(), False)
        return f"{self.base_url}/cgi-bin/aibot/response?response_code={code}"

    def _signed_query(self, encrypt: str, signature: str | None, nonce: str | None = None) -> dict[str, str]:
        timestamp, nonce = str(int(time.time())), nonce or self._nonce()
        return {
            "msg_signature": signature or self.crypto.signature(timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
        }

    def _nonce(self) -> str:
        return str(secrets.randbelow(10**10))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("start the emulator first (async with WeComServer() as wecom: ...)")
        return self._session

    def _require_url(self) -> str:
        if not self.callback_url:
            raise RuntimeError("set callback_url to the channel's URL first")
        return self.callback_url


def _stream_problems(frame: Any) -> list[str]:
    if not isinstance(frame, dict) or frame.get("msgtype") != "stream":
        return [f"answer msgtype {frame.get('msgtype') if isinstance(frame, dict) else frame!r}, not stream"]
    stream = frame.get("stream")
    if not isinstance(stream, dict) or not isinstance(stream.get("id"), str) or not stream["id"]:
        return ["stream frame without stream.id"]
    problems = []
    if not isinstance(stream.get("finish"), bool):
        problems.append("stream.finish is not a boolean")
    content = stream.get("content", "")
    if not isinstance(content, str):
        problems.append("stream.content is not a string")
    elif len(content.encode()) > STREAM_MAX_BYTES:
        problems.append(f"stream.content is {len(content.encode())} bytes (max {STREAM_MAX_BYTES})")
    return problems


def _json(body: JSON) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


# -- the group push webhook -------------------------------------------------------------------------
@dataclass(frozen=True)
class Push:
    """One post the webhook accepted."""

    msgtype: str
    content: str
    at: float  # time.monotonic() when it arrived


class WeComPushServer:
    """A fake group robot webhook; see the module docstring."""

    def __init__(self, key: str | None = None, *, limit: int = 20, window_s: float = 60.0) -> None:
        self.key = key or str(uuid.uuid4())
        self.limit = limit  # posts accepted per window_s (WeCom: 20 a minute)
        self.window_s = window_s
        self.received: list[Push] = []
        self.answers: list[int] = []  # errcode of every post, in order (rejected ones too)
        self.port = 0
        self._failures: list[tuple[int, str]] = []
        self._queue: asyncio.Queue[Push] = asyncio.Queue()
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/cgi-bin/webhook/send?key={self.key}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/cgi-bin/webhook/send", self._on_send)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> WeComPushServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def fail_next(self, errcode: int = 45009, errmsg: str | None = None) -> None:
        """Answer the next post with ``errcode`` (45009 by default: the robot is over its limit)."""
        self._failures.append((errcode, errmsg or _ERRMSG.get(errcode, "emulator: injected failure")))

    async def next_message(self, timeout: float = 5.0) -> Push:
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _on_send(self, request: web.Request) -> web.Response:
        errcode, errmsg, push = self._judge(request.query.get("key", ""), await request.read())
        self.answers.append(errcode)
        if push is not None:
            self.received.append(push)
            self._queue.put_nowait(push)
        return _json({"errcode": errcode, "errmsg": errmsg})

    def _judge(self, key: str, raw: bytes) -> tuple[int, str, Push | None]:
        if key != self.key:
            return 93000, _ERRMSG[93000], None
        if self._failures:
            return (*self._failures.pop(0), None)
        try:
            body = json.loads(raw)
        except ValueError:
            return 40001, "emulator: body is not JSON", None
        msgtype = body.get("msgtype") if isinstance(body, dict) else None
        if msgtype not in PUSH_MAX_BYTES:
            return 40008, "invalid message type", None
        content = body.get(msgtype, {}).get("content") if isinstance(body.get(msgtype), dict) else None
        if not isinstance(content, str) or not content:
            return 44004, "empty content", None
        if len(content.encode()) > PUSH_MAX_BYTES[msgtype]:
            return 40058, f"{msgtype}.content exceed max length {PUSH_MAX_BYTES[msgtype]}", None
        now = time.monotonic()
        if sum(1 for push in self.received if now - push.at < self.window_s) >= self.limit:
            return 45009, _ERRMSG[45009], None
        return 0, "ok", Push(msgtype, content, now)


_ERRMSG = {
    45009: "api freq out of limit",
    93000: "invalid webhook url, hint: [emulator]",
}


__all__ = [
    "SAMPLE_AES_KEY",
    "SAMPLE_TOKEN",
    "Conversation",
    "Push",
    "WeComPushServer",
    "WeComServer",
]
