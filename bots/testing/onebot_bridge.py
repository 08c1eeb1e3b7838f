"""A fake OneBot v11 bridge (go-cqhttp or NapCat) that dials a bot's reverse WebSocket, for tests.

Real bridges log in as a personal QQ or WeChat account and connect to the bot as WebSocket clients.
This one does what they do on the wire, so the real adapter can be tested end to end::

    from bots.testing.onebot_bridge import OneBotBridge, at

    async def test_group(harness, monkeypatch):
        monkeypatch.setenv("ONEBOT_ACCESS_TOKEN", "t0ken")
        adapter = OneBotAdapter.from_config("qq", {"port": 0}, Secrets())
        await harness(adapter=adapter, llm=FakeLLM(default="hello"))
        async with OneBotBridge(adapter.url, token="t0ken") as bridge:
            await bridge.connect()
            event = await bridge.group_message(5001, 42, "hi", at_bot=True)
            sent = await bridge.next_sent()                 # what the bot sent, decoded
            assert sent["text"] == "hello" and sent["reply"] == str(event["message_id"])

The connection, as the bridges make it: headers ``X-Self-ID``, ``X-Client-Role: Universal`` and
the token (``style="go-cqhttp"``: ``Authorization: Token <t>``; ``style="napcat"``: ``Authorization:
Bearer <t>``, and ``Bearer `` with nothing after it when no token is set). A refused handshake
raises :class:`aiohttp.WSServerHandshakeError` with the HTTP status. On open the bridge sends the
lifecycle ``connect`` meta event, then a heartbeat every ``heartbeat_interval`` seconds (5 s, as
both bridges do; ``None``: only when :meth:`OneBotBridge.heartbeat` is called).

The users' side: :meth:`~OneBotBridge.group_message` and :meth:`~OneBotBridge.private_message`
send message events (``message_format="string"``: CQ-code strings, go-cqhttp's default, with CQ
escapes; ``"array"``: segment arrays, NapCat's default) and return them;
:meth:`~OneBotBridge.redeliver` sends an event again (same ``message_id``);
:meth:`~OneBotBridge.send_raw` sends anything (malformed frames included). Segments are built
with :func:`text`, :func:`at`, :func:`reply`, :func:`face` and :func:`image`.

The bot's side: actions are answered with the request's ``echo``, ``status`` ok/failed and
``retcode`` (1404 for an unknown action, 100 for bad parameters): ``send_group_msg``,
``send_private_msg``, ``send_msg`` (an incrementing ``message_id``), ``get_login_info``,
``get_msg`` (any message this bridge saw or sent), ``get_status``, ``get_version_info``.
:meth:`~OneBotBridge.fail_next` and :meth:`~OneBotBridge.delay_next` inject failures and slow
answers. Recorded: :attr:`~OneBotBridge.actions` (every call), :attr:`~OneBotBridge.sent` (the
messages the bot sent, decoded) and :meth:`~OneBotBridge.next_sent`. :meth:`~OneBotBridge.disconnect`
and :meth:`~OneBotBridge.connect` drop and re-establish the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from typing import Any, Literal

import aiohttp
from aiohttp import WSMsgType

JSON = dict[str, Any]
Style = Literal["go-cqhttp", "napcat"]
MessageFormat = Literal["string", "array"]
_VERSIONS = {  # app_name, app_version, User-Agent
    "go-cqhttp": ("go-cqhttp", "v1.2.0", "CQHttp/4.15.0"),
    "napcat": ("NapCat.Onebot", "4.4.0", "NapCat"),
}
_CQ_CODE = re.compile(r"\[CQ:([A-Za-z0-9_.-]+)((?:,[^\]]*)?)\]")
_UNESCAPE = {"&amp;": "&", "&#91;": "[", "&#93;": "]", "&#44;": ","}


# -- segments ------------------------------------------------------------------------------------
def text(value: str) -> JSON:
    return {"type": "text", "data": {"text": value}}


def at(qq: int | str) -> JSON:
    return {"type": "at", "data": {"qq": str(qq)}}


def reply(message_id: int | str) -> JSON:
    return {"type": "reply", "data": {"id": str(message_id)}}


def face(face_id: int) -> JSON:
    return {"type": "face", "data": {"id": str(face_id)}}


def image(url: str, file: str = "") -> JSON:
    return {"type": "image", "data": {"file": file or url.rsplit("/", 1)[-1] or "image.jpg", "url": url}}


def escape_cq(value: str, *, param: bool = False) -> str:
    """CQ escaping: ``&`` ``[`` ``]`` everywhere, and ``,`` inside parameters."""
    value = value.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return value.replace(",", "&#44;") if param else value


def to_cq(segments: list[JSON]) -> str:
    """A segment array as a CQ-code string, the way go-cqhttp posts it by default."""
    out = []
    for segment in segments:
        data = segment.get("data") or {}
        if segment["type"] == "text":
            out.append(escape_cq(str(data.get("text", ""))))
        else:
            params = "".join(f",{key}={escape_cq(str(value), param=True)}" for key, value in data.items())
            out.append(f"[CQ:{segment['type']}{params}]")
    return "".join(out)


def from_cq(message: str) -> list[JSON]:
    """A CQ-code string as a segment array."""
    segments: list[JSON] = []
    pos = 0

    def unescape(value: str) -> str:
        return re.sub(r"&amp;|&#91;|&#93;|&#44;", lambda m: _UNESCAPE[m.group(0)], value)

    for match in _CQ_CODE.finditer(message):
        if match.start() > pos:
            segments.append(text(unescape(message[pos : match.start()])))
        data = {}
        for item in match.group(2).split(",")[1:]:
            key, _, value = item.partition("=")
            data[key] = unescape(value)
        segments.append({"type": match.group(1), "data": data})
        pos = match.end()
    if pos < len(message):
        segments.append(text(unescape(message[pos:])))
    return segments


def plain_text(segments: list[JSON]) -> str:
    return "".join(str((s.get("data") or {}).get("text", "")) for s in segments if s.get("type") == "text")


class ActionFailed(Exception):
    """Answer an action with ``status: failed`` (``retcode`` and go-cqhttp's ``msg``/``wording``)."""

    def __init__(self, retcode: int, msg: str, wording: str = "") -> None:
        super().__init__(msg)
        self.retcode, self.msg, self.wording = retcode, msg, wording or msg


class OneBotBridge:
    """A fake bridge for one account (``self_id``, ``nickname``); see the module docstring."""

    def __init__(
        self,
        url: str = "",
        token: str | None = None,
        *,
        style: Style = "go-cqhttp",
        message_format: MessageFormat | None = None,
        self_id: int | str = 10001,
        nickname: str = "PersonaBot",
        heartbeat_interval: float | None = 5.0,
        send_self_id_header: bool = True,
    ) -> None:
        self.url = url
        self.token = token
        self.style = style
        # go-cqhttp posts CQ strings unless configured otherwise; NapCat posts arrays
        self.message_format: MessageFormat = message_format or ("string" if style == "go-cqhttp" else "array")
        self.self_id = self_id
        self.nickname = nickname
        self.heartbeat_interval = heartbeat_interval
        self.send_self_id_header = send_self_id_header
        self.online = True  # reported in heartbeats
        self.actions: list[tuple[str, JSON]] = []  # every action the bot called, with its params
        self.sent: list[JSON] = []  # messages the bot sent, decoded (see _record_sent)
        self.messages: dict[str, JSON] = {}  # every message seen or sent, by id (for get_msg)
        self.connections = 0
        self._sent_queue: asyncio.Queue[JSON] = asyncio.Queue()
        self._action_events: dict[str, asyncio.Event] = {}
        self._failures: dict[str, list[ActionFailed]] = {}
        self._delays: dict[str, list[float]] = {}
        self._message_ids = itertools.count(1001)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()  # set when the bot closed the connection (or it dropped)
        self.close_code: int | None = None

    async def __aenter__(self) -> OneBotBridge:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the connection ------------------------------------------------------------------------
    def headers(self, token: str | None = None) -> dict[str, str]:
        """The handshake headers this bridge style sends."""
        token = self.token if token is None else token
        headers = {"X-Client-Role": "Universal", "User-Agent": _VERSIONS[self.style][2]}
        if self.send_self_id_header:
            headers["X-Self-ID"] = str(self.self_id)
        if self.style == "napcat":
            headers["Authorization"] = f"Bearer {token or ''}"  # NapCat sends "Bearer " without a token
        elif token:
            headers["Authorization"] = f"Token {token}"
        return headers

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(
        self, url: str | None = None, *, token: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Open the reverse WebSocket (``token``/``headers`` override this bridge's own), send the
        lifecycle ``connect`` event and start heartbeats. Raises WSServerHandshakeError on refusal."""
        if self._session is None:
            raise RuntimeError("use 'async with OneBotBridge(...)' first")
        await self.disconnect()
        self.url = url or self.url
        ws = await self._session.ws_connect(
            self.url, headers=headers if headers is not None else self.headers(token), autoping=True
        )
        self._ws = ws
        self.connections += 1
        self.closed = asyncio.Event()
        self.close_code = None
        await self._send(self._meta("lifecycle", sub_type="connect"))
        self._tasks = [asyncio.create_task(self._read(ws))]
        if self.heartbeat_interval:
            self._tasks.append(asyncio.create_task(self._beat(self.heartbeat_interval)))

    async def disconnect(self) -> None:
        """Close the connection as a stopping bridge does (the bot sees it go away)."""
        tasks = [*self._tasks, *self._answering]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()
        self.closed.set()

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the bot closes the connection; returns the close code."""
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code

    async def heartbeat(self) -> None:
        await self._send(self._meta("heartbeat", status=self._status(),
                                    interval=int((self.heartbeat_interval or 5) * 1000)))  # fmt: skip

    async def _beat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.heartbeat()

    # -- the users' side -----------------------------------------------------------------------
    async def group_message(
        self,
        group_id: int | str,
        user_id: int | str,
        message: str | list[JSON],
        *,
        nickname: str = "Alice",
        card: str = "",
        at_bot: bool = False,
        reply_to: JSON | int | str | None = None,
        message_id: int | str | None = None,
        group_name: str | None = None,
    ) -> JSON:
        """Send a group message event (``at_bot`` puts an @ of the bot first); returns the event."""
        segments = self._segments(message, at_bot, reply_to)
        sender = {"user_id": user_id, "nickname": nickname, "card": card, "role": "member"}
        event = self._message_event("group", user_id, segments, sender, message_id, group_id)
        if group_name is not None:
            event["group_name"] = group_name  # NapCat adds it; go-cqhttp does not
        return await self._post(event)

    async def private_message(
        self,
        user_id: int | str,
        message: str | list[JSON],
        *,
        nickname: str = "Alice",
        reply_to: JSON | int | str | None = None,
        message_id: int | str | None = None,
    ) -> JSON:
        """Send a private (friend) message event; returns the event."""
        segments = self._segments(message, False, reply_to)
        sender = {"user_id": user_id, "nickname": nickname, "sex": "unknown", "age": 0}
        event = self._message_event("private", user_id, segments, sender, message_id)
        event["sub_type"] = "friend"
        return await self._post(event)

    async def redeliver(self, event: JSON) -> JSON:
        """Send ``event`` again, unchanged (same ``message_id``), as a bridge may after a reconnect."""
        await self._send(event)
        return event

    async def send_raw(self, frame: str | JSON | list[Any]) -> None:
        """Send a frame as is: a string goes verbatim (bad JSON too), anything else as JSON."""
        if self._ws is None:
            raise RuntimeError("not connected")
        await self._ws.send_str(frame if isinstance(frame, str) else json.dumps(frame, ensure_ascii=False))

    def set_online(self, online: bool) -> None:
        """What later heartbeats report (``status.online``): False as when the account is logged out."""
        self.online = online

    # -- the bot's side ------------------------------------------------------------------------
    def fail_next(self, action: str, retcode: int = 100, msg: str = "SEND_MSG_API_ERROR",
                  wording: str = "") -> None:  # fmt: skip
        """Answer the next call of ``action`` with ``status: failed``."""
        self._failures.setdefault(action, []).append(ActionFailed(retcode, msg, wording))

    def delay_next(self, action: str, seconds: float) -> None:
        """Answer the next call of ``action`` only after ``seconds``."""
        self._delays.setdefault(action, []).append(seconds)

    async def next_sent(self, timeout: float = 5.0) -> JSON:
        """The next message the bot sent: ``{"action", "message_id", "message_type", "group_id" or
        "user_id", "message" (segments), "text" (its text segments joined), "reply" (id or None)}``."""
        async with asyncio.timeout(timeout):
            return await self._sent_queue.get()

    async def wait_action(self, action: str, timeout: float = 5.0) -> JSON:
        """Wait until the bot has called ``action`` (at least once); returns the last params."""
        event = self._action_events.setdefault(action, asyncio.Event())
        async with asyncio.timeout(timeout):
            await event.wait()
        return next(params for name, params in reversed(self.actions) if name == action)

    def calls(self, action: str) -> list[JSON]:
        return [params for name, params in self.actions if name == action]

    def remember_bot_message(self, group_id: int | str, content: str) -> JSON:
        """A message the bot account sent earlier (e.g. before a restart), for replies to it."""
        message_id = next(self._message_ids)
        stored = self._store(message_id, "group", self.self_id, [text(content)], self.nickname, group_id)
        return stored

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    task = asyncio.create_task(self._answer(ws, json.loads(frame.data)))
                    self._answering.add(task)  # answers may overlap (delay_next)
                    task.add_done_callback(self._answering.discard)
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, request: JSON) -> None:
        action = str(request.get("action", ""))
        params = request.get("params") or {}
        self.actions.append((action, params))
        self._action_events.setdefault(action, asyncio.Event()).set()
        delays = self._delays.get(action)
        if delays:
            await asyncio.sleep(delays.pop(0))
        response: JSON
        try:
            failures = self._failures.get(action)
            if failures:
                raise failures.pop(0)
            data = self._perform(action, params)
            response = {"status": "ok", "retcode": 0, "data": data, "message": "", "wording": ""}
        except ActionFailed as failed:
            response = {"status": "failed", "retcode": failed.retcode, "data": None,
                        "msg": failed.msg, "wording": failed.wording}  # fmt: skip
        if "echo" in request:
            response["echo"] = request["echo"]
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(json.dumps(response, ensure_ascii=False))

    def _perform(self, action: str, params: JSON) -> Any:
        if action == "get_login_info":
            return {"user_id": self.self_id, "nickname": self.nickname}
        if action == "get_status":
            return self._status()
        if action == "get_version_info":
            name, version, _ = _VERSIONS[self.style]
            return {"app_name": name, "app_version": version, "protocol_version": "v11"}
        if action == "get_msg":
            found = self.messages.get(str(params.get("message_id")))
            if found is None:
                raise ActionFailed(100, "MSG_NOT_FOUND", "消息不存在")
            return found
        if action in ("send_group_msg", "send_private_msg", "send_msg"):
            return self._send_message(action, params)
        raise ActionFailed(1404, "API_NOT_FOUND", "API不存在")

    def _send_message(self, action: str, params: JSON) -> JSON:
        kind = {"send_group_msg": "group", "send_private_msg": "private"}.get(action)
        kind = kind or params.get("message_type") or ("group" if "group_id" in params else "private")
        key = "group_id" if kind == "group" else "user_id"
        target = params.get(key)
        if target in (None, "") or isinstance(target, bool):
            raise ActionFailed(100, "INVALID_PARAMS", f"{key} is required")
        message = params.get("message")
        if isinstance(message, str):
            segments = [text(message)] if params.get("auto_escape") else from_cq(message)
        elif isinstance(message, list):
            segments = message
        else:
            raise ActionFailed(100, "INVALID_PARAMS", "message is required")
        if not segments or not any(s.get("type") != "reply" for s in segments):
            raise ActionFailed(100, "EMPTY_MSG_ERROR", "消息体无法打包")
        message_id = next(self._message_ids)
        group = target if kind == "group" else None
        self._store(message_id, kind, self.self_id, segments, self.nickname, group)
        record = {
            "action": action,
            "message_id": message_id,
            "message_type": kind,
            key: target,
            "message": segments,
            "text": plain_text(segments),
            "reply": next((str(s["data"]["id"]) for s in segments if s.get("type") == "reply"), None),
        }
        self.sent.append(record)
        self._sent_queue.put_nowait(record)
        return {"message_id": message_id}

    # -- building events -----------------------------------------------------------------------
    def _segments(
        self, message: str | list[JSON], at_bot: bool, reply_to: JSON | int | str | None
    ) -> list[JSON]:
        segments = [text(message)] if isinstance(message, str) else list(message)
        if at_bot:
            segments = [at(self.self_id), text(" "), *segments]
        if reply_to is not None:
            target = reply_to.get("message_id") if isinstance(reply_to, dict) else reply_to
            segments = [reply(str(target)), *segments]
        return segments

    def _message_event(
        self, kind: str, user_id: int | str, segments: list[JSON], sender: JSON,
        message_id: int | str | None, group_id: int | str | None = None,
    ) -> JSON:  # fmt: skip
        message_id = message_id if message_id is not None else next(self._message_ids)
        encoded = to_cq(segments)
        event: JSON = {
            "time": int(time.time()),
            "self_id": self.self_id,
            "post_type": "message",
            "message_type": kind,
            "sub_type": "normal",
            "message_id": message_id,
            "user_id": user_id,
            "message": encoded if self.message_format == "string" else segments,
            "raw_message": encoded,
            "font": 0,
            "sender": sender,
        }
        if group_id is not None:
            event["group_id"] = group_id
        self._store(message_id, kind, user_id, segments, sender.get("nickname", ""), group_id)
        return event

    async def _post(self, event: JSON) -> JSON:
        await self._send(event)
        return event

    def _store(
        self, message_id: int | str, kind: str, user_id: int | str, segments: list[JSON], nickname: str,
        group_id: int | str | None,
    ) -> JSON:  # fmt: skip
        stored: JSON = {
            "time": int(time.time()),
            "message_type": kind,
            "message_id": message_id,
            "real_id": message_id,
            "sender": {"user_id": user_id, "nickname": nickname},
            "message": segments if self.message_format == "array" else to_cq(segments),
        }
        if group_id is not None:
            stored["group_id"] = group_id
        self.messages[str(message_id)] = stored
        return stored

    def _meta(self, kind: str, **fields: Any) -> JSON:
        return {"time": int(time.time()), "self_id": self.self_id, "post_type": "meta_event",
                "meta_event_type": kind, **fields}  # fmt: skip

    def _status(self) -> JSON:
        return {"app_initialized": True, "app_enabled": True, "app_good": True,
                "online": self.online, "good": self.online}  # fmt: skip

    async def _send(self, payload: JSON) -> None:
        if self._ws is None or self._ws.closed:
            raise RuntimeError("the bridge is not connected; call connect() first")
        await self._ws.send_str(json.dumps(payload, ensure_ascii=False))
