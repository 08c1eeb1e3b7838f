"""The OneBot v11 channel: a reverse WebSocket server that QQ and WeChat bridges connect to.

Community bridges (go-cqhttp, NapCat, Lagrange.OneBot for QQ; OneBot bridges for personal WeChat)
log in as a personal account and speak OneBot v11. In reverse WebSocket mode the bridge is the
client: it connects to ``ws://{listen}:{port}{path}`` with ``X-Self-ID``, ``X-Client-Role:
Universal`` and the access token (``Authorization: Bearer <t>`` from NapCat, ``Token <t>`` from
go-cqhttp, or ``?access_token=``). Events arrive as JSON frames (``post_type`` message, meta_event,
notice, request); actions go back on the same socket as ``{"action", "params", "echo"}`` and are
answered with the same ``echo`` and ``status`` ok/async/failed.

Messages come as segment arrays or as CQ-code strings (go-cqhttp's default); both are read. One
bridge connection is live at a time: a new one replaces the old. OneBot has no acknowledgement
and no redelivery of its own; a message a bridge sends twice carries the same ``message_id`` and
is dropped by the host's inbox. Replies wait a short while (``reconnect_wait``) for a bridge
that is away, then fail with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from bots.core.adapter import Capabilities, EventSink
from bots.core.config import ConfigError, channel_options
from bots.core.events import (
    Attachment,
    ChannelKind,
    ChannelRef,
    Mention,
    MessageEvent,
    Outbound,
    ReplyTo,
    Segment,
    SentRef,
    UserRef,
)

log = logging.getLogger("bots.adapters.onebot")
# QQ's own accounts that post into groups (system notices, the official group manager bot): bots
SYSTEM_ACCOUNTS = frozenset({"10000", "2854196310"})

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
GROUP, PRIVATE = "group", "private"  # channel ids are "group:<group_id>" and "private:<user_id>"
REPLY_LOOKUP_S = 3.0  # longest wait for get_msg when a reply's author is not known yet
KNOWN_MESSAGES = 5000  # recent message id -> author id, to tell replies to the bot without get_msg
MAX_HANDOVER = 100  # message events handed over together at most (as a Telegram getUpdates batch)


class OneBotOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "onebot" may set."""

    model_config = ConfigDict(extra="forbid")
    # the prefix of canonical ids: "qq" (go-cqhttp, NapCat, Lagrange) or "wechat" for WeChat bridges
    platform: str = Field("qq", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    listen: str = "127.0.0.1"  # where the bridge connects; "0.0.0.0" when it runs on another machine
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    path: str = Field("/onebot/v11/ws", pattern=r"^/[A-Za-z0-9_./~-]*$")
    token_env: str = Field("ONEBOT_ACCESS_TOKEN", pattern=_ENV_NAME)
    require_token: bool = True  # off: the token is optional, and then only on a loopback address
    max_length: int = Field(2000, ge=20, le=20000)  # characters per message; longer answers are split
    action_timeout: float = Field(10.0, gt=0, le=120)  # seconds the bridge has to answer an action
    reconnect_wait: float = Field(15.0, ge=0, le=600)  # a reply waits this long for an absent bridge
    ping_interval: float | None = Field(30.0, gt=0)  # WebSocket pings that find a dead connection


class OneBotError(RuntimeError):
    """An action the bridge did not carry out: refused (``retcode``), unanswered, or no bridge."""

    def __init__(self, message: str, *, action: str = "", retcode: int | None = None) -> None:
        super().__init__(message)
        self.action = action
        self.retcode = retcode


@dataclass(eq=False)
class _Bridge:
    """One bridge connection: its socket and the actions waiting for an answer on it."""

    ws: web.WebSocketResponse
    remote: str
    self_id: str = ""  # from the X-Self-ID header
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # login info asked (and maybe known)
    online: bool | None = None  # the account state the last heartbeat reported
    broken: bool = False  # a write failed: the socket is closing even if aiohttp does not say so yet

    @property
    def open(self) -> bool:
        return not self.ws.closed and not self.broken

    def resolve(self, response: dict[str, Any]) -> bool:
        future = self.pending.pop(str(response.get("echo")), None)
        if future is None or future.done():
            return False
        future.set_result(response)
        return True

    def fail_pending(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the bridge disconnected before answering"))
        self.pending.clear()


class _NotWritten(Exception):
    """The action frame could not be written: sending it on the next connection is safe."""


class OneBotAdapter:
    """A QQ or WeChat account behind a OneBot v11 bridge (reverse WebSocket; the bridge dials in)."""

    def __init__(self, name: str, settings: OneBotOptions, token: str | None = None) -> None:
        self.name = name
        self.settings = settings
        self.platform = settings.platform
        self.capabilities = Capabilities(max_length=settings.max_length, length_unit="chars")
        self.self_id = ""  # the bridge's account (X-Self-ID, then get_login_info)
        self.self_name = ""  # its nickname
        self.port: int | None = None  # the bound port once started
        self.connections = 0  # bridge connections accepted so far
        self.last_heartbeat: float | None = None  # loop time of the last heartbeat meta event
        self._token = token
        self._stopping = False
        self._sink: EventSink | None = None
        self._runner: web.AppRunner | None = None
        self._bridge: _Bridge | None = None  # the live connection
        self._open: set[_Bridge] = set()  # every connection not closed yet (closed at stop)
        self._connected = asyncio.Event()
        self._events: asyncio.Queue[tuple[_Bridge, dict[str, Any]]] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._echoes = itertools.count(1)
        self._authors: OrderedDict[str, str] = OrderedDict()  # message id -> author id
        self._names: OrderedDict[str, str] = OrderedDict()  # user id -> display name (for @mentions)

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> OneBotAdapter:
        settings = channel_options(OneBotOptions, name, "onebot", options)
        purpose = f"channel {name} (onebot access token)"
        if settings.require_token:
            token: str | None = secrets.require(settings.token_env, purpose).get_secret_value()
        else:
            secret = secrets.get(settings.token_env)
            token = secret.get_secret_value() if secret is not None else None
            if token is None and not _is_loopback(settings.listen):
                raise ConfigError(
                    f"channel {name} (onebot): listening on {settings.listen} without an access token "
                    f"would let anyone on the network speak as the bridge; set {settings.token_env} "
                    "(and the same token in the bridge), or listen on 127.0.0.1"
                )
        return cls(name, settings, token)

    @property
    def url(self) -> str:
        """Where the bridge connects (``ws://host:port/path``), once started."""
        return f"ws://{_url_host(self.settings.listen)}:{self.port}{self.settings.path}"

    @property
    def connected(self) -> bool:
        return self._bridge is not None and self._bridge.open

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, sink: EventSink) -> None:
        """Listen for the bridge and return; the bridge may connect now or later."""
        self._sink = sink
        self._stopping = False
        self._events = asyncio.Queue()  # nothing left over from an earlier run
        settings = self.settings
        app = web.Application()
        app.router.add_get(settings.path, self._on_connect)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, settings.listen, settings.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"channel {self.name} (onebot): cannot listen on {settings.listen}:{settings.port} "
                f"({exc.strerror or exc}); pick another port"
            ) from None
        self.port = int(self._runner.addresses[0][1])
        self._consumer = asyncio.create_task(self._consume(), name=f"onebot-{self.name}")
        log.info("channel %s: waiting for a OneBot bridge at %s", self.name, self.url)

    async def stop(self) -> None:
        self._stopping = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None and consumer is not asyncio.current_task():
            consumer.cancel()
            await asyncio.wait({consumer}, timeout=5)
        for bridge in list(self._open):
            await _close(bridge, WSCloseCode.GOING_AWAY, b"bot stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._bridge = None
        self._connected.clear()

    # -- the bridge's connection ---------------------------------------------------------------
    async def _on_connect(self, request: web.Request) -> web.StreamResponse:
        if self._stopping:
            return web.Response(status=503, text="the bot is stopping")
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(heartbeat=self.settings.ping_interval, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        bridge = _Bridge(ws, request.remote or "?", request.headers.get("X-Self-ID", "").strip())
        self._open.add(bridge)
        previous, self._bridge = self._bridge, bridge
        self.connections += 1
        if bridge.self_id:
            self.self_id = bridge.self_id
        if previous is not None and previous.open:
            log.warning(
                "channel %s: a new bridge connection from %s replaces the one from %s",
                self.name, bridge.remote, previous.remote,
            )  # fmt: skip
            self._spawn(_close(previous, WSCloseCode.POLICY_VIOLATION, b"replaced by a new connection"))
        log.info("channel %s: OneBot bridge connected from %s (account %s)", self.name, bridge.remote,
                 bridge.self_id or "?")  # fmt: skip
        self._connected.set()
        self._spawn(self._login(bridge))
        try:
            async for frame in ws:
                if frame.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self._on_frame(bridge, frame.data)
        finally:
            self._open.discard(bridge)
            bridge.fail_pending()
            bridge.ready.set()
            if self._bridge is bridge:
                self._bridge = None
                self._connected.clear()
                if not self._stopping:
                    log.warning("channel %s: the OneBot bridge disconnected; waiting for it to reconnect",
                                self.name)  # fmt: skip
        return ws

    def _refusal(self, request: web.Request) -> web.Response | None:
        """401 without a token, 403 with a wrong one (as OneBot implementations answer)."""
        if self._token is not None:
            given = _presented_token(request)
            if not given:
                log.warning("channel %s: bridge connection from %s without an access token; refused",
                            self.name, request.remote)  # fmt: skip
                return web.Response(status=401, text="access token required")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), self._token.encode()):
                log.warning("channel %s: bridge connection from %s with a wrong access token; refused",
                            self.name, request.remote)  # fmt: skip
                return web.Response(status=403, text="wrong access token")
        role = request.headers.get("X-Client-Role", "Universal").strip()
        if role.lower() != "universal":
            log.warning(
                "channel %s: a bridge connected as %r; set it to one Universal reverse WebSocket "
                "(not separate API and Event connections); refused", self.name, role[:20],
            )  # fmt: skip
            return web.Response(status=400, text="only X-Client-Role: Universal is supported")
        return None

    async def _login(self, bridge: _Bridge) -> None:
        """Ask the bridge who it is logged in as; events wait for this (their @names need it)."""
        try:
            info = await self._call(bridge, "get_login_info", {})
            if not isinstance(info, dict) or info.get("user_id") in (None, ""):
                raise ValueError("no user_id in the answer")
            self.self_id = str(info["user_id"])
            self.self_name = str(info.get("nickname") or "")
            log.info("channel %s: the bridge is logged in as %s (%s)", self.name, self.self_name,
                     self.self_id)  # fmt: skip
        except Exception as exc:
            log.warning(
                "channel %s: get_login_info failed (%s); going on with account %s",
                self.name, _describe(exc), self.self_id or "?",
            )  # fmt: skip
        finally:
            bridge.ready.set()

    def _on_frame(self, bridge: _Bridge, data: str | bytes) -> None:
        """One frame: an answer to an action, or an event (message events queue up in order)."""
        try:
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            log.warning("channel %s: a frame that is not JSON skipped (%d bytes)", self.name, len(data))
            return
        if not isinstance(payload, dict):
            log.warning("channel %s: a frame that is not an object skipped (%s)", self.name,
                        type(payload).__name__)  # fmt: skip
            return
        post_type = payload.get("post_type")
        if post_type == "message":
            self._events.put_nowait((bridge, payload))
        elif post_type == "meta_event":
            self._on_meta(bridge, payload)
        elif post_type in ("notice", "request", "message_sent"):
            log.debug("channel %s: %s event ignored", self.name, post_type)
        elif post_type is None and ("echo" in payload or "status" in payload):
            if not bridge.resolve(payload):
                log.debug("channel %s: an answer to no pending action ignored", self.name)
        else:
            log.warning("channel %s: an event with unknown post_type %r skipped", self.name,
                        str(post_type)[:32])  # fmt: skip

    def _on_meta(self, bridge: _Bridge, payload: dict[str, Any]) -> None:
        kind = payload.get("meta_event_type")
        if kind == "heartbeat":
            self.last_heartbeat = asyncio.get_running_loop().time()
            status = payload.get("status")
            online = status.get("online") if isinstance(status, dict) else None
            if isinstance(online, bool) and online != bridge.online:
                if not online:
                    log.warning(
                        "channel %s: the bridge reports the account offline (logged out, kicked or "
                        "blocked by risk control?)", self.name,
                    )  # fmt: skip
                elif bridge.online is False:
                    log.info("channel %s: the account is online again", self.name)
                bridge.online = online
        elif kind == "lifecycle":
            log.info("channel %s: bridge lifecycle event %r", self.name, str(payload.get("sub_type"))[:20])
        else:
            log.debug("channel %s: meta event %r ignored", self.name, str(kind)[:32])

    # -- inbound -------------------------------------------------------------------------------
    async def _consume(self) -> None:
        """Hand message events to the host in the order the bridges sent them: what has arrived
        is translated in that order, then handed over concurrently (one commit for all, not one
        each), started in that order: each takes its place in its chat's queue as it starts."""
        assert self._sink is not None
        while True:
            arrived = [await self._events.get()]
            while not self._events.empty() and len(arrived) < MAX_HANDOVER:
                arrived.append(self._events.get_nowait())
            events = []
            for bridge, payload in arrived:
                try:
                    event = await self._translated(bridge, payload)
                except Exception:
                    log.exception("channel %s: handing over message %s failed", self.name, _ids_of(payload))
                    continue
                if event is not None:
                    events.append(event)
            outcomes = await asyncio.gather(*(self._sink(event) for event in events), return_exceptions=True)
            for event, outcome in zip(events, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    # OneBot never sends an event again by itself: say that it is lost
                    log.error("channel %s: message %s was not accepted (%s)", self.name, event.id,
                              _describe(outcome))  # fmt: skip
                elif isinstance(outcome, BaseException):
                    raise outcome

    async def _translated(self, bridge: _Bridge, payload: dict[str, Any]) -> MessageEvent | None:
        """The event in ``payload`` once its bridge is ready; None when it is not for the host."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation (stop)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.action_timeout):
                await bridge.ready.wait()
        try:
            return await self._translate(bridge, payload)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("channel %s: malformed message event skipped (%s, %s)", self.name,
                        type(exc).__name__, _ids_of(payload))  # fmt: skip
            return None

    async def _translate(self, bridge: _Bridge, payload: dict[str, Any]) -> MessageEvent | None:
        message_type = payload["message_type"]
        if message_type not in (GROUP, PRIVATE):
            log.debug("channel %s: %s message ignored", self.name, str(message_type)[:20])
            return None
        message_id = _local_id(payload["message_id"])
        user_id = _local_id(payload["user_id"])
        self_id = _local_id(payload.get("self_id") or self.self_id or bridge.self_id)
        sender = payload.get("sender") or {}
        if not isinstance(sender, dict):
            raise TypeError("sender is not an object")
        author_name = _sender_name(sender, payload.get("anonymous"))
        if message_type == GROUP:
            group_id = _local_id(payload["group_id"])
            channel = ChannelRef(self.platform, f"{GROUP}:{group_id}", ChannelKind.GROUP,
                                 name=str(payload.get("group_name") or ""))  # fmt: skip
        else:
            channel = ChannelRef(self.platform, f"{PRIVATE}:{user_id}", ChannelKind.DM, name=author_name)
        self_name = self.self_name if self_id == self.self_id else ""
        parsed = read_message(payload["message"], self_id, self_name or self_id, self._names)
        segments: list[Segment] = list(parsed.mentions)
        if parsed.reply_id is not None:
            author = await self._reply_author(bridge, parsed.reply_id)
            segments.append(ReplyTo(parsed.reply_id, author_id=author))
        segments.extend(parsed.attachments)
        self._remember(self._authors, message_id, user_id)
        if author_name:
            self._remember(self._names, user_id, author_name)
        return MessageEvent(
            platform=self.platform,
            message_id=message_id,
            author=UserRef(self.platform, user_id, name=author_name, is_bot=user_id in SYSTEM_ACCOUNTS),
            channel=channel,
            text=parsed.text,
            self_id=self_id,
            self_name=self_name,
            segments=tuple(segments),
            timestamp=_timestamp(payload.get("time")),
            raw=payload,
        )

    async def _reply_author(self, bridge: _Bridge, message_id: str) -> str:
        """Who wrote the message replied to: from recent traffic, else asked with get_msg."""
        known = self._authors.get(message_id)
        if known is not None:
            return known
        if not bridge.open:
            return ""
        try:
            timeout = min(REPLY_LOOKUP_S, self.settings.action_timeout)
            data = await self._call(bridge, "get_msg", {"message_id": _id_param(message_id)}, timeout)
            sender = data.get("sender") if isinstance(data, dict) else None
            author = sender.get("user_id") if isinstance(sender, dict) else None
            if author is None and isinstance(data, dict):
                author = data.get("user_id")
        except Exception as exc:
            log.debug("channel %s: get_msg %s failed (%s)", self.name, message_id, _describe(exc))
            return ""
        if author in (None, ""):
            return ""
        self._remember(self._authors, message_id, str(author))
        return str(author)

    @staticmethod
    def _remember(cache: OrderedDict[str, str], key: str, value: str) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > KNOWN_MESSAGES:
            cache.popitem(last=False)

    # -- outbound ------------------------------------------------------------------------------
    async def send(self, outbound: Outbound) -> SentRef:
        """Send one message (the core has split it); ``reply_to`` becomes a reply segment."""
        kind, target = _split_channel_id(outbound.target.id)
        message: list[dict[str, Any]] = []
        if outbound.reply_to:
            message.append({"type": "reply", "data": {"id": outbound.reply_to}})
        message.append({"type": "text", "data": {"text": outbound.text}})
        if kind == GROUP:
            action, params = "send_group_msg", {"group_id": _id_param(target), "message": message}
        else:
            action, params = "send_private_msg", {"user_id": _id_param(target), "message": message}
        data = await self.call(action, params)
        found = data.get("message_id") if isinstance(data, dict) else None
        message_id = "" if found is None else str(found)  # "" when the bridge answered "async"
        if message_id and self.self_id:
            self._remember(self._authors, message_id, self.self_id)
        return SentRef(self.platform, outbound.target.id, message_id)

    async def call(self, action: str, params: dict[str, Any] | None = None) -> Any:
        """Run a OneBot action and return its ``data``; waits up to ``reconnect_wait`` for a bridge.

        Raises :class:`OneBotError` when no bridge is connected in time, when it refuses the action
        (status "failed"), or when it does not answer within ``action_timeout``.
        """
        if self._runner is None:
            raise RuntimeError(f"channel {self.name} (onebot) is not started; cannot run {action}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reconnect_wait
        while True:
            bridge = self._bridge
            if bridge is None or not bridge.open:
                bridge = await self._wait_for_bridge(action, deadline - loop.time())
            try:
                return await self._call(bridge, action, params or {})
            except _NotWritten:
                bridge.broken = True  # the connection is closing; the next one gets it
                await asyncio.sleep(0.05)  # let the closing connection's handler run

    async def _wait_for_bridge(self, action: str, remaining: float) -> _Bridge:
        log.info("channel %s: no bridge connected; %s waits for one", self.name, action)
        try:
            async with asyncio.timeout(max(remaining, 0)):
                while True:
                    bridge = self._bridge
                    if bridge is not None and bridge.open:
                        return bridge
                    if self._connected.is_set():
                        await asyncio.sleep(0.05)  # the live connection is closing; not yet cleared
                    else:
                        await self._connected.wait()
        except TimeoutError:
            raise OneBotError(
                f"channel {self.name} (onebot): no bridge connected within "
                f"{self.settings.reconnect_wait:g}s; {action} not sent "
                f"(is the bridge running and pointed at {self.url}?)",
                action=action,
            ) from None

    async def _call(
        self, bridge: _Bridge, action: str, params: dict[str, Any], timeout: float | None = None
    ) -> Any:
        echo = f"{self.name}-{next(self._echoes)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        bridge.pending[echo] = future
        timeout = timeout or self.settings.action_timeout
        try:
            frame = json.dumps({"action": action, "params": params, "echo": echo}, ensure_ascii=False)
            try:
                await bridge.ws.send_str(frame)
            except (ConnectionError, RuntimeError) as exc:
                raise _NotWritten(action) from exc
            try:
                async with asyncio.timeout(timeout):
                    response = await future
            except TimeoutError:
                raise OneBotError(
                    f"channel {self.name} (onebot): the bridge did not answer {action} within {timeout:g}s "
                    "(it may still have carried it out)", action=action,
                ) from None  # fmt: skip
            except ConnectionError:
                raise OneBotError(
                    f"channel {self.name} (onebot): the bridge disconnected before answering {action} "
                    "(it may or may not have carried it out)", action=action,
                ) from None  # fmt: skip
        finally:
            bridge.pending.pop(echo, None)
        return _result(self.name, action, response)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# -- reading messages ---------------------------------------------------------------------------
@dataclass
class ParsedMessage:
    text: str
    mentions: list[Mention]
    attachments: list[Attachment]
    reply_id: str | None


# Names of common QQ faces (the ``face`` segment's id), shown as "[微笑]" like WeChat's "[Smile]";
# ids not listed read "[face:ID]".
FACE_NAMES = {
    0: "惊讶", 1: "撇嘴", 2: "色", 3: "发呆", 4: "得意", 5: "流泪", 6: "害羞", 7: "闭嘴", 8: "睡",
    9: "大哭", 10: "尴尬", 11: "发怒", 12: "调皮", 13: "呲牙", 14: "微笑", 15: "难过", 16: "酷",
    18: "抓狂", 19: "吐", 20: "偷笑", 21: "可爱", 22: "白眼", 23: "傲慢", 24: "饥饿", 25: "困",
    26: "惊恐", 27: "流汗", 28: "憨笑", 29: "悠闲", 30: "奋斗", 32: "疑问", 33: "嘘", 34: "晕",
    38: "敲打", 39: "再见", 41: "发抖", 42: "爱情", 43: "跳跳", 46: "猪头", 49: "拥抱", 53: "蛋糕",
    60: "咖啡", 63: "玫瑰", 66: "爱心", 74: "太阳", 75: "月亮", 76: "赞", 78: "握手", 79: "胜利",
    85: "飞吻", 89: "西瓜", 96: "冷汗", 97: "擦汗", 98: "抠鼻", 99: "鼓掌", 100: "糗大了",
    101: "坏笑", 102: "左哼哼", 103: "右哼哼", 104: "哈欠", 106: "委屈", 109: "左亲亲", 111: "可怜",
    116: "示爱", 118: "抱拳", 120: "拳头", 122: "爱你", 123: "NO", 124: "OK", 125: "转圈",
    129: "挥手", 144: "喝彩", 147: "棒棒糖", 171: "茶", 173: "泪奔", 174: "无奈", 175: "卖萌",
    176: "小纠结", 178: "斜眼笑", 179: "doge", 180: "惊喜", 181: "骚扰", 182: "笑哭", 183: "我最美",
    201: "点赞", 212: "托腮", 262: "脑阔疼", 263: "沧桑", 264: "捂脸", 265: "辣眼睛", 266: "哦哟",
    267: "头秃", 268: "问号脸", 269: "暗中观察", 270: "emm", 271: "吃瓜", 272: "呵呵哒",
    273: "我酸了", 277: "汪汪", 281: "无眼笑", 282: "敬礼", 284: "面无表情", 285: "摸鱼", 287: "哦",
    289: "睁眼", 293: "摸锦鲤", 294: "期待", 297: "拜谢", 299: "牛啊", 306: "牛气冲天", 307: "喵喵",
    314: "仔细分析", 315: "加油", 318: "崇拜", 319: "比心", 320: "庆祝", 322: "拒绝", 324: "吃糖",
    326: "生气",
}  # fmt: skip
# Segments with no text of their own: (attachment kind or None, placeholder in the text)
_MEDIA = {
    "image": ("image", "[image]"),
    "record": ("audio", "[voice]"),
    "video": ("video", "[video]"),
    "file": ("file", "[file]"),
    "json": (None, "[card]"),
    "xml": (None, "[card]"),
    "forward": (None, "[forward]"),
    "share": (None, "[link]"),
    "music": (None, "[music]"),
    "location": (None, "[location]"),
    "contact": (None, "[contact]"),
    "dice": (None, "[dice]"),
    "rps": (None, "[rock-paper-scissors]"),
    "poke": (None, "[poke]"),
    "shake": (None, "[poke]"),
    "markdown": (None, "[card]"),
}
_CQ_CODE = re.compile(r"\[CQ:([A-Za-z0-9_.-]+)((?:,[^\]]*)?)\]")
_CQ_ESCAPES = {"amp": "&", "#91": "[", "#93": "]", "#44": ","}
_CQ_ESCAPED = re.compile(r"&(amp|#91|#93|#44);")


def unescape_cq(text: str) -> str:
    """Decode CQ escapes (``&amp;`` ``&#91;`` ``&#93;`` ``&#44;``) in one pass."""
    return _CQ_ESCAPED.sub(lambda m: _CQ_ESCAPES[m.group(1)], text)


def parse_cq(message: str) -> list[tuple[str, dict[str, str]]]:
    """A CQ-code string (``hi [CQ:at,qq=10001] [CQ:face,id=14]``) as (type, data) segments."""
    segments: list[tuple[str, dict[str, str]]] = []
    pos = 0
    for match in _CQ_CODE.finditer(message):
        if match.start() > pos:
            segments.append(("text", {"text": unescape_cq(message[pos : match.start()])}))
        data = {}
        for item in match.group(2).split(",")[1:]:
            key, sep, value = item.partition("=")
            if sep:
                data[key.strip()] = unescape_cq(value)
        segments.append((match.group(1), data))
        pos = match.end()
    if pos < len(message):
        segments.append(("text", {"text": unescape_cq(message[pos:])}))
    return segments


def segments_of(message: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (type, data) segments of a OneBot ``message``: a CQ string, an array, or one segment."""
    if isinstance(message, str):
        return list(parse_cq(message))
    if isinstance(message, dict):
        message = [message]
    if not isinstance(message, list):
        raise TypeError(f"message is a {type(message).__name__}")
    segments = []
    for item in message:
        kind, data = item["type"], item.get("data") or {}
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise TypeError("a segment without a string type and an object data")
        segments.append((kind, data))
    return segments


def read_message(
    message: Any, self_id: str, self_name: str, names: dict[str, str] | None = None
) -> ParsedMessage:
    """Text, mentions, attachments and the replied-to id of a OneBot message.

    Mentions read "@name" in the text with the same name as their Mention segment (the bot's own
    is ``self_name``), so the pipeline can strip the bot's own. Emoji codes in the text ("[Grin]",
    "[捂脸]") and typed "@名字" stay as written; a typed "@{self_name}" (WeChat bridges send
    mentions as text) counts as mentioning the bot.
    """
    names = names or {}
    parts: list[str] = []
    mentions: dict[str, Mention] = {}
    attachments: list[Attachment] = []
    reply_id: str | None = None
    for kind, data in segments_of(message):
        if kind == "text":
            text = data["text"]
            if not isinstance(text, str):
                raise TypeError("text segment without text")
            parts.append(text)
        elif kind == "at":
            qq = _local_id(data["qq"])
            if qq == "all":
                parts.append("@全体成员")
                continue
            name = self_name if qq == self_id else str(data.get("name") or names.get(qq) or qq)
            name = name.lstrip("@") or qq
            mentions.setdefault(qq, Mention(qq, name))
            parts.append(f"@{name}")
        elif kind == "reply":
            reply_id = reply_id or _local_id(data["id"])
        elif kind == "face":
            face = str(data.get("id", ""))
            name = FACE_NAMES.get(int(face)) if face.isdigit() else None
            parts.append(f"[{name}]" if name else f"[face:{face or '?'}]")
        elif kind == "mface":  # NapCat's market stickers carry their own caption
            parts.append(str(data.get("summary") or "[sticker]"))
        elif kind in _MEDIA:
            attachment_kind, placeholder = _MEDIA[kind]
            if attachment_kind is not None:
                attachments.append(_attachment(attachment_kind, data))
            parts.append(placeholder)
        else:
            parts.append(f"[{kind}]")
    text = "".join(parts).strip()
    if self_name and self_id not in mentions and _typed_mention(self_name).search(text):
        mentions[self_id] = Mention(self_id, self_name)
    return ParsedMessage(text, list(mentions.values()), attachments, reply_id)


def _typed_mention(name: str) -> re.Pattern[str]:
    # "@name" at a word start, ended by whitespace (WeChat puts U+2005 after it), punctuation or the end
    return re.compile(rf"(?<![^\s])@{re.escape(name)}(?=[\s,:，：]|$)")


def _attachment(kind: str, data: dict[str, Any]) -> Attachment:
    url = str(data.get("url") or "")
    file = str(data.get("file") or "")
    if not url and file.startswith(("http://", "https://")):
        url = file
    name = str(data.get("name") or data.get("file_name") or (file if kind == "file" else ""))
    return Attachment(kind, url=url, name=name)


# -- helpers ------------------------------------------------------------------------------------
def _result(channel: str, action: str, response: dict[str, Any]) -> Any:
    status, retcode = response.get("status"), response.get("retcode")
    if status in ("ok", "async") or (status is None and retcode == 0):
        return response.get("data")
    reason = response.get("wording") or response.get("msg") or response.get("message") or "no reason given"
    hint = " (the bridge does not know this action)" if retcode == 1404 else ""
    raise OneBotError(
        f"channel {channel} (onebot): the bridge refused {action}: "
        f"retcode {retcode}, {str(reason)[:200]}{hint}",
        action=action,
        retcode=retcode if isinstance(retcode, int) else None,
    )


def _presented_token(request: web.Request) -> str:
    """The token in ``Authorization: Bearer|Token <t>`` or the ``access_token`` query parameter."""
    header = request.headers.get("Authorization", "").strip()
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("bearer", "token"):
            return value.strip()
        return header
    return request.query.get("access_token", "").strip()


def _local_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError(f"an id that is a {type(value).__name__}")
    return str(value).strip()


def _id_param(local_id: str) -> int | str:
    """QQ ids go back as numbers; WeChat ids ("wxid_...", "123@chatroom") stay strings."""
    return int(local_id) if re.fullmatch(r"-?\d{1,19}", local_id) else local_id


def _split_channel_id(channel_id: str) -> tuple[str, str]:
    kind, _, target = channel_id.partition(":")
    if kind not in (GROUP, PRIVATE) or not target:
        raise ValueError(f"{channel_id!r} is not a OneBot chat id ('group:<id>' or 'private:<id>')")
    return kind, target


def _sender_name(sender: dict[str, Any], anonymous: Any) -> str:
    if isinstance(anonymous, dict) and anonymous.get("name"):
        return str(anonymous["name"])
    return str(sender.get("card") or sender.get("nickname") or "")


def _timestamp(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return datetime.fromtimestamp(value, UTC)
    return datetime.now(UTC)


def _ids_of(payload: dict[str, Any]) -> str:
    """Where an event came from, for logs: ids only, never its text."""
    ids = {key: payload.get(key) for key in ("message_type", "message_id", "group_id", "user_id")}
    found = [f"{key} {str(value)[:40]}" for key, value in ids.items() if value is not None]
    return ", ".join(found) or "no ids"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, OneBotError) else type(exc).__name__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _close(bridge: _Bridge, code: int, message: bytes) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            await bridge.ws.close(code=code, message=message)
