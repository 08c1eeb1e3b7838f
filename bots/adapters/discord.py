"""The Discord channel: discord.py's gateway client, run inside the host's event loop.

discord.py does the protocol work (login, gateway, heartbeats, RESUME after a drop, 429
retries). This adapter translates messages to :mod:`bots.core.events` and back, and guards the
client against hostile payloads: an event discord.py cannot parse (a MESSAGE_CREATE without
``id``) or a frame that is not JSON is skipped with one log line and the connection stays up; a
frame that breaks the compressed stream reconnects and RESUMEs the session, so nothing in between
is lost. A client that dies anyway (at login, say) is replaced after a capped backoff.
Duplicates after a RESUME or a restart are dropped by the host's inbox (same id); resent replies
carry the same nonce, which Discord dedupes.

``api_base_url`` and ``gateway_url`` point one client (not the whole process) at a REST
rate-limit proxy, a gateway proxy or the test kit's emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import discord
import yarl
from discord.gateway import DiscordWebSocket, ReconnectWebSocket, WebSocketClosure
from discord.http import HTTPClient, Route
from discord.state import AutoShardedConnectionState, ConnectionState
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

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
    SentRef,
    UserRef,
)
from bots.core.splitting import split_message

log = logging.getLogger("bots.adapters.discord")

PLATFORM = "discord"
MAX_LENGTH = 2000
HEALTHY_RUN_S = 60.0  # a client that lived this long resets the restart backoff
# gateway close codes that no retry can fix (discord.py raises ConnectionClosed for them;
# 4004, a rejected token, and 4014, intents not enabled, get messages of their own)
_CLOSE_REASONS = {
    4010: "the gateway refused the shard settings (invalid shard)",
    4011: "the bot is in too many servers for one connection (sharding required)",
    4012: "the gateway refused the API version",
    4013: "the gateway refused the requested intents (invalid intents)",
}
# fields without which discord.py builds a broken object instead of failing
_REQUIRED_FIELDS = {"MESSAGE_CREATE": ("id", "channel_id", "author")}
# what discord.py's own gateway loop handles (reconnects, closes): never swallowed
_CONNECTION_FLOW = (
    ReconnectWebSocket,
    WebSocketClosure,
    discord.ConnectionClosed,
    OSError,
    aiohttp.ClientError,
)


class DiscordOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "discord" may set."""

    model_config = ConfigDict(extra="forbid")
    token_env: str = Field("DISCORD_BOT_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    ready_timeout: float = Field(30.0, gt=0)  # seconds start() waits for the gateway's READY
    # a REST rate-limit proxy (twilight-http-proxy, nirn-proxy): "http://localhost:8080/api/v10"
    api_base_url: str | None = None
    # a gateway proxy, for the first connection (RESUMEs go where READY's resume_gateway_url says)
    gateway_url: str | None = None
    # sharding (a bot in more than 2,500 servers): the bot's total shards, and those this process
    # runs (default: all). Guild events arrive on shard (guild_id >> 22) % shard_count, DMs on 0.
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None

    @model_validator(mode="after")
    def _shards(self) -> DiscordOptions:
        if self.shard_ids is None:
            return self
        if self.shard_count is None:
            raise ValueError("shard_ids needs shard_count (the bot's total number of shards)")
        wrong = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
        if wrong or not self.shard_ids or len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError(f"shard_ids must be distinct ids from 0 to {self.shard_count - 1}")
        return self

    @field_validator("api_base_url", "gateway_url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.field_name == "api_base_url":
            parts = urlsplit(value.rstrip("/"))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http(s) URL")
            if not re.search(r"/api/v\d+$", parts.path):
                raise ValueError(
                    f"{value!r} must end with the API version, like http://localhost:8080/api/v10"
                )
            return value.rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"{value!r} is not a ws(s) URL, like ws://localhost:7878")
        return value


def default_intents() -> discord.Intents:
    """Server and DM messages with their text; Message Content is privileged (developer portal)."""
    return discord.Intents(guilds=True, guild_messages=True, dm_messages=True, message_content=True)


class _RoutedHTTPClient(HTTPClient):
    """discord.py's REST client, sending its requests to ``api_base_url`` and connecting to
    ``gateway_url`` where discord.py would use Discord's default gateway. Per client:
    ``Route.BASE`` and ``DEFAULT_GATEWAY`` stay as they are for everyone else in the process."""

    def __init__(self, loop: Any, *, api_base_url: str | None = None, gateway_url: str | None = None) -> None:
        super().__init__(loop)
        self.api_base_url = api_base_url
        self.gateway_url = yarl.URL(gateway_url) if gateway_url else None

    async def request(self, route: Route, **kwargs: Any) -> Any:
        if self.api_base_url is not None and route.url.startswith(Route.BASE):
            route.url = self.api_base_url + route.url.removeprefix(Route.BASE)  # a fresh Route per call
        return await super().request(route, **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        asked = yarl.URL(url)
        if self.gateway_url is not None and asked.with_query(None) == DiscordWebSocket.DEFAULT_GATEWAY:
            url = str(self.gateway_url.update_query(asked.query))
        return await super().ws_connect(url, compress=compress)


class _Guarded:
    """discord.py's client state, with every event parser guarded: an event it cannot read is
    skipped with one log line (and no traceback) instead of ending the client. A mixin for
    discord.py's state classes (one client, or every shard of an AutoShardedClient)."""

    parsers: dict[str, Callable[[Any], None]]

    def __init__(self, channel_name: str, **options: Any) -> None:
        super().__init__(**options)
        self.channel_name = channel_name
        self.parsers = {event: self._guard(event, parse) for event, parse in self.parsers.items()}

    def _guard(self, event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
        required = _REQUIRED_FIELDS.get(event, ())

        def guarded(data: Any) -> None:
            missing = [key for key in required if not isinstance(data, dict) or data.get(key) is None]
            if missing:
                log.warning(
                    "channel %s: skipped a %s event without %s", self.channel_name, event, ", ".join(missing)
                )
                return
            try:
                parse(data)
            except Exception as exc:
                log.warning("channel %s: skipped a %s event (%s)", self.channel_name, event, _describe(exc))

        return guarded

    def _update_references(self, ws: DiscordWebSocket) -> None:
        # discord.py calls this with each new gateway socket, before its first frame is read;
        # the socket class is discord.py's choice (Client.connect), so guard this one instance
        super()._update_references(ws)  # type: ignore[misc]
        ws.__class__ = _GuardedSocket


class _GuardedState(_Guarded, ConnectionState):
    """The single client's connection state, guarded."""


class _GuardedShardedState(_Guarded, AutoShardedConnectionState):
    """The sharded client's connection state, guarded."""


class _GuardedSocket(DiscordWebSocket):
    """A gateway socket that survives frames discord.py cannot read."""

    async def received_message(self, msg: Any, /) -> None:
        channel = self._connection.channel_name  # the state is our _GuardedState
        try:
            await super().received_message(msg)
        except _CONNECTION_FLOW:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # not JSON, not an object, a field missing: the stream is intact, read on
            log.warning("channel %s: skipped a gateway frame it cannot read (%s)", channel, _describe(exc))
        except Exception as exc:
            # e.g. a compressed frame that does not inflate: this stream cannot go on. Reconnect and
            # RESUME; close code 4000 keeps the session valid (1000 would end it)
            log.warning("channel %s: the gateway stream broke (%s); resuming", channel, _describe(exc))
            await self.close(code=4000)
            raise ReconnectWebSocket(self.shard_id, resume=True) from None


class _Client(discord.Client):
    """A discord.Client that reports its events to the adapter."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        self._adapter = adapter
        super().__init__(**options)

    def _get_state(self, **options: Any) -> ConnectionState:
        # discord.py's hook for the state; the REST client is made just before it, and replaced
        # here by ours (the adapter passes no HTTP options, such as a proxy, to carry over)
        self.http = _RoutedHTTPClient(
            self.loop, api_base_url=self._adapter.api_base_url, gateway_url=self._adapter.gateway_url
        )
        state = _GuardedShardedState if isinstance(self, discord.AutoShardedClient) else _GuardedState
        return state(
            self._adapter.name,
            dispatch=self.dispatch,
            handlers=self._handlers,
            hooks=self._hooks,
            http=self.http,
            **options,
        )

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        # a handler failed: one line, not discord.py's traceback (its message may quote a payload)
        exc = sys.exc_info()[1]
        if exc is None:
            return
        log.error("channel %s: the %s handler failed (%s)", self._adapter.name, event_method, _describe(exc))
        log.debug("where it failed:\n%s", "".join(traceback.format_tb(exc.__traceback__)))

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        # discord.py's delayed READY task outlives close(); dispatching into a closed client
        # would fail on its unset loop ("'_MissingSentinel' object has no attribute 'create_task'")
        if not self.is_closed():
            super().dispatch(event, *args, **kwargs)

    async def on_ready(self) -> None:
        self._adapter._client_ready(self)

    async def on_message(self, message: discord.Message) -> None:
        await self._adapter._on_message(self, message)


class _ShardedClient(_Client, discord.AutoShardedClient):
    """The same, running several shards over one connection each (``on_ready``: all are READY)."""


class DiscordAdapter:
    """A Discord bot account in the servers it was invited to and in its DMs."""

    platform = PLATFORM

    def __init__(
        self,
        name: str = "discord",
        *,
        token: SecretStr | str,
        token_env: str = "DISCORD_BOT_TOKEN",
        ready_timeout: float = 30.0,
        guild_ready_timeout: float = 2.0,  # discord.py waits this long for more servers before READY
        restart_delay: float = 1.0,  # first wait before replacing a dead client; doubles up to the cap
        restart_delay_cap: float = 60.0,
        intents: discord.Intents | None = None,
        api_base_url: str | None = None,  # REST base, e.g. a rate-limit proxy (None: Discord)
        gateway_url: str | None = None,  # first gateway connection (None: Discord's)
        shard_count: int | None = None,  # sharded: the bot's total shards (AutoShardedClient)
        shard_ids: list[int] | None = None,  # the shards this process runs (None: all)
    ) -> None:
        self.name = name
        self.api_base_url = api_base_url
        self.gateway_url = gateway_url
        if shard_ids is not None and shard_count is None:
            raise ValueError("shard_ids needs shard_count")
        self.shard_count = shard_count
        self.shard_ids = shard_ids
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.token_env = token_env
        self.ready_timeout = ready_timeout
        self.guild_ready_timeout = guild_ready_timeout
        self.restart_delay = restart_delay
        self.restart_delay_cap = restart_delay_cap
        self.intents = intents or default_intents()
        self.capabilities = Capabilities(
            max_length=MAX_LENGTH,
            length_unit="chars",
            markup=frozenset({"plain", "markdown"}),
            threads=True,
        )
        self.client: discord.Client | None = None  # the live client (replaced after a crash)
        self.restarts = 0  # clients replaced after dying
        self._sink: EventSink | None = None
        self._ready = asyncio.Event()  # the current client is logged in and READY
        self._ever_ready = False
        self._stopping = False
        self._fatal: ConfigError | None = None
        self._supervisor: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> DiscordAdapter:
        settings = channel_options(DiscordOptions, name, "discord", options)
        token = secrets.require(settings.token_env, f"the Discord channel {name!r}")
        return cls(
            name,
            token=token,
            token_env=settings.token_env,
            ready_timeout=settings.ready_timeout,
            api_base_url=settings.api_base_url,
            gateway_url=settings.gateway_url,
            shard_count=settings.shard_count,
            shard_ids=settings.shard_ids,
        )

    @property
    def self_id(self) -> str:
        """The bot user's id ("" before the first login)."""
        user = self.client.user if self.client is not None else None
        return str(user.id) if user is not None else ""

    @property
    def self_name(self) -> str:
        user = self.client.user if self.client is not None else None
        return user.name if user is not None else ""

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, sink: EventSink) -> None:
        """Log in and connect; return once READY, raise ConfigError for a bad token or intents."""
        self._sink = sink
        self._stopping = False
        self._fatal = None
        supervisor = self._supervisor = asyncio.create_task(self._supervise(), name=f"discord-{self.name}")
        ready = asyncio.create_task(self._ready.wait())
        try:
            await asyncio.wait(
                {ready, supervisor}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if self._ready.is_set():
            return
        await self.stop()
        if self._fatal is not None:
            raise self._fatal
        if supervisor.done() and not supervisor.cancelled() and supervisor.exception() is not None:
            raise supervisor.exception()  # type: ignore[misc]
        raise ConnectionError(
            f"channel {self.name} (discord): not connected to Discord within {self.ready_timeout:g}s "
            "(raise ready_timeout, or check the network)"
        )

    async def stop(self) -> None:
        """Close the client (a clean gateway goodbye) and end the supervisor."""
        self._stopping = True
        if self.client is not None:
            await _close_quietly(self.client)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        self._ready.clear()

    async def _supervise(self) -> None:
        """Run a client; when it dies of anything but a stop, start a fresh one after a backoff."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping:
            client = self._new_client()
            began = loop.time()
            try:
                await client.start(self._token.get_secret_value())
            except Exception as exc:
                if self._stopping:
                    return
                fatal = self._as_config_error(exc)
                if fatal is not None:
                    self._fatal = fatal
                    if self._ever_ready:  # nobody waits in start() any more: say it loudly
                        log.error("%s; the channel stays offline until the host restarts", fatal)
                    return
                log.error(
                    "channel %s: the Discord client died (%s); starting a new one", self.name, _describe(exc)
                )
                # frames only: an exception's message may quote the payload
                log.debug(
                    "channel %s: where it failed:\n%s",
                    self.name,
                    "".join(traceback.format_tb(exc.__traceback__)),
                )
            else:
                if self._stopping:
                    return
                log.warning("channel %s: the Discord client stopped by itself; starting a new one", self.name)
            finally:
                self._ready.clear()
                await _close_quietly(client)
            failures = 0 if loop.time() - began >= HEALTHY_RUN_S else failures + 1
            self.restarts += 1
            await asyncio.sleep(min(self.restart_delay_cap, self.restart_delay * 2 ** max(failures - 1, 0)))

    def _new_client(self) -> discord.Client:
        options: dict[str, Any] = {
            "intents": self.intents,
            "guild_ready_timeout": self.guild_ready_timeout,
            "chunk_guilds_at_startup": False,
            "allowed_mentions": discord.AllowedMentions.none(),
        }
        if self.shard_count is None:
            client: discord.Client = _Client(self, **options)
        else:
            client = _ShardedClient(self, shard_count=self.shard_count, shard_ids=self.shard_ids, **options)
        self.client = client
        return client

    def _client_ready(self, client: discord.Client) -> None:
        if client is self.client and client.user is not None:
            self._ever_ready = True
            self._ready.set()
            log.info(
                "channel %s: connected to Discord as %s (%s)", self.name, client.user.name, client.user.id
            )

    def _as_config_error(self, exc: Exception) -> ConfigError | None:
        """The failures no retry can fix, as messages for the operator."""
        where = f"channel {self.name} (discord)"
        if isinstance(exc, discord.LoginFailure):
            return ConfigError(f"{where}: Discord rejected the token in {self.token_env} (401 Unauthorized)")
        if isinstance(exc, discord.PrivilegedIntentsRequired):
            return ConfigError(
                f"{where}: Discord refused the Message Content intent (close code 4014). Enable "
                "'Message Content Intent' under Bot > Privileged Gateway Intents in the developer "
                "portal (https://discord.com/developers/applications), then restart."
            )
        if isinstance(exc, discord.ConnectionClosed) and exc.code == 4004:
            return ConfigError(
                f"{where}: Discord rejected the token in {self.token_env} (gateway close 4004)"
            )
        if isinstance(exc, discord.ConnectionClosed) and exc.code in _CLOSE_REASONS:
            return ConfigError(f"{where}: {_CLOSE_REASONS[exc.code]} (gateway close {exc.code})")
        return None

    # -- inbound -------------------------------------------------------------------------------
    async def _on_message(self, client: discord.Client, message: discord.Message) -> None:
        me = client.user
        if self._sink is None or me is None:
            return
        try:
            if getattr(message, "author", None) is None:
                raise ValueError("a message without author")
            if message.author.id == me.id:
                return  # Discord echoes our own posts; no need to record them
            if message.is_system():
                return  # joins, pins, boosts: Discord's notices, not chat
            event = to_event(message, me)
        except Exception as exc:
            channel_id = getattr(getattr(message, "channel", None), "id", "?")
            log.warning(
                "channel %s: skipped Discord message %s in channel %s (%s)",
                self.name,
                getattr(message, "id", "?"),
                channel_id,
                _describe(exc),
            )
            return
        try:
            await self._sink(event)
        except Exception as exc:
            # the gateway has no acknowledgement to withhold: the event is lost, say so
            log.error("channel %s: message %s was not accepted (%s)", self.name, event.id, _describe(exc))

    # -- outbound ------------------------------------------------------------------------------
    async def send(self, outbound: Outbound) -> SentRef:
        """Post one message (the core has split it); ``reply_to`` becomes a Discord reply.

        Mentions in the text never notify anyone: model output must not ping @everyone,
        roles or users. discord.py retries 429s itself; other failures raise. With an
        ``idempotency_key`` each piece carries a nonce derived from it, enforced: Discord returns
        the message it already has for a resend (within its dedupe window of a few minutes).
        """
        client = await self._live_client()
        channel_id = int(outbound.target.id)
        channel = client.get_partial_messageable(channel_id)
        reference = None
        if outbound.reply_to:
            reference = discord.MessageReference(
                message_id=int(outbound.reply_to), channel_id=channel_id, fail_if_not_exists=False
            )
        first: discord.Message | None = None
        for index, piece in enumerate(render(outbound.text, outbound.markup)):
            sent = await channel.send(
                piece,
                reference=reference,
                allowed_mentions=discord.AllowedMentions.none(),
                nonce=nonce_for(outbound.idempotency_key, index),  # discord.py adds enforce_nonce
            )
            reference = None  # only the first piece is a reply
            first = first or sent
        if first is None:
            raise ValueError("Discord cannot send an empty message")
        return SentRef(PLATFORM, outbound.target.id, str(first.id))

    def transient(self, exc: BaseException) -> bool:
        """A send worth trying again: Discord's side (5xx) or the network failed; not a refused
        request (4xx: missing access, unknown channel). discord.py already waited out 429s."""
        return isinstance(exc, (discord.DiscordServerError, aiohttp.ClientError, OSError, TimeoutError))

    async def typing(self, channel: ChannelRef) -> None:
        """Show "typing..." once (Discord shows it for ~10 s or until the bot posts)."""
        client = self.client
        if client is None or not self._ready.is_set():
            return
        try:
            await client.get_partial_messageable(int(channel.id)).typing()
        except Exception as exc:
            log.debug("channel %s: typing indicator failed (%s)", self.name, type(exc).__name__)

    async def _live_client(self) -> discord.Client:
        """The logged-in client; waits while a crashed one is being replaced."""
        if not self._ready.is_set():
            if self._supervisor is None or self._supervisor.done():
                raise RuntimeError(f"channel {self.name} (discord) is not running; cannot send")
            await asyncio.wait_for(self._ready.wait(), self.ready_timeout)
        assert self.client is not None
        return self.client


# -- translation -------------------------------------------------------------------------------
def to_event(message: discord.Message, me: discord.ClientUser) -> MessageEvent:
    """A discord.py message as a MessageEvent; mentions become "@name" in the text."""
    text, mentions = _mentions(message, me)
    segments: list[Mention | ReplyTo | Attachment] = list(mentions)
    reply = _reply_to(message)
    if reply is not None:
        segments.append(reply)
    segments.extend(
        Attachment(_attachment_kind(a.content_type), url=a.url, name=a.filename) for a in message.attachments
    )
    author = message.author
    return MessageEvent(
        platform=PLATFORM,
        message_id=str(message.id),
        author=UserRef(
            PLATFORM, str(author.id), name=author.display_name, is_bot=author.bot, username=author.name
        ),
        channel=_channel_ref(message),
        text=text,
        self_id=str(me.id),
        self_name=me.name,
        segments=tuple(segments),
        timestamp=message.created_at,
    )


def _mentions(message: discord.Message, me: discord.ClientUser) -> tuple[str, list[Mention]]:
    """Rewrite ``<@id>``/``<@!id>`` to ``@name`` (the name the Mention segment carries), roles to
    ``@role`` and channels to ``#channel``. A mention of the bot's own managed role (Discord's
    autocomplete offers it beside the bot) counts as mentioning the bot."""
    text = message.content
    found: dict[str, Mention] = {}
    for user in message.mentions:
        name = user.display_name
        text = text.replace(f"<@{user.id}>", f"@{name}").replace(f"<@!{user.id}>", f"@{name}")
        found.setdefault(str(user.id), Mention(str(user.id), name))
    for role in message.role_mentions:
        if role.tags is not None and role.tags.bot_id == me.id:
            own = found.setdefault(str(me.id), Mention(str(me.id), _my_name(message, me)))
            text = text.replace(role.mention, f"@{own.name}")
        else:
            text = text.replace(role.mention, f"@{role.name}")
    for channel in message.channel_mentions:
        text = text.replace(channel.mention, f"#{channel.name}")
    return text, list(found.values())


def _my_name(message: discord.Message, me: discord.ClientUser) -> str:
    member = message.guild.me if message.guild is not None else None
    return member.display_name if member is not None else me.display_name


def _reply_to(message: discord.Message) -> ReplyTo | None:
    ref = message.reference
    if ref is None or ref.message_id is None or ref.type is discord.MessageReferenceType.forward:
        return None
    resolved = ref.resolved if ref.resolved is not None else ref.cached_message
    author_id = str(resolved.author.id) if isinstance(resolved, discord.Message) else ""
    return ReplyTo(str(ref.message_id), author_id=author_id)


def _channel_ref(message: discord.Message) -> ChannelRef:
    channel = message.channel
    channel_id = str(channel.id)
    if isinstance(channel, discord.Thread):
        return ChannelRef(PLATFORM, channel_id, ChannelKind.THREAD, channel.name, str(channel.parent_id))
    if isinstance(channel, discord.DMChannel):
        other = channel.recipient or message.author
        return ChannelRef(PLATFORM, channel_id, ChannelKind.DM, other.display_name)
    guild_id = message.guild.id if message.guild is not None else getattr(channel, "guild_id", None)
    if guild_id is None:  # an uncached private channel
        return ChannelRef(PLATFORM, channel_id, ChannelKind.DM, message.author.display_name)
    name = getattr(channel, "name", None) or ""
    kind = ChannelKind.THREAD if _is_thread_type(getattr(channel, "type", None)) else ChannelKind.GROUP
    parent = str(guild_id) if kind is ChannelKind.GROUP else None  # an uncached thread's parent is unknown
    return ChannelRef(PLATFORM, channel_id, kind, name, parent)


def _is_thread_type(channel_type: discord.ChannelType | None) -> bool:
    return channel_type in (
        discord.ChannelType.public_thread,
        discord.ChannelType.private_thread,
        discord.ChannelType.news_thread,
    )


def _attachment_kind(content_type: str | None) -> str:
    major = (content_type or "").partition("/")[0]
    return major if major in ("image", "audio", "video") else "file"


def render(text: str, markup: str) -> list[str]:
    """The message(s) to post for one outbound piece.

    "markdown" goes out as written (Discord renders it). "plain" text is escaped so it shows
    verbatim: model output must not turn ``2*3*4`` into italics, ``__init__`` into underline,
    or ``[text](url)`` into a masked link. Links stay clickable. Escaping can lengthen text (at
    most doubling it), so an escaped piece over the limit is split again first.
    """
    if markup == "markdown":
        return split_message(text, MAX_LENGTH)
    escaped = discord.utils.escape_markdown(text)
    if len(escaped) <= MAX_LENGTH:
        return [escaped] if text.strip() else []
    return [discord.utils.escape_markdown(piece) for piece in split_message(text, MAX_LENGTH // 2)]


def nonce_for(idempotency_key: str | None, piece: int) -> str | None:
    """The nonce of one rendered piece of an outbound part: the same for every resend of it, 24
    characters (Discord takes at most 25); None without a key."""
    if idempotency_key is None:
        return None
    return hashlib.blake2b(f"{idempotency_key}\n{piece}".encode(), digest_size=12).hexdigest()


# -- helpers -----------------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    """The exception type and where it was raised; never its message (it may quote a payload)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name}"


async def _close_quietly(client: discord.Client) -> None:
    try:
        await client.close()
    except Exception as exc:
        log.debug("closing the Discord client failed (%s)", type(exc).__name__)
