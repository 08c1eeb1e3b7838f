"""The OpenAI-compatible chat channel: each ``POST /v1/chat/completions`` is a message to a bot.

A request becomes a :class:`MessageEvent` handed to the host's sink, like a Telegram update: the
inbox, the chat's order, plugins, permissions, rate limits, quotas, the agent with its quality
gate and citations all apply. What the pipeline sends back to that chat while handling the event
(the answer, or a command's reply, or a busy notice) completes the HTTP response; with
``stream: true`` the answer arrives sentence by sentence as server-sent events.

The request's last message is the event's text (it must be the user's); the user and assistant
messages before it become a :class:`Transcript` segment, which the agent answers with in place of
its memory (the last ``max_turns`` of them, each cut to ``max_turn_chars``). System messages are
ignored: the persona is the bot's, not the client's. Sampling parameters (``temperature``,
``max_tokens``...) are the bot's configuration and ignored too.

Chats: a conversation is the API key's client name plus a hash of the request's ``user`` field and
its first user message, so the turns of one conversation keep their order and different
conversations run side by side. The author is ``openai:<client>/<user>`` when the request names
a ``user`` (rate limits and daily quotas per end user), else the conversation itself.

Bearer keys are stored as SHA-256 digests (``bots api-key create NAME`` prints a key once); a
presented key is compared with every stored digest in constant time, and keys never reach a log.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bots.core.adapter import Capabilities, EventSink, NotAccepted
from bots.core.config import channel_options
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound, SentRef, Transcript, UserRef
from bots.core.ratelimit import MovingWindow, windows
from bots.core.sanitize import clean_user_text
from bots.core.storage import Database, KeyValueStore

log = logging.getLogger("bots.openai")

PLATFORM = "openai"
KEY_PREFIX = "sk-bots-"
CLIENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
INVALID_KEY = "invalid_api_key"
MESSAGE_GAP = "\n\n"  # between two messages the bot sent for one request (a notice, then an answer)


# -- the channel -----------------------------------------------------------------------------------
class OpenAIOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "openai" may set."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")  # the model id; default: bot name
    max_turns: int = Field(20, ge=0, le=200)  # earlier messages kept as the conversation
    max_turn_chars: int = Field(4000, gt=0)  # each cut to this
    timeout_s: float = Field(300, gt=0)  # a request waits this long for the bot's answer


class _Exchange:
    """One request's answer as the pipeline sends it to the chat: whole messages or stream pieces."""

    def __init__(self, chat: str, stream: bool) -> None:
        self.chat = chat  # the request's chat id: what goes elsewhere is not part of the answer
        self.stream = stream
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()  # None: handling is over
        self.messages = 0

    def begin_message(self) -> None:
        if self.messages:
            self.pieces.put_nowait(MESSAGE_GAP)
        self.messages += 1

    def piece(self, text: str) -> None:
        if text:
            self.pieces.put_nowait(text)

    def finish(self) -> None:
        self.pieces.put_nowait(None)


# The request a handling task works for: the sink spawns the task inside the request's context, so
# what the pipeline sends while handling that event finds its way back to that HTTP response.
_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("openai_exchange", default=None)


@dataclass(frozen=True)
class Conversation:
    """What a request asks, as the channel hands it to the bot."""

    client: str  # the API key's name
    text: str  # the last user message
    earlier: tuple[tuple[str, str], ...]  # ("human" | "ai", text), oldest first
    first: str  # the conversation's first user message (names the chat)
    user: str | None = None  # the request's end-user id


class OpenAIChannel:
    """A bot's seat behind the OpenAI-compatible endpoint (the web app routes requests to it)."""

    platform = PLATFORM
    self_id = "assistant"
    replays = False  # the host does not replay a request an earlier run left: its client is gone

    def __init__(
        self,
        name: str = "openai",
        *,
        model: str | None = None,
        max_turns: int = 20,
        max_turn_chars: int = 4000,
        timeout_s: float = 300,
    ) -> None:
        self.name = name
        self.model = model
        self.max_turns = max_turns
        self.max_turn_chars = max_turn_chars
        self.timeout_s = timeout_s
        self._sink: EventSink | None = None
        self._ids = itertools.count(1)

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> OpenAIChannel:
        o = channel_options(OpenAIOptions, name, "openai", options)
        return cls(
            name, model=o.model, max_turns=o.max_turns, max_turn_chars=o.max_turn_chars, timeout_s=o.timeout_s
        )

    @property
    def capabilities(self) -> Capabilities:
        """Streaming when the request being answered asked for it (read by the handling task)."""
        exchange = _EXCHANGE.get()
        return Capabilities(max_length=None, streaming=exchange is not None and exchange.stream)

    async def start(self, sink: EventSink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        self._sink = None

    @staticmethod
    def _exchange(chat: ChannelRef) -> _Exchange | None:
        """The request waiting for what is sent to ``chat`` (none for a replay after a restart, or
        a post a plugin makes into another conversation)."""
        exchange = _EXCHANGE.get()
        return exchange if exchange is not None and exchange.chat == chat.id else None

    async def send(self, outbound: Outbound) -> SentRef:
        exchange = self._exchange(outbound.target)
        if exchange is None:
            log.info(
                "channel %s: a message to %s with no request waiting; dropped", self.name, outbound.target.id
            )
        else:
            exchange.begin_message()
            exchange.piece(outbound.text)
        return SentRef(self.platform, outbound.target.id, f"m{next(self._ids)}")

    async def send_stream(
        self, target: ChannelRef, chunks: AsyncIterator[str], reply_to: str | None = None
    ) -> SentRef:
        exchange = self._exchange(target)
        if exchange is not None:
            exchange.begin_message()
        async for chunk in chunks:
            if exchange is not None:
                exchange.piece(chunk)
        return SentRef(self.platform, target.id, f"m{next(self._ids)}")

    def event(self, conversation: Conversation) -> MessageEvent:
        """The request as the bot sees it: a direct message in the conversation's own chat."""
        c = conversation
        chat_hash = hashlib.sha256(f"{c.client}\0{c.user or ''}\0{c.first}".encode()).hexdigest()[:16]
        chat = f"{c.client}/c-{chat_hash}"
        author_id = chat if c.user is None else f"{c.client}/{_user_id(c.user)}"
        turns = [(role, clean_user_text(text[: self.max_turn_chars])) for role, text in c.earlier]
        turns = turns[-self.max_turns :] if self.max_turns else []
        return MessageEvent(
            platform=self.platform,
            message_id=uuid.uuid4().hex,
            author=UserRef(self.platform, author_id, name=c.user or c.client),
            channel=ChannelRef(self.platform, chat, ChannelKind.DM, name=c.client),
            text=c.text,
            self_id=self.self_id,
            segments=(Transcript(tuple(turns)),),
            to_me=True,
        )

    async def ask(self, conversation: Conversation, *, stream: bool) -> _Exchange:
        """Hand the request to the bot; the exchange collects what the bot sends back and ends
        (a None piece) when the event has been handled. Raises NotAccepted when the host stops."""
        if self._sink is None:
            raise NotAccepted(f"channel {self.name} is not running")
        event = self.event(conversation)
        exchange = _Exchange(event.channel.id, stream)
        token = _EXCHANGE.set(exchange)
        try:
            handled = await self._sink(event)
        finally:
            _EXCHANGE.reset(token)
        if handled is None:  # a duplicate: cannot happen with fresh ids, but never hang on it
            exchange.finish()
        else:
            handled.add_done_callback(lambda _task: exchange.finish())
        return exchange


def _user_id(user: str) -> str:
    """The request's ``user`` as an id part: kept when short and plain, else hashed."""
    if CLIENT_NAME.match(user):
        return user
    return "u-" + hashlib.sha256(user.encode()).hexdigest()[:16]


# -- API keys --------------------------------------------------------------------------------------
class ApiKeys:
    """Client keys by name, stored as SHA-256 digests (keys are random, 256 bits: a fast hash is
    enough). A running host sees keys created or revoked from the CLI within ``refresh_s``."""

    NAMESPACE = "openai-keys"

    def __init__(self, db: Database, *, refresh_s: float = 5.0) -> None:
        self._store = KeyValueStore(db, self.NAMESPACE)
        self.refresh_s = refresh_s
        self._digests: dict[str, str] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def create(self, name: str) -> str:
        """A new key for ``name`` (replacing its old one); the only time the key is shown."""
        if not CLIENT_NAME.match(name):
            raise ValueError(f"{name!r}: a key name is 1-64 letters, digits, '.', '_' or '-'")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        await self._store.set(name, {"sha256": _digest(key), "created": datetime.now(UTC).isoformat()})
        self._loaded_at = float("-inf")
        return key

    async def revoke(self, name: str) -> bool:
        known = await self._store.get(name) is not None
        await self._store.delete(name)
        self._loaded_at = float("-inf")
        return known

    async def names(self) -> list[tuple[str, str]]:
        """(name, created) of every key."""
        return [
            (name, (await self._store.get(name) or {}).get("created", ""))
            for name in await self._store.keys()
        ]

    async def client(self, key: str) -> str | None:
        """The name of the client holding ``key``, or None."""
        if time.monotonic() - self._loaded_at > self.refresh_s:
            async with self._lock:
                if time.monotonic() - self._loaded_at > self.refresh_s:
                    names = await self._store.keys()
                    self._digests = {n: (await self._store.get(n) or {}).get("sha256", "") for n in names}
                    self._loaded_at = time.monotonic()
        presented = _digest(key)
        found = None
        for name, digest in self._digests.items():  # every digest compared: the time says nothing
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        return found


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# -- the HTTP face ---------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
        param: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.param, self.headers = param, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A 404 or 405 the routing answers under ``/v1`` (an endpoint this server lacks), shaped as
    OpenAI's API shapes it, so clients show the message instead of failing to read the body."""
    message = f"Invalid URL ({request.method} {request.url.path})" if exc.status_code == 404 else exc.detail
    return ApiError(exc.status_code, str(message), headers=exc.headers).response()


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[_Part] | None = None

    def plain(self) -> str:
        if isinstance(self.content, list):  # text parts; images and audio are not read
            return "\n".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens, ...: the bot's own settings
    model: str
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    user: str | None = Field(None, max_length=256)


def conversation_of(request: ChatRequest, client: str) -> Conversation:
    said = [m for m in request.messages if m.role in ("user", "assistant")]
    if not said or said[-1].role != "user" or request.messages[-1].role != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    text = said[-1].plain()
    if not text.strip():
        raise ApiError(400, "the last user message has no text", param="messages")
    earlier = tuple(("human" if m.role == "user" else "ai", m.plain()) for m in said[:-1])
    first = next(m for m in said if m.role == "user")  # not a greeting every chat of a front end opens with
    return Conversation(client, text, earlier, first=first.plain(), user=request.user)


class KeyLimiter:
    """Requests per API key, counted in the event loop (the host's moving windows)."""

    def __init__(self, rules: str) -> None:
        self._windows: list[MovingWindow] = windows(rules)

    def check(self, client: str) -> MovingWindow | None:
        """Count one request; the rule it would break (not counted then), or None."""
        now = time.monotonic()
        for window in self._windows:
            if not window.test(client, now):
                return window
        for window in self._windows:
            window.hit(client, now)
        return None


def openai_router(
    channels: dict[str, OpenAIChannel], keys: ApiKeys, *, key_rate: str = "60/minute", max_body: int = 262144
) -> APIRouter:
    """``GET /v1/models`` and ``POST /v1/chat/completions`` for the bots in ``channels`` (by model id)."""
    router = APIRouter(prefix="/v1")
    limiter = KeyLimiter(key_rate)
    created = int(time.time())

    def model_card(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": created, "owned_by": "persona-bots"}

    async def authorised(request: Request) -> str:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        client = await keys.client(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
        if client is None:
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key"
            )
        return client

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            raise ApiError(413, f"the request is larger than {max_body} bytes", code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise ApiError(413, f"the request is larger than {max_body} bytes", code="request_too_large")
        return bytes(body)

    def parse(body: bytes) -> ChatRequest:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
        except RecursionError:  # "[[[[...": the decoder gives up; a 400, not a 500
            raise ApiError(400, "the body's JSON is nested too deeply", code="invalid_json") from None
        try:
            return ChatRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or None
            raise ApiError(400, f"{where or 'body'}: {first['msg']}", param=where) from None

    def channel_for(model: str) -> OpenAIChannel:
        channel = channels.get(model)
        if channel is None:
            raise ApiError(
                404, f"The model '{model}' does not exist (models: {', '.join(sorted(channels)) or 'none'})",
                code="model_not_found", param="model",
            )  # fmt: skip
        return channel

    @router.get("/models")
    async def list_models(request: Request) -> Response:
        try:
            await authorised(request)
        except ApiError as exc:
            return exc.response()
        return JSONResponse({"object": "list", "data": [model_card(m) for m in sorted(channels)]})

    @router.get("/models/{model}")
    async def get_model(model: str, request: Request) -> Response:
        try:
            await authorised(request)
            channel_for(model)
        except ApiError as exc:
            return exc.response()
        return JSONResponse(model_card(model))

    @router.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            client = await authorised(request)
            broken = limiter.check(client)
            if broken is not None:
                raise ApiError(
                    429, f"rate limit for this key reached ({broken})", "rate_limit_error",
                    code="rate_limit_exceeded", headers={"Retry-After": str(max(1, round(broken.seconds)))},
                )  # fmt: skip
            chat = parse(await body_of(request))
            channel = channel_for(chat.model)
            conversation = conversation_of(chat, client)
            try:
                exchange = await channel.ask(conversation, stream=chat.stream)
            except NotAccepted:
                raise ApiError(
                    503, "the bot is stopping; try again", "server_error", code="unavailable"
                ) from None
            except Exception:
                log.exception("channel %s: a request could not be handed to the bot", channel.name)
                raise ApiError(503, "the request could not be recorded; try again", "server_error") from None
        except ApiError as exc:
            return exc.response()
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        if chat.stream:
            return StreamingResponse(
                _sse(exchange, completion, chat.model, channel.timeout_s), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )  # fmt: skip
        try:
            text = await _collect(exchange, channel.timeout_s)
        except TimeoutError:
            return ApiError(504, "the bot did not answer in time", "server_error", code="timeout").response()
        return JSONResponse(
            {
                "id": completion,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": _finish(text),
                    }
                ],
            }
        )

    return router


def _finish(text: str) -> str:
    """ "stop"; "content_filter" when the bot sent nothing (a ban, a limit already announced, a
    plugin that kept the message)."""
    return "stop" if text else "content_filter"


async def _pieces(exchange: _Exchange, timeout_s: float) -> AsyncIterator[str]:
    """What the bot sends, until handling is over; TimeoutError past ``timeout_s`` in all (each
    wait is bounded on its own, so a slow reader of the stream is never cancelled midway)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (piece := await asyncio.wait_for(exchange.pieces.get(), deadline - loop.time())) is not None:
        yield piece


async def _collect(exchange: _Exchange, timeout_s: float) -> str:
    return "".join([piece async for piece in _pieces(exchange, timeout_s)])


async def _sse(exchange: _Exchange, completion: str, model: str, timeout_s: float) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        body = {
            "id": completion,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    said = ""
    try:
        async for piece in _pieces(exchange, timeout_s):
            said += piece
            yield chunk({"content": piece})
    except TimeoutError:  # the status is sent already: an error event, as OpenAI's API sends one
        log.warning("openai: a streamed answer did not finish within %.0fs", timeout_s)
        error = {"message": "the bot did not answer in time", "type": "server_error", "code": "timeout"}
        yield f"data: {json.dumps({'error': {**error, 'param': None}})}\n\n"
        return
    yield chunk({}, _finish(said))
    yield "data: [DONE]\n\n"
