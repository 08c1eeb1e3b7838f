"""The WeCom AI bot channel (企业微信智能机器人), API mode: WeCom calls our URL, we answer in the response.

WeCom sends every callback as an encrypted, signed POST (crypto in :mod:`bots.adapters.wecom_crypto`);
a GET with ``echostr`` verifies the URL once. A message is answered with a *stream*: the first answer
names a stream id, then WeCom keeps calling back (``msgtype: "stream"``) and each answer carries the
whole text so far, until one says ``finish: true``. So the two halves meet here:

- the HTTP side: a message callback is handed to the host (accept-then-ack: 500 when the host did not
  take it, so WeCom calls again) and answered at once with an empty stream frame; refresh callbacks
  are answered with the text so far;
- the pipeline side: ``send_stream`` writes the model's answer into the message's stream as it is
  generated; ``send`` (commands, split parts) writes into it too. When the host is done with the
  message the next refresh says ``finish: true``.

Stream ids are derived from the msgid (reversibly), so after a restart a refresh for a stream of the
previous run still finds the message the host replays. Group messages that do not @mention the bot
(``bot_name``) are handed over with ``to_me=False`` and get no stream; should the pipeline answer them
anyway (a persona that always talks), the answer goes through the message's ``response_url``, which
is also the way out for text that arrives after a stream was closed. The AI bot cannot post on its
own in this mode: scheduled posts go through a ``wecom_push`` channel.

Text stays as WeChat users typed it: emoji codes (``[Grin]``), ``@名字`` of other members (each
also a Mention segment) and the bot's own ``@bot_name`` (a Mention of the aibotid, which the
pipeline strips); a quoted message is appended as ``「...」``; images and files of ``mixed``,
``image`` and ``file`` messages become attachments; voice arrives as its transcript.

Logs name ids and error types only: never decrypted content, the Token or the EncodingAESKey.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import count
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bots.adapters.wecom_crypto import SignatureError, WeComCrypto, WeComCryptoError, check_token
from bots.core.adapter import Capabilities, EventSink
from bots.core.config import ConfigError, channel_options
from bots.core.events import (
    Attachment,
    ChannelKind,
    ChannelRef,
    Mention,
    MessageEvent,
    Outbound,
    Segment,
    SentRef,
    UserRef,
)

log = logging.getLogger("bots.adapters.wecom")

STREAM_MAX_BYTES = 20_480  # WeCom's limit for stream content (UTF-8)
STREAM_WAIT_S = 360.0  # WeCom stops refreshing a stream 6 minutes after the user's message
RESPONSE_URL_TTL_S = 3600.0  # a response_url takes one POST within an hour
QUOTE_MAX_CHARS = 300
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_PUNCT = r"\s,，:：;；.。!！?？、)）\]】"
_BEFORE_MENTION = r"(?<![A-Za-z0-9_.@])"  # CJK may touch an @name; an e-mail address may not
_OTHER_MENTION = re.compile(rf"{_BEFORE_MENTION}@([^@{_PUNCT}]+)")


class WeComOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "wecom" may set."""

    model_config = ConfigDict(extra="forbid")
    bot_name: str = Field(min_length=1, max_length=64)  # the bot's name as shown after @ in groups
    listen: str = "127.0.0.1"  # behind a reverse proxy; "0.0.0.0" to take WeCom's calls directly
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    path: str = Field("/wecom", pattern=r"^/[A-Za-z0-9_./~-]*$")
    token_env: str = Field("WECOM_BOT_TOKEN", pattern=_ENV_NAME)
    aes_key_env: str = Field("WECOM_BOT_AES_KEY", pattern=_ENV_NAME)
    # a stream that WeCom asks about but nobody writes into (the host dropped the message) is
    # finished, empty, after this many seconds
    orphan_timeout_s: float = Field(60.0, gt=0)

    @field_validator("bot_name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        value = value.strip().removeprefix("@")
        if not value:
            raise ValueError("bot_name is the name shown after @ in groups, without the @")
        return value


class WeComSendError(RuntimeError):
    """A reply WeCom cannot take: no message to answer, or the response_url refused it."""


@dataclass(eq=False)
class _Turn:
    """One user message and the answer being built for it."""

    chat_id: str
    msgid: str | None  # None: written by a replay before WeCom told us which message it is
    stream: bool  # answered with a stream (else: replies go through response_url)
    response_url: str = ""
    created: float = 0.0
    text: str = ""
    writers: int = 0  # send_stream calls writing into it now
    sent_at: float | None = None  # the last send() into it
    awaits_handling: bool = False  # the host's handling future will mark it handled
    handled: bool = False
    done: bool = False  # no more text will come; the next refresh answers finish=true
    closed: bool = False  # finish=true was answered: WeCom shows the final text
    shown: str = ""  # the text of that last frame
    url_used: bool = False
    truncated: bool = False

    @property
    def stream_id(self) -> str | None:
        return stream_id_for(self.msgid) if self.stream and self.msgid else None


def stream_id_for(msgid: str) -> str:
    """Our stream id for a message: reversible, so a restart can map a refresh back to it."""
    return "s" + base64.urlsafe_b64encode(msgid.encode()).decode().rstrip("=")


def msgid_of(stream_id: str) -> str | None:
    if not stream_id.startswith("s"):
        return None
    encoded = stream_id[1:]
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


class _Refused(Exception):
    """The host did not accept the message: answer 500 so that WeCom calls again."""


class WeComAdapter:
    """A WeCom AI bot in API (callback) mode: @mentions in groups and direct messages, streamed replies."""

    platform = "wecom"

    def __init__(self, name: str, token: str, aes_key: str, settings: WeComOptions) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = Capabilities(
            max_length=STREAM_MAX_BYTES,
            length_unit="utf8",
            markup=frozenset({"plain", "markdown"}),  # stream content is shown as markdown
            streaming=True,
            proactive=False,  # it only answers: posts of its own go through a wecom_push channel
        )
        self.self_id = ""  # the aibotid, learnt from the first callback
        self.self_name = settings.bot_name
        self.port: int | None = None  # the bound port once started
        self._crypto = WeComCrypto(token, aes_key, receive_id="")
        self._sink: EventSink | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._turns: dict[int, _Turn] = {}  # oldest first
        self._by_msgid: dict[str, _Turn] = {}
        self._serial = count()
        self._mention_me = re.compile(rf"{_BEFORE_MENTION}@{re.escape(settings.bot_name)}(?=$|[{_PUNCT}])")

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> WeComAdapter:
        settings = channel_options(WeComOptions, name, "wecom", options)
        purpose = f"channel {name} (wecom)"
        token = secrets.require(settings.token_env, purpose).get_secret_value().strip()
        aes_key = secrets.require(settings.aes_key_env, purpose).get_secret_value().strip()
        try:
            check_token(token)
        except ValueError as exc:
            raise ConfigError(f"{purpose}: {settings.token_env}: {exc}") from None
        try:
            return cls(name, token, aes_key, settings)
        except ValueError as exc:
            raise ConfigError(
                f"{purpose}: {settings.aes_key_env}: {exc} (copy it from the bot's API settings)"
            ) from None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, sink: EventSink) -> None:
        """Serve the callback URL; return once listening. (WeCom has no call to check the keys:
        a wrong Token or EncodingAESKey shows as failed URL verification in the admin console.)"""
        self._sink = sink
        settings = self.settings
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get(settings.path, self._on_verify)
        app.router.add_post(settings.path, self._on_callback)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, settings.listen, settings.port).start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"channel {self.name} (wecom): cannot listen on {settings.listen}:{settings.port} "
                f"({exc.strerror or exc})"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        log.info(
            "channel %s: WeCom AI bot %s, callbacks on %s:%s%s",
            self.name, self.self_name, settings.listen, self.port, settings.path,
        )  # fmt: skip

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
        if self._session:
            await self._session.close()
            self._session = None

    # -- HTTP: URL verification and callbacks --------------------------------------------------
    async def _on_verify(self, request: web.Request) -> web.Response:
        query = request.query
        echostr = query.get("echostr", "").replace(" ", "+")  # a "+" that arrived undecoded
        try:
            plain = self._crypto.verify_url(
                query.get("msg_signature", ""), query.get("timestamp", ""), query.get("nonce", ""), echostr
            )
        except SignatureError:
            log.warning("channel %s: URL verification from %s: wrong signature", self.name, request.remote)
            return web.Response(status=403)
        except WeComCryptoError as exc:
            log.warning("channel %s: URL verification from %s refused (%s)", self.name, request.remote, exc)
            return web.Response(status=400)
        log.info("channel %s: callback URL verified by %s", self.name, request.remote)
        return web.Response(body=plain, content_type="text/plain")  # verbatim: no quotes, no newline

    async def _on_callback(self, request: web.Request) -> web.Response:
        query = request.query
        nonce = query.get("nonce", "")
        try:
            plain = self._crypto.decrypt_callback(
                query.get("msg_signature", ""), query.get("timestamp", ""), nonce, await request.read()
            )
        except SignatureError:
            log.warning("channel %s: callback from %s: wrong signature; refused", self.name, request.remote)
            return web.Response(status=403)
        except WeComCryptoError as exc:
            log.warning("channel %s: callback from %s refused (%s)", self.name, request.remote, exc)
            return web.Response(status=400)
        try:
            payload = json.loads(plain)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError, RecursionError):
            log.warning("channel %s: a callback that is not a JSON object skipped", self.name)
            return web.Response(status=200)  # an empty answer: nothing to show, nothing to redeliver
        try:
            frame = await self._dispatch(payload)
        except _Refused:
            return web.Response(status=500)
        except Exception as exc:  # one bad callback never stops the channel
            log.warning(
                "channel %s: malformed callback %s skipped (%s, chat %s)",
                self.name, _ids(payload, "msgid"), type(exc).__name__, _ids(payload, "chatid"),
            )  # fmt: skip
            return web.Response(status=200)
        if frame is None:
            return web.Response(status=200)
        reply = self._crypto.encrypt_reply(json.dumps(frame, ensure_ascii=False).encode(), nonce)
        return web.Response(body=json.dumps(reply).encode(), headers={"Content-Type": "application/json"})

    async def _dispatch(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The plaintext answer to one callback (None: an empty answer)."""
        self._prune()
        msgtype = payload.get("msgtype")
        if msgtype == "stream":
            return self._on_refresh(payload)
        if msgtype == "event":
            event = payload.get("event")
            kind = event.get("eventtype") if isinstance(event, dict) else None
            log.debug("channel %s: event %s ignored", self.name, kind)
            return None
        msgid = _text_field(payload, "msgid")
        known = self._by_msgid.get(msgid)
        if known is not None:  # WeCom called again for a message it already has: same stream
            log.debug("channel %s: message %s delivered again", self.name, msgid)
            return self._frame(known) if known.stream else None
        event = self._translate(payload)
        if event is None:
            return None
        return await self._hand_over(event, payload)

    async def _hand_over(self, event: MessageEvent, payload: dict[str, Any]) -> dict[str, Any] | None:
        assert self._sink is not None
        response_url = payload.get("response_url")
        turn = self._add(
            _Turn(
                event.channel.id,
                event.message_id,
                stream=event.to_me,
                response_url=response_url if isinstance(response_url, str) else "",
            )
        )
        try:
            handled = await self._sink(event)
        except Exception as exc:  # the error's text may quote the message (SQL parameters): not logged
            self._remove(turn)
            log.warning(
                "channel %s: message %s not accepted (%s); WeCom retries",
                self.name, event.message_id, type(exc).__name__,
            )  # fmt: skip
            raise _Refused from None
        if handled is None:
            # known to the host: done in an earlier run, or being replayed now; a replay's answer
            # then goes through this delivery's response_url
            turn.stream = False
            return None
        turn.awaits_handling = True
        handled.add_done_callback(lambda _future: self._on_handled(turn))
        return self._frame(turn) if turn.stream else None

    def _on_refresh(self, payload: dict[str, Any]) -> dict[str, Any]:
        stream = payload.get("stream")
        stream_id = stream.get("id") if isinstance(stream, dict) else None
        if not isinstance(stream_id, str) or not stream_id:
            raise ValueError("stream refresh without stream.id")
        msgid = msgid_of(stream_id)
        turn = self._by_msgid.get(msgid) if msgid else None
        if turn is None or not turn.stream:
            if msgid is None:  # not an id we gave out: tell WeCom to stop asking
                log.warning("channel %s: refresh for an unknown stream; finished empty", self.name)
                return _stream_frame(stream_id, "", finish=True)
            turn = self._adopt(msgid, payload)
        self._expire(turn)
        return self._frame(turn)

    def _adopt(self, msgid: str, payload: dict[str, Any]) -> _Turn:
        """A refresh for a stream of an earlier run: the host replays its message; meet it here."""
        chat_id = _chat_id(payload)
        unbound = [t for t in self._turns.values() if t.msgid is None and t.chat_id == chat_id]
        if unbound:  # a replay already writing in a DM (no msgid there): this is its stream
            turn = unbound[0]
            turn.msgid = msgid
            self._by_msgid[msgid] = turn
            return turn
        log.info("channel %s: refresh for message %s of an earlier run", self.name, msgid)
        return self._add(_Turn(chat_id, msgid, stream=True))

    def _expire(self, turn: _Turn) -> None:
        if turn.done:
            return
        age = time.monotonic() - turn.created
        idle = not turn.awaits_handling and turn.writers == 0 and turn.sent_at is None
        if age > STREAM_WAIT_S or (idle and age > self.settings.orphan_timeout_s):
            log.info("channel %s: no answer for message %s; stream finished", self.name, turn.msgid)
            turn.done = True

    def _on_handled(self, turn: _Turn) -> None:
        turn.handled = True
        turn.done = True

    def _frame(self, turn: _Turn) -> dict[str, Any]:
        assert turn.stream_id is not None
        if turn.done:
            turn.closed, turn.shown = True, turn.text
        return _stream_frame(turn.stream_id, turn.text, finish=turn.done)

    # -- turns ---------------------------------------------------------------------------------
    def _add(self, turn: _Turn) -> _Turn:
        turn.created = time.monotonic()
        self._turns[next(self._serial)] = turn
        if turn.msgid is not None:
            self._by_msgid[turn.msgid] = turn
        return turn

    def _remove(self, turn: _Turn) -> None:
        self._turns = {k: t for k, t in self._turns.items() if t is not turn}
        if turn.msgid is not None and self._by_msgid.get(turn.msgid) is turn:
            del self._by_msgid[turn.msgid]

    def _prune(self) -> None:
        """Forget messages whose response_url has expired (the msgids also catch redeliveries)."""
        now = time.monotonic()
        for key, turn in list(self._turns.items()):
            if now - turn.created <= RESPONSE_URL_TTL_S:
                break  # oldest first
            if turn.text and not turn.closed:
                log.warning("channel %s: the answer to %s was never shown; dropped", self.name, turn.msgid)
            del self._turns[key]
            if turn.msgid is not None and self._by_msgid.get(turn.msgid) is turn:
                del self._by_msgid[turn.msgid]

    def _chat_turns(self, chat_id: str) -> list[_Turn]:
        return [t for t in self._turns.values() if t.chat_id == chat_id]

    def _turn_for_stream(self, chat_id: str, reply_to: str | None) -> _Turn:
        """The message an answer streams into: ``reply_to``, or in a DM (the pipeline gives no
        reply_to there) the oldest message of the chat still waiting for one."""
        if reply_to:
            turn = self._by_msgid.get(reply_to)
            return turn or self._add(_Turn(chat_id, reply_to, stream=True))  # a replay after a restart
        waiting = _answer_first([t for t in self._chat_turns(chat_id) if not t.done and t.writers == 0])
        return waiting[0] if waiting else self._add(_Turn(chat_id, None, stream=True))

    def _turn_for_send(self, target: ChannelRef, reply_to: str | None) -> _Turn | None:
        if reply_to:  # unknown here: a message of an earlier run, whose stream WeCom may still refresh
            return self._by_msgid.get(reply_to) or self._add(_Turn(target.id, reply_to, stream=True))
        turns = [t for t in self._chat_turns(target.id) if not t.closed or not t.url_used]
        if target.kind is not ChannelKind.DM:
            # in a group only a reply's later parts come without reply_to: they follow the first
            turns = [t for t in turns if t.sent_at is not None]
        open_turns = [t for t in turns if not t.done]
        # a reply being written by send() (split parts, a command's second line) continues there
        written = [t for t in open_turns if t.sent_at is not None]
        if written:
            return max(written, key=lambda t: t.sent_at or 0.0)
        waiting = _answer_first([t for t in open_turns if t.writers == 0])
        if waiting:
            return waiting[0]
        # still being handled by the host, its stream closed: its response_url may take the rest
        in_flight = [t for t in turns if t.awaits_handling and not t.handled]
        return in_flight[-1] if in_flight else None

    def _append(self, turn: _Turn, text: str) -> None:
        combined = turn.text + text
        encoded = combined.encode()
        if len(encoded) > STREAM_MAX_BYTES:
            combined = encoded[:STREAM_MAX_BYTES].decode(errors="ignore")
            if not turn.truncated:
                log.warning("channel %s: answer to %s cut at %d bytes", self.name, turn.msgid, len(encoded))
            turn.truncated = True
        turn.text = combined

    # -- outbound ------------------------------------------------------------------------------
    async def send_stream(
        self, target: ChannelRef, chunks: AsyncIterator[str], reply_to: str | None = None
    ) -> SentRef:
        turn = self._turn_for_stream(target.id, reply_to)
        if not turn.stream or turn.closed:  # no stream to show it in: collect, then response_url
            text = "".join([chunk async for chunk in chunks])
            return await self._post_response_url(turn, target, text)
        turn.writers += 1
        try:
            async for chunk in chunks:
                self._append(turn, chunk)
        finally:
            turn.writers -= 1
            turn.done = True  # a streamed answer is the whole answer
        if turn.closed and turn.shown != turn.text:  # WeCom stopped waiting before the end
            return await self._post_response_url(turn, target, turn.text)
        return SentRef(self.platform, target.id, turn.stream_id or f"pending:{target.id}")

    async def send(self, outbound: Outbound) -> SentRef:
        target = outbound.target
        turn = self._turn_for_send(target, outbound.reply_to)
        if turn is None:
            raise WeComSendError(
                f"channel {self.name}: no WeCom message in chat {target.id} to answer. The AI bot "
                "only answers messages (callback mode cannot post on its own); send digests and "
                "other posts through a wecom_push channel"
            )
        addition = ("\n\n" if turn.text else "") + outbound.text
        fits = len((turn.text + addition).encode()) <= STREAM_MAX_BYTES
        if turn.stream and not turn.closed and fits:
            self._append(turn, addition)
            turn.sent_at = time.monotonic()
            if not turn.awaits_handling:  # a replay: no handling future will close it
                turn.done = True
            return SentRef(self.platform, target.id, turn.stream_id or f"pending:{target.id}")
        return await self._post_response_url(turn, target, outbound.text)

    async def _post_response_url(self, turn: _Turn, target: ChannelRef, text: str) -> SentRef:
        """POST ``text`` once to the message's response_url (markdown, as WeCom takes it there)."""
        age = time.monotonic() - turn.created
        if not turn.response_url or turn.url_used or age > RESPONSE_URL_TTL_S or self._session is None:
            raise WeComSendError(
                f"channel {self.name}: message {turn.msgid} in chat {target.id} cannot take another "
                "reply (its stream is closed and its response_url is used, expired or unknown)"
            )
        turn.url_used = True  # one POST per response_url, whatever its outcome
        if not turn.stream:
            turn.done = True  # nothing more can reach this message
        body = {"msgtype": "markdown", "markdown": {"content": _cut(text, STREAM_MAX_BYTES)}}
        try:
            async with self._session.post(turn.response_url, json=body) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise WeComSendError(
                f"channel {self.name}: reply to {turn.msgid} through response_url failed "
                f"({type(exc).__name__})"
            ) from None
        errcode = answer.get("errcode", -1) if isinstance(answer, dict) else -1
        if errcode != 0:
            errmsg = str(answer.get("errmsg", "")) if isinstance(answer, dict) else ""
            raise WeComSendError(
                f"channel {self.name}: WeCom refused the reply to {turn.msgid} (errcode {errcode}: "
                f"{errmsg.split(',')[0]})"
            )
        turn.closed = True
        return SentRef(self.platform, target.id, f"url:{turn.msgid}")

    # -- inbound translation -------------------------------------------------------------------
    def _translate(self, payload: dict[str, Any]) -> MessageEvent | None:
        """The event in a message callback, or None for a kind we do not read (logged)."""
        msgid = _text_field(payload, "msgid")
        sender = payload.get("from")
        userid = sender.get("userid") if isinstance(sender, dict) else None
        if not isinstance(userid, str) or not userid:
            raise ValueError("message without from.userid")
        chattype = payload.get("chattype")
        if chattype == "group":
            channel = ChannelRef(self.platform, _text_field(payload, "chatid"), ChannelKind.GROUP)
        elif chattype == "single":
            channel = ChannelRef(self.platform, userid, ChannelKind.DM)
        else:
            raise ValueError(f"unknown chattype {chattype!r}")
        content = _content(payload)
        if content is None:
            log.debug("channel %s: message %s of type %s ignored", self.name, msgid, payload.get("msgtype"))
            return None
        text, attachments = content
        quoted = _quote_text(payload.get("quote"))
        if quoted:
            text = f"{text} 「{quoted}」" if text else f"「{quoted}」"
        aibotid = payload.get("aibotid")
        if isinstance(aibotid, str) and aibotid:
            self.self_id = aibotid
        self_id = self.self_id or "aibot"
        segments, mentions_me = self._mentions(text, self_id)
        return MessageEvent(
            platform=self.platform,
            message_id=msgid,
            author=UserRef(self.platform, userid, name=userid),
            channel=channel,
            text=text,
            self_id=self_id,
            self_name=self.self_name,
            segments=(*segments, *attachments),
            # WeCom delivers group messages only when the bot is @mentioned, but the text is the
            # proof: a group message that does not name the bot is not to it
            to_me=channel.kind is ChannelKind.DM or mentions_me,
            raw=None,  # the payload holds the response_url, a one-use credential: not kept
        )

    def _mentions(self, text: str, self_id: str) -> tuple[list[Segment], bool]:
        """Mention segments in text order: the bot's own @name, and other @names as they stand."""
        found: list[tuple[int, Segment]] = []
        mine = [(m.start(), m.end()) for m in self._mention_me.finditer(text)]
        found += [(start, Mention(self_id, self.self_name)) for start, _ in mine]
        for match in _OTHER_MENTION.finditer(text):
            if not any(start <= match.start() < end for start, end in mine):
                found.append((match.start(), Mention(match.group(1), match.group(1))))
        return [segment for _, segment in sorted(found, key=lambda item: item[0])], bool(mine)


# -- helpers ------------------------------------------------------------------------------------
def _answer_first(turns: list[_Turn]) -> list[_Turn]:
    """Messages this run is answering (a stream the host is handling) before leftovers, such as a
    redelivery the host knew already; oldest first within each."""
    return sorted(turns, key=lambda t: not (t.stream and t.awaits_handling and not t.handled))


def _stream_frame(stream_id: str, content: str, *, finish: bool) -> dict[str, Any]:
    return {"msgtype": "stream", "stream": {"id": stream_id, "finish": finish, "content": content}}


def _text_field(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"message without {key}")
    return value


def _ids(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    return value[:80] if isinstance(value, str) else "?"


def _chat_id(payload: dict[str, Any]) -> str:
    if payload.get("chattype") == "group" and isinstance(payload.get("chatid"), str):
        return str(payload["chatid"])
    sender = payload.get("from")
    userid = sender.get("userid") if isinstance(sender, dict) else None
    return userid if isinstance(userid, str) else "?"


def _readable(text: str) -> str:
    """WeChat puts U+2005 after an @name; emoji codes such as [Grin] stay as they are."""
    return text.replace("\u2005", " ")


def _content(payload: dict[str, Any]) -> tuple[str, list[Attachment]] | None:
    """Text and attachments of a message by its msgtype; None for types we do not read."""
    msgtype = payload.get("msgtype")
    body = payload.get(msgtype) if isinstance(msgtype, str) else None
    if msgtype in {"text", "voice"}:  # voice arrives already as text
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            raise ValueError(f"{msgtype} message without content")
        return _readable(body["content"]), []
    if msgtype == "mixed":
        items = body.get("msg_item") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ValueError("mixed message without msg_item")
        texts, attachments = _mixed(items)
        return "\n".join(texts), attachments
    if msgtype in {"image", "file"}:
        url = body.get("url", "") if isinstance(body, dict) else ""
        return "", [Attachment(msgtype, url=url if isinstance(url, str) else "")]
    return None


def _mixed(items: list[Any]) -> tuple[list[str], list[Attachment]]:
    texts: list[str] = []
    attachments: list[Attachment] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if item.get("msgtype") == "text" and isinstance(item.get("text"), dict):
            texts.append(_readable(str(item["text"].get("content", ""))))
        elif item.get("msgtype") == "image" and isinstance(item.get("image"), dict):
            attachments.append(Attachment("image", url=str(item["image"].get("url", ""))))
    return texts, attachments


def _quote_text(quote: Any) -> str:
    """A quoted message as one short line (its text, or what kind of thing was quoted)."""
    if not isinstance(quote, dict):
        return ""
    kind = quote.get("msgtype")
    body = quote.get(kind) if isinstance(kind, str) else None
    if kind in {"text", "voice"} and isinstance(body, dict):
        text = str(body.get("content", ""))
    elif kind == "mixed" and isinstance(body, dict) and isinstance(body.get("msg_item"), list):
        text = " ".join(_mixed(body["msg_item"])[0])
    elif kind in {"image", "file"}:
        text = f"[{kind}]"
    else:
        return ""
    line = " ".join(_readable(text).split())
    return line if len(line) <= QUOTE_MAX_CHARS else line[: QUOTE_MAX_CHARS - 1] + "…"


def _cut(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    return text if len(encoded) <= max_bytes else encoded[:max_bytes].decode(errors="ignore")


__all__ = ["WeComAdapter", "WeComOptions", "WeComSendError", "msgid_of", "stream_id_for"]
