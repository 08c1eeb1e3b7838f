"""A Discord gateway + REST emulator on 127.0.0.1, for driving the real discord.py in tests.

``async with DiscordServer(token="...") as dc, patch_discord_py(dc):`` starts an aiohttp server on
a free port and points discord.py at it. The emulator speaks the parts of the protocol a bot
uses: login (``users/@me``, ``oauth2/applications/@me``), the gateway (HELLO, IDENTIFY, READY,
GUILD_CREATE, heartbeats, RESUME with replay, close codes) and posting messages and typing. It
answers like Discord where a bot depends on it: 401 for a wrong token, close 4004 for a wrong
token on the gateway, 4014 when the Message Content intent is not enabled, 400/50035 for
content over 2,000 characters, and 429s on demand with the headers discord.py needs to retry.

Build traffic with :meth:`DiscordServer.dm` and :meth:`DiscordServer.guild_message`; read what
the bot posted from :attr:`DiscordServer.sent` or ``await dc.next_sent()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

API = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_CONTENT = 2000
INTENT_MESSAGE_CONTENT = 1 << 15
ALL_PERMISSIONS = str((1 << 41) - 1)
MEMBER_PERMISSIONS = "1071698660929"  # the default @everyone permissions of a new server
SEND_MESSAGE = "POST /channels/{channel_id}/messages"
_USER_MENTION = re.compile(r"<@!?(\d+)>")

# channel types
TEXT, DM, PUBLIC_THREAD = 0, 1, 11


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Snowflakes:
    """Discord-shaped ids: milliseconds since 2015 in the top bits, a counter in the low bits."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (1 << 17) | (next(self._counter) % 4096))


@dataclass
class User:
    id: str
    username: str
    global_name: str | None = None
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    @property
    def display_name(self) -> str:
        return self.global_name or self.username

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "public_flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class Channel:
    id: str
    name: str
    type: int = TEXT
    guild_id: str | None = None
    parent_id: str | None = None  # the text channel a thread hangs off
    recipient: User | None = None  # the other side of a DM
    owner_id: str | None = None  # who started a thread

    def payload(self) -> dict[str, Any]:
        if self.type == DM:
            recipients = [self.recipient.payload()] if self.recipient else []
            return {"id": self.id, "type": DM, "last_message_id": None, "recipients": recipients}
        data: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "guild_id": self.guild_id,
            "name": self.name,
            "parent_id": self.parent_id,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        if self.type == PUBLIC_THREAD:
            data |= {
                "owner_id": self.owner_id,
                "message_count": 0,
                "member_count": 1,
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now(),
                    "locked": False,
                },
            }
        else:
            data |= {"position": 0, "permission_overwrites": [], "topic": None, "nsfw": False}
        return data


@dataclass
class Guild:
    id: str
    name: str
    owner: User
    members: list[User]
    channels: list[Channel]
    threads: list[Channel]
    roles: list[dict[str, Any]]
    member_roles: dict[str, list[str]] = field(default_factory=dict)  # user id -> role ids

    def member(self, user: User) -> dict[str, Any]:
        """The ``member`` object Discord attaches to guild messages (no ``user`` inside)."""
        return {
            "roles": self.member_roles.get(user.id, []),
            "nick": None,
            "avatar": None,
            "joined_at": _now(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": self.owner.id,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": self.roles,
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "system_channel_id": self.channels[0].id if self.channels else None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            # GUILD_CREATE extras
            "joined_at": _now(),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [{"user": u.payload(), **self.member(u)} for u in self.members],
            "channels": [c.payload() for c in self.channels],
            "threads": [t.payload() for t in self.threads],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass
class SentMessage:
    """One message the bot posted, as the emulator received and stored it."""

    id: str
    channel_id: str
    content: str
    reply_to: str | None  # message_reference.message_id
    allowed_mentions: dict[str, Any] | None
    mention_everyone: bool  # whether Discord would have pinged @everyone/@here
    pinged_users: list[str]  # user ids Discord would have notified
    body: dict[str, Any]  # the request body
    message: dict[str, Any]  # the message object returned to the bot


@dataclass
class _Failure:
    key: str
    retry_after: float
    is_global: bool


@dataclass
class _Session:
    id: str
    events: list[tuple[int, str]] = field(default_factory=list)  # (seq, frame) for RESUME
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    valid: bool = True
    replay_from: int | None = None  # on the next RESUME, replay from here even if the client had it


class DiscordServer:
    """The emulator: one server ("Test Server") with ``general`` and the thread ``ideas`` in it,
    the bot user ``bot``, and members ``owner``, ``alice`` and ``bob``; DM channels are made on
    first use. Ids are realistic snowflakes, fresh for every instance.

    Inbound: :meth:`dm`, :meth:`guild_message`, :meth:`redeliver`, :meth:`dispatch_raw`,
    :meth:`send_raw_frame`. Gateway: :meth:`drop_connection`, :meth:`wait_identified`,
    :meth:`wait_resumed`. REST: :meth:`fail_next` (429s). What the bot did: :attr:`sent`,
    :meth:`next_sent`, :attr:`typing_calls`, :attr:`requests`.
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        bot_name: str = "tester",
        heartbeat_interval_ms: int = 41_250,
        message_content_intent: bool = True,  # the portal switch; False -> close 4014
        echo_own_messages: bool = True,  # Discord sends the bot its own messages too
    ) -> None:
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.message_content_intent = message_content_intent
        self.echo_own_messages = echo_own_messages
        self.snowflake = Snowflakes()
        self.bot = User(self.snowflake(), bot_name, bot=True)
        self.application_id = self.bot.id  # new applications share the bot user's id
        self.owner = self.user("owner")
        self.alice = self.user("alice", global_name="Alice")
        self.bob = self.user("bob", global_name="Bob")
        self.guild = self._make_guild()
        self.general = self.guild.channels[0]
        self.thread = self.guild.threads[0]
        self.bot_role_id = next(r["id"] for r in self.guild.roles if r.get("tags", {}).get("bot_id"))
        self.dm_channels: dict[str, Channel] = {}  # user id -> DM channel
        self.messages: dict[str, dict[str, Any]] = {}  # every message by id
        self.sent: list[SentMessage] = []
        self.typing_calls: list[str] = []  # channel ids
        self.requests: list[str] = []  # "GET /users/@me", ... in order
        self.rate_limited = 0  # 429s answered
        self.identify_count = 0
        self.seq_by_message: dict[str, int] = {}  # message id -> sequence of its last MESSAGE_CREATE
        self.resume_count = 0
        self.replayed: list[int] = []  # sequence numbers sent again on a RESUME
        self.intents: int | None = None  # from the last IDENTIFY
        self._failures: list[_Failure] = []
        self._nonces: dict[tuple[str, str], dict[str, Any]] = {}  # enforce_nonce: resends are deduped
        self._sessions: dict[str, _Session] = {}
        self._current: _Session | None = None
        self._sent_queue: asyncio.Queue[SentMessage] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> DiscordServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gw", self._gateway)
        app.router.add_get(API + "/users/@me", self._get_me)
        app.router.add_get(API + "/oauth2/applications/@me", self._get_application)
        app.router.add_get(API + "/gateway", self._get_gateway)
        app.router.add_get(API + "/gateway/bot", self._get_gateway_bot)
        app.router.add_post(API + "/channels/{channel_id}/messages", self._post_message)
        app.router.add_post(API + "/channels/{channel_id}/typing", self._post_typing)
        app.router.add_route("*", API + "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gw"

    # -- the world -----------------------------------------------------------------------------
    def user(self, username: str, *, global_name: str | None = None, bot: bool = False) -> User:
        return User(self.snowflake(), username, global_name=global_name, bot=bot)

    def _make_guild(self) -> Guild:
        guild_id = self.snowflake()
        general = Channel(self.snowflake(), "general", TEXT, guild_id=guild_id)
        thread = Channel(
            self.snowflake(),
            "ideas",
            PUBLIC_THREAD,
            guild_id=guild_id,
            parent_id=general.id,
            owner_id=self.owner.id,
        )
        everyone = _role(guild_id, "@everyone", MEMBER_PERMISSIONS, position=0)
        bot_role = _role(self.snowflake(), self.bot.username, ALL_PERMISSIONS, position=1, managed=True)
        bot_role["tags"] = {"bot_id": self.bot.id}
        return Guild(
            id=guild_id,
            name="Test Server",
            owner=self.owner,
            members=[self.bot, self.owner, self.alice, self.bob],
            channels=[general],
            threads=[thread],
            roles=[everyone, bot_role],
            member_roles={self.bot.id: [bot_role["id"]]},
        )

    def dm_channel(self, user: User) -> Channel:
        if user.id not in self.dm_channels:
            self.dm_channels[user.id] = Channel(self.snowflake(), "", DM, recipient=user)
        return self.dm_channels[user.id]

    def channel(self, channel_id: str) -> Channel | None:
        every = [*self.guild.channels, *self.guild.threads, *self.dm_channels.values()]
        return next((c for c in every if c.id == channel_id), None)

    # -- building inbound traffic --------------------------------------------------------------
    def message(
        self,
        channel: Channel,
        author: User,
        content: str,
        *,
        mentions: Sequence[User] = (),
        mention_roles: Sequence[str] = (),
        reply_to: dict[str, Any] | None = None,
        attachments: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """A message object as Discord stores it (gateway extras such as ``member`` added here)."""
        in_guild = channel.guild_id is not None
        data: dict[str, Any] = {
            "id": self.snowflake(),
            "channel_id": channel.id,
            "author": author.payload(),
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [self._mentioned(u, in_guild) for u in mentions],
            "mention_roles": list(mention_roles),
            "attachments": list(attachments),
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if in_guild:
            data["guild_id"] = channel.guild_id
            data["member"] = self.guild.member(author)
        if reply_to is not None:
            data["type"] = 19
            data["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                **({"guild_id": channel.guild_id} if in_guild else {}),
            }
            data["referenced_message"] = {k: v for k, v in reply_to.items() if k != "referenced_message"}
        self.messages[data["id"]] = data
        return data

    def _mentioned(self, user: User, in_guild: bool) -> dict[str, Any]:
        data = user.payload()
        if in_guild:
            data["member"] = self.guild.member(user)
        return data

    async def dm(
        self, user: User, text: str, *, attachments: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """``user`` writes ``text`` to the bot in a DM; returns the MESSAGE_CREATE payload sent."""
        message = self.message(self.dm_channel(user), user, text, attachments=attachments)
        await self.dispatch_raw("MESSAGE_CREATE", message)
        return message

    async def guild_message(
        self,
        channel: Channel,
        user: User,
        text: str,
        *,
        mention_bot: bool = False,
        mention_bot_role: bool = False,
        mentions: Sequence[User] = (),
        reply_to: dict[str, Any] | None = None,
        reply_ping: bool = True,
        attachments: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """``user`` writes in a guild channel or thread; returns the MESSAGE_CREATE payload sent.

        ``mention_bot`` prefixes ``<@bot>`` (as the Discord client does when you pick the bot);
        ``mention_bot_role`` prefixes the bot's managed role ``<@&role>`` instead (a common
        mistake of users, the autocomplete offers both). ``reply_to`` is a message dict (from
        :attr:`messages`, a builder, or ``sent[i].message``); with ``reply_ping`` the replied
        author is in ``mentions`` like Discord's default "@ON" reply.
        """
        users = list(mentions)
        roles: list[str] = []
        prefix = ""
        if mention_bot:
            users.insert(0, self.bot)
            prefix = f"{self.bot.mention} "
        if mention_bot_role:
            roles.append(self.bot_role_id)
            prefix = f"<@&{self.bot_role_id}> " + prefix
        if reply_to is not None and reply_ping:
            replied = self._user_by_id(reply_to["author"]["id"])
            if replied is not None and replied not in users:
                users.append(replied)
        message = self.message(
            channel,
            user,
            prefix + text,
            mentions=users,
            mention_roles=roles,
            reply_to=reply_to,
            attachments=attachments,
        )
        await self.dispatch_raw("MESSAGE_CREATE", message)
        return message

    def _user_by_id(self, user_id: str) -> User | None:
        return next((u for u in self.guild.members if u.id == user_id), None)

    async def redeliver(self, message: dict[str, Any]) -> int:
        """Send the same MESSAGE_CREATE again (what an at-least-once delivery looks like)."""
        return await self.dispatch_raw("MESSAGE_CREATE", message)

    def attachment(self, filename: str, content_type: str, size: int = 1024) -> dict[str, Any]:
        attachment_id = self.snowflake()
        url = f"https://cdn.discordapp.com/attachments/0/{attachment_id}/{filename}"
        return {
            "id": attachment_id,
            "filename": filename,
            "size": size,
            "url": url,
            "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
            "content_type": content_type,
        }

    # -- gateway control -----------------------------------------------------------------------
    async def dispatch_raw(self, event_type: str, data: Any) -> int:
        """Dispatch ``data`` as event ``event_type`` on the current session, as is (malformed
        payloads welcome); buffered for RESUME while the client is away. Returns the sequence."""
        session = self._current
        if session is None:
            raise RuntimeError("no gateway session yet: start the client before dispatching")
        session.seq += 1
        frame = json.dumps({"op": 0, "t": event_type, "s": session.seq, "d": data})
        if event_type == "MESSAGE_CREATE" and isinstance(data, dict) and "id" in data:
            self.seq_by_message[str(data["id"])] = session.seq
        session.events.append((session.seq, frame))
        await self._send(session.ws, frame)
        return session.seq

    async def send_raw_frame(self, text: str) -> None:
        """Send ``text`` as one websocket frame on the live connection (not buffered)."""
        session = self._current
        if session is None or session.ws is None:
            raise RuntimeError("no live gateway connection")
        await self._send(session.ws, text)

    async def drop_connection(self, code: int = 4000, *, replay_from: int | None = None) -> None:
        """Close the live gateway socket; the client reconnects and RESUMEs. With ``replay_from``
        (a sequence number, see :attr:`seq_by_message`) the RESUME replays every event from
        there on, including ones the client already had: delivery is at-least-once."""
        session = self._current
        if session is None or session.ws is None:
            raise RuntimeError("no live gateway connection")
        ws, session.ws = session.ws, None
        session.replay_from = replay_from
        await ws.close(code=code)

    async def wait_identified(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` IDENTIFYs succeeded and READY/GUILD_CREATE went out."""
        await self._wait_for(lambda: self.identify_count >= count, timeout)

    async def wait_resumed(self, count: int = 1, timeout: float = 10.0) -> None:
        await self._wait_for(lambda: self.resume_count >= count, timeout)

    async def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _send(self, ws: web.WebSocketResponse | None, frame: str) -> None:
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away meanwhile
            await ws.send_str(frame)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _Session | None = None
        try:
            hello = {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None}
            await ws.send_str(json.dumps(hello))
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                try:
                    payload = json.loads(frame.data)
                    op, data = payload.get("op"), payload.get("d")
                except (ValueError, AttributeError):
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    session = await self._identify(ws, data)
                elif op == 6:
                    session = await self._resume(ws, data)
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                if ws.close_code in (1000, 1001):  # the client said goodbye: no RESUME later
                    session.valid = False
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        self.intents = int(data.get("intents") or 0)
        if self.intents & INTENT_MESSAGE_CONTENT and not self.message_content_intent:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = _Session(uuid.uuid4().hex, ws=ws)
        self._sessions[session.id] = session
        self._current = session
        ready = {
            "v": 10,
            "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": self.guild.id, "unavailable": True}],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "application": {"id": self.application_id, "flags": self._application_flags()},
            "_trace": ["emulator"],
        }
        await self.dispatch_raw("READY", ready)
        await self.dispatch_raw("GUILD_CREATE", self.guild.payload())
        self.identify_count += 1
        await self._notify()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        session = self._sessions.get(str(data.get("session_id")))
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if session is None or not session.valid:
            await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return None
        old, session.ws = session.ws, ws
        if old is not None and old is not ws:
            await old.close(code=4000)
        after = int(data.get("seq") or 0)
        if session.replay_from is not None:
            after, session.replay_from = min(after, session.replay_from - 1), None
        for seq, frame in session.events:
            if seq > after:
                self.replayed.append(seq)
                await self._send(ws, frame)
        self._current = session
        await self.dispatch_raw("RESUMED", {"_trace": ["emulator"]})
        self.resume_count += 1
        await self._notify()
        return session

    def _application_flags(self) -> int:
        # GATEWAY_MESSAGE_CONTENT (verified bots) or GATEWAY_MESSAGE_CONTENT_LIMITED (under 100 guilds)
        return 1 << 19 if self.message_content_intent else 0

    # -- REST ----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    def _route_key(self, request: web.Request) -> str:
        info = request.match_info.route.resource
        canonical = info.canonical if info is not None else request.path
        return f"{request.method} {canonical.removeprefix(API)}"

    def fail_next(
        self,
        route: str = SEND_MESSAGE,
        *,
        retry_after: float = 0.5,
        times: int = 1,
        is_global: bool = False,
    ) -> None:
        """Answer the next ``times`` requests to ``route`` with 429 Too Many Requests.

        ``route`` is "METHOD /path" with the id placeholders of the API docs
        ("POST /channels/{channel_id}/messages") or with a concrete id.
        """
        self._failures.extend(_Failure(route, retry_after, is_global) for _ in range(times))

    def _take_failure(self, request: web.Request) -> _Failure | None:
        keys = {self._route_key(request), f"{request.method} {request.path.removeprefix(API)}"}
        for failure in self._failures:
            if failure.key in keys:
                self._failures.remove(failure)
                return failure
        return None

    def _guard(self, request: web.Request) -> web.Response | None:
        """Auth and on-demand 429s, shared by every REST route."""
        self.requests.append(self._route_key(request))
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        failure = self._take_failure(request)
        if failure is not None:
            self.rate_limited += 1
            return _rate_limited(failure)
        return None

    async def _get_me(self, request: web.Request) -> web.Response:
        if (refused := self._guard(request)) is not None:
            return refused
        return _json({**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_application(self, request: web.Request) -> web.Response:
        if (refused := self._guard(request)) is not None:
            return refused
        return _json(
            {
                "id": self.application_id,
                "name": self.bot.username,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.payload(),
                "team": None,
                "verify_key": "0" * 64,
                "flags": self._application_flags(),
                "bot": self.bot.payload(),
                "interactions_endpoint_url": None,
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        if (refused := self._guard(request)) is not None:
            return refused
        limit = {"total": 1000, "remaining": 1000 - self.identify_count, "reset_after": 86_400_000}
        return _json(
            {"url": self.gateway_url, "shards": 1, "session_start_limit": limit | {"max_concurrency": 1}}
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        if (refused := self._guard(request)) is not None:
            return refused
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _post_typing(self, request: web.Request) -> web.Response:
        if (refused := self._guard(request)) is not None:
            return refused
        channel_id = request.match_info["channel_id"]
        if self.channel(channel_id) is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        self.typing_calls.append(channel_id)
        await self._notify()
        return web.Response(status=204)

    async def _post_message(self, request: web.Request) -> web.Response:
        if (refused := self._guard(request)) is not None:
            return refused
        channel = self.channel(request.match_info["channel_id"])
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        body = await _read_body(request)
        nonce = (
            (channel.id, str(body.get("nonce"))) if body.get("enforce_nonce") and body.get("nonce") else None
        )
        if nonce in self._nonces:  # a resend of a message Discord already has: the same message back
            return _json(self._nonces[nonce])
        content = str(body.get("content") or "")
        if not content.strip() and not body.get("embeds") and not body.get("attachments"):
            return _json({"message": "Cannot send an empty message", "code": 50006}, 400)
        if len(content) > MAX_CONTENT:
            return _json(
                _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."), 400
            )
        reference = body.get("message_reference") or None
        replied = self.messages.get(str(reference.get("message_id"))) if reference else None
        if reference and replied is None:
            if reference.get("fail_if_not_exists", True):
                return _json(
                    _form_error("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"),
                    400,
                )
            reference = None
        everyone, pinged = _pings(content, body.get("allowed_mentions"), replied)
        message = self.message(
            channel,
            self.bot,
            content,
            mentions=[u for u in (self._user_by_id(i) for i in pinged) if u is not None],
            reply_to=replied,
        )
        message["mention_everyone"] = everyone
        message.pop("member", None)  # REST answers carry no member object
        sent = SentMessage(
            id=message["id"],
            channel_id=channel.id,
            content=content,
            reply_to=replied["id"] if replied else None,
            allowed_mentions=body.get("allowed_mentions"),
            mention_everyone=everyone,
            pinged_users=pinged,
            body=body,
            message=message,
        )
        self.sent.append(sent)
        self._sent_queue.put_nowait(sent)
        if nonce is not None:
            self._nonces[nonce] = message
        if self.echo_own_messages and self._current is not None:
            echo = dict(message)
            if channel.guild_id is not None:
                echo["member"] = self.guild.member(self.bot)
            await self.dispatch_raw("MESSAGE_CREATE", echo)
        return _json(message)

    # -- reading what the bot did --------------------------------------------------------------
    async def next_sent(self, timeout: float = 5.0) -> SentMessage:
        """The next message the bot posts (in order), waiting up to ``timeout`` seconds."""
        return await asyncio.wait_for(self._sent_queue.get(), timeout)

    def take_sent(self) -> list[SentMessage]:
        """Everything posted and not yet taken by :meth:`next_sent`."""
        items = []
        while not self._sent_queue.empty():
            items.append(self._sent_queue.get_nowait())
        return items

    def replies_to(self, message: dict[str, Any]) -> list[SentMessage]:
        return [s for s in self.sent if s.reply_to == message["id"]]

    async def wait_typing(self, channel_id: str, timeout: float = 5.0) -> None:
        await self._wait_for(lambda: channel_id in self.typing_calls, timeout)


def _role(
    role_id: str, name: str, permissions: str, *, position: int, managed: bool = False
) -> dict[str, Any]:
    return {
        "id": role_id,
        "name": name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": permissions,
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def _pings(
    content: str, allowed: dict[str, Any] | None, replied: dict[str, Any] | None
) -> tuple[bool, list[str]]:
    """Who Discord would notify: @everyone/@here and user ids, under ``allowed_mentions``."""
    if allowed is None:  # no allowed_mentions: everything in the content pings, replies too
        parse, explicit, replied_user = {"everyone", "users", "roles"}, set(), True
    else:
        parse = set(allowed.get("parse", []))
        explicit = {str(u) for u in allowed.get("users", [])}
        replied_user = bool(allowed.get("replied_user", False))
    everyone = "everyone" in parse and ("@everyone" in content or "@here" in content)
    users = [i for i in _USER_MENTION.findall(content) if "users" in parse or i in explicit]
    if replied is not None and replied_user and replied["author"]["id"] not in users:
        users.append(replied["author"]["id"])
    return everyone, list(dict.fromkeys(users))


def _form_error(field_name: str, code: str, message: str) -> dict[str, Any]:
    return {
        "message": "Invalid Form Body",
        "code": 50035,
        "errors": {field_name: {"_errors": [{"code": code, "message": message}]}},
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # exactly "application/json": discord.py reads any other content type as text
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _rate_limited(failure: _Failure) -> web.Response:
    headers = {
        "Retry-After": str(max(1, math.ceil(failure.retry_after))),
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{time.time() + failure.retry_after:.3f}",
        "X-RateLimit-Reset-After": f"{failure.retry_after:.3f}",
        "X-RateLimit-Bucket": "emulator-bucket",
        "X-RateLimit-Scope": "shared" if not failure.is_global else "global",
        "Via": "1.1 google",  # without it discord.py takes the 429 for a Cloudflare ban
    }
    if failure.is_global:
        headers["X-RateLimit-Global"] = "true"
    body = {
        "message": "You are being rate limited.",
        "retry_after": failure.retry_after,
        "global": failure.is_global,
    }
    return _json(body, 429, headers)


async def _read_body(request: web.Request) -> dict[str, Any]:
    """JSON bodies, or multipart with a ``payload_json`` part (messages with files)."""
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        payload = form.get("payload_json")
        return json.loads(str(payload)) if payload is not None else {}
    data = await request.json()
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def patch_discord_py(server: DiscordServer) -> Iterator[None]:
    """Point discord.py's REST base and default gateway at ``server``; restore them on exit.

    These are class attributes of the library, read when a request or connection is made, so
    every ``discord.Client`` created inside the block talks to the emulator.
    """
    import discord.gateway
    import discord.http
    import yarl

    route_base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{server.base_url}{API}"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)
    try:
        yield
    finally:
        discord.http.Route.BASE = route_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway


@contextlib.asynccontextmanager
async def discord_emulator(token: str = "test-token", **options: Any) -> AsyncIterator[DiscordServer]:
    """``async with discord_emulator() as dc:`` a started server with discord.py pointed at it."""
    async with DiscordServer(token, **options) as server:
        with patch_discord_py(server):
            yield server


__all__ = [
    "DM",
    "PUBLIC_THREAD",
    "SEND_MESSAGE",
    "TEXT",
    "Channel",
    "DiscordServer",
    "Guild",
    "SentMessage",
    "User",
    "discord_emulator",
    "patch_discord_py",
]
