"""A Discord gateway + REST emulator on 127.0.0.1, for driving the real discord.py in tests.

``async with DiscordServer(token="...") as dc:`` starts an aiohttp server on a free port; point a
Discord channel at it with the channel options :meth:`DiscordServer.channel_options` returns
(``api_base_url``, ``gateway_url``: ``DiscordAdapter(..., **dc.channel_options())`` or the same keys
in a ``[[bots.channels]]`` entry, which a ``bots run`` subprocess reads too). A bare
``discord.Client`` can instead be pointed there with :func:`patch_discord_py`. The emulator
speaks the parts of the protocol a bot uses: login (``users/@me``, ``oauth2/applications/@me``),
the gateway (HELLO, IDENTIFY, READY, GUILD_CREATE, heartbeats, RESUME with replay, close codes)
and posting messages and typing. It answers like Discord where a bot depends on it: 401 for a
wrong token, close 4004 for a wrong token on the gateway, 4014 when the Message Content intent is
not enabled, 400/50035 for content over 2,000 characters, 403/50001 for another bot's DM
channel, 429s on demand with the headers discord.py needs to retry, and the message it already
has for a resend with the same ``nonce`` and ``enforce_nonce``.

Build traffic with :meth:`DiscordServer.dm` and :meth:`DiscordServer.guild_message`; read what
the bot posted from :attr:`DiscordServer.sent` or ``await dc.next_sent()``; wait for any state
with ``await dc.wait_for(predicate, timeout, what=...)``.

Several bots in one server
--------------------------
The constructor's token is the *default bot*; :meth:`DiscordServer.add_bot` serves more bot
applications, each a member of the server with its own managed role::

    async with DiscordServer(token="A-token") as dc:
        sailor = dc.add_bot("B-token", "sailor")          # before the clients connect
        # two DiscordAdapters (with **dc.channel_options()) in one process, one per token
        await dc.guild_message(dc.general, dc.alice, "hi", mention_bot=sailor)   # to both bots
        reply = await dc.next_sent(bot=sailor)             # SentMessage, author_id == sailor.id
        # the default bot got sailor's reply as MESSAGE_CREATE with author.bot true

Each token authenticates its own REST calls and IDENTIFY (``users/@me``, ``applications/@me`` and
READY name its bot user) and has its own gateway session, DM channels, sent messages, requests,
429s and counters (a :class:`BotAccount`, see :meth:`DiscordServer.account`). Methods about one bot
take ``bot=`` (its User, token, user id or username; None: the default bot); the plain attributes
(:attr:`~DiscordServer.token`, :attr:`~DiscordServer.bot`, :attr:`~DiscordServer.sent`,
:attr:`~DiscordServer.identify_count`, ...) are the default bot's, and
:attr:`~DiscordServer.all_sent` holds every bot's posts in order (:attr:`SentMessage.author_id`).

A guild message, whether a user's (:meth:`~DiscordServer.guild_message`, also by a third-party bot
made with ``dc.user("name", bot=True)``) or one a served bot posted over REST, is dispatched as
MESSAGE_CREATE to every served bot with a gateway session: Discord delivers other bots' messages
(``author.bot`` true; the Message Content intent is taken as granted). The author's own bot gets
it only with ``echo_own_messages`` (on by default, as on Discord). ``mentions`` of a REST post are
the users Discord would ping: ``<@id>`` in the content under the request's ``allowed_mentions``
(so a post with ``allowed_mentions={"parse": []}`` mentions nobody, as on Discord). DMs reach only
their bot (``dm(..., bot=)``). Several clients (one per token) share one emulator, whether each
is given :meth:`~DiscordServer.channel_options` or :func:`patch_discord_py` points every
discord.py client in the process there.

Shards
------
A client may IDENTIFY with ``shard: [id, count]`` (discord.py's ``AutoShardedClient``): each
shard is a session of its own, READY carries its ``shard`` and lists, like GUILD_CREATE after it,
only the guilds of that shard, ``(guild_id >> 22) % count``. A guild message goes to the session
of its guild's shard; DMs only to shard 0 (as on Discord). :meth:`DiscordServer.add_guild` makes
another server (``shard=(id, count)`` picks an id on that shard); :attr:`BotAccount.shards` holds a
bot's sessions by shard id.
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

    def __call__(self, shard: tuple[int, int] | None = None) -> str:
        """A fresh id; with ``shard=(id, count)`` one whose ``(id >> 22) % count`` is that shard."""
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        if shard is not None:
            ms += (shard[0] - ms) % shard[1]  # a moment a little ahead: the shard's formula holds
        return str((ms << 22) | (1 << 17) | (next(self._counter) % 4096))


def shard_of(guild_id: str | int, shard_count: int) -> int:
    """The shard Discord delivers a guild's events on."""
    return (int(guild_id) >> 22) % shard_count


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
    """One message a bot posted, as the emulator received and stored it."""

    id: str
    channel_id: str
    content: str
    reply_to: str | None  # message_reference.message_id
    allowed_mentions: dict[str, Any] | None
    mention_everyone: bool  # whether Discord would have pinged @everyone/@here
    pinged_users: list[str]  # user ids Discord would have notified
    body: dict[str, Any]  # the request body
    message: dict[str, Any]  # the message object returned to the bot
    author_id: str = ""  # the bot user that posted it (its token authenticated the request)


@dataclass
class _Failure:
    key: str
    retry_after: float
    is_global: bool


@dataclass
class _Session:
    id: str
    account: BotAccount
    events: list[tuple[int, str]] = field(default_factory=list)  # (seq, frame) for RESUME
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    valid: bool = True
    replay_from: int | None = None  # on the next RESUME, replay from here even if the client had it
    shard: int = 0  # IDENTIFY's shard [id, count]
    shard_count: int = 1


class BotAccount:
    """One bot application served by :class:`DiscordServer`: its token, bot user and managed role,
    its gateway session and everything it did. For reading; the emulator keeps it up to date."""

    def __init__(self, token: str, user: User, role_id: str) -> None:
        self.token = token
        self.user = user
        self.application_id = user.id  # new applications share the bot user's id
        self.role_id = role_id  # the bot's managed role in the server
        self.sent: list[SentMessage] = []  # what it posted, in order
        self.typing_calls: list[str] = []  # channel ids
        self.requests: list[str] = []  # "GET /users/@me", ... in order
        self.rate_limited = 0  # 429s answered
        self.identify_count = 0
        self.resume_count = 0
        self.replayed: list[int] = []  # sequence numbers sent again on a RESUME
        self.seq_by_message: dict[str, int] = {}  # message id -> sequence of its last MESSAGE_CREATE
        self.intents: int | None = None  # from its last IDENTIFY
        self.dm_channels: dict[str, Channel] = {}  # user id -> DM channel with this bot
        self.session: _Session | None = None  # its session on shard 0 (None before IDENTIFY)
        self.shards: dict[int, _Session] = {}  # every shard's session, by shard id
        self._failures: list[_Failure] = []
        self._sent_queue: asyncio.Queue[SentMessage] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        """Whether its gateway socket is open right now."""
        return self.session is not None and self.session.ws is not None and not self.session.ws.closed

    def __repr__(self) -> str:
        return f"<BotAccount {self.user.username} ({self.user.id})>"


BotRef = User | str | BotAccount  # a served bot: its User, token, user id or username


class DiscordServer:
    """The emulator: one server ("Test Server") with ``general`` and the thread ``ideas`` in it,
    the bot user ``bot``, and members ``owner``, ``alice`` and ``bob``; DM channels are made on
    first use. Ids are realistic snowflakes, fresh for every instance. :meth:`add_bot` serves
    more bot applications in the same server.

    Inbound: :meth:`dm`, :meth:`guild_message`, :meth:`redeliver`, :meth:`dispatch_raw`,
    :meth:`send_raw_frame`. Gateway: :meth:`drop_connection`, :meth:`wait_identified`,
    :meth:`wait_resumed`. REST: :meth:`fail_next` (429s). What the bot did: :attr:`sent`,
    :meth:`next_sent`, :attr:`typing_calls`, :attr:`requests`; every bot: :attr:`all_sent`,
    :meth:`sent_by`, :meth:`account`. Methods about one bot take ``bot=`` (None: the default bot).
    """

    def __init__(
        self,
        token: str = "test-token",
        *,
        bot_name: str = "tester",
        heartbeat_interval_ms: int = 41_250,
        message_content_intent: bool = True,  # the portal switch; False -> close 4014
        echo_own_messages: bool = True,  # Discord sends a bot its own messages too
    ) -> None:
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.message_content_intent = message_content_intent
        self.echo_own_messages = echo_own_messages
        self.snowflake = Snowflakes()
        self._users: dict[str, User] = {}  # every user made here, by id
        self.accounts: dict[str, BotAccount] = {}  # token -> served bot, the default bot first
        bot = self._register(User(self.snowflake(), bot_name, bot=True))
        self.owner = self.user("owner")
        self.alice = self.user("alice", global_name="Alice")
        self.bob = self.user("bob", global_name="Bob")
        self.guild = self._make_guild(bot)
        self.guilds = [self.guild]  # "Test Server" first; add_guild makes more
        self.general = self.guild.channels[0]
        self.thread = self.guild.threads[0]
        role_id = next(r["id"] for r in self.guild.roles if r.get("tags", {}).get("bot_id") == bot.id)
        self.default = self.accounts[token] = BotAccount(token, bot, role_id)
        self.messages: dict[str, dict[str, Any]] = {}  # every message by id
        self.all_sent: list[SentMessage] = []  # what every bot posted, in order
        self._nonces: dict[tuple[str, str], dict[str, Any]] = {}  # enforce_nonce: resends are deduped
        self._sessions: dict[str, _Session] = {}
        self._changed = asyncio.Condition()
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- the served bots -----------------------------------------------------------------------
    def add_bot(self, token: str, username: str, *, global_name: str | None = None) -> User:
        """Serve another bot application: a bot user (``bot: true``) with its managed role, a member
        of the server. ``token`` authenticates its REST calls and its IDENTIFY. Add bots before
        their clients or the others connect: GUILD_CREATE (sent at IDENTIFY) lists the members."""
        if token in self.accounts:
            raise ValueError("that token is served already")
        user = self._register(User(self.snowflake(), username, global_name=global_name, bot=True))
        role = _role(self.snowflake(), username, ALL_PERMISSIONS, position=1, managed=True)
        role["tags"] = {"bot_id": user.id}
        self.guild.roles.append(role)
        self.guild.members.append(user)
        self.guild.member_roles[user.id] = [role["id"]]
        self.accounts[token] = BotAccount(token, user, role["id"])
        return user

    def add_guild(self, name: str, *, shard: tuple[int, int] | None = None) -> Guild:
        """Another server with a ``general`` channel, every served bot (with a managed role of its
        own there) and the members owner, alice and bob; ``shard=(id, count)``: its id is on that
        shard. Add it before the clients connect (GUILD_CREATE is sent at IDENTIFY)."""
        guild_id = self.snowflake(shard)
        bots = [account.user for account in self.accounts.values()]
        roles = [_role(guild_id, "@everyone", MEMBER_PERMISSIONS, position=0)]
        member_roles = {}
        for bot in bots:
            role = _role(self.snowflake(), bot.username, ALL_PERMISSIONS, position=1, managed=True)
            role["tags"] = {"bot_id": bot.id}
            roles.append(role)
            member_roles[bot.id] = [role["id"]]
        guild = Guild(
            id=guild_id,
            name=name,
            owner=self.owner,
            members=[*bots, self.owner, self.alice, self.bob],
            channels=[Channel(self.snowflake(), "general", TEXT, guild_id=guild_id)],
            threads=[],
            roles=roles,
            member_roles=member_roles,
        )
        self.guilds.append(guild)
        return guild

    def _guild(self, guild_id: str | None) -> Guild:
        return next((g for g in self.guilds if g.id == guild_id), self.guild)

    def account(self, bot: BotRef | None = None) -> BotAccount:
        """The served bot ``bot`` names (its User, token, user id or username); None: the default bot."""
        if bot is None:
            return self.default
        if isinstance(bot, BotAccount):
            return bot
        if isinstance(bot, User):
            bot = bot.id
        if bot in self.accounts:
            return self.accounts[bot]
        for account in self.accounts.values():
            if bot in (account.user.id, account.user.username):
                return account
        raise KeyError(f"no served bot {bot!r}")

    @property
    def bots(self) -> list[User]:
        """Every served bot user, the default bot first."""
        return [account.user for account in self.accounts.values()]

    def sent_by(self, bot: BotRef | None = None) -> list[SentMessage]:
        """What ``bot`` posted, in order (the same list as its :attr:`BotAccount.sent`)."""
        return self.account(bot).sent

    # the default bot's state, under the names of the one-bot emulator
    @property
    def token(self) -> str:
        return self.default.token

    @property
    def bot(self) -> User:
        """The default bot user."""
        return self.default.user

    @property
    def application_id(self) -> str:
        return self.default.application_id

    @property
    def bot_role_id(self) -> str:
        return self.default.role_id

    @property
    def sent(self) -> list[SentMessage]:
        """What the default bot posted, in order."""
        return self.default.sent

    @property
    def typing_calls(self) -> list[str]:
        return self.default.typing_calls

    @property
    def requests(self) -> list[str]:
        """The default bot's REST requests (and those with a token nobody has)."""
        return self.default.requests

    @property
    def rate_limited(self) -> int:
        return self.default.rate_limited

    @property
    def identify_count(self) -> int:
        return self.default.identify_count

    @property
    def resume_count(self) -> int:
        return self.default.resume_count

    @property
    def replayed(self) -> list[int]:
        return self.default.replayed

    @property
    def seq_by_message(self) -> dict[str, int]:
        return self.default.seq_by_message

    @property
    def intents(self) -> int | None:
        return self.default.intents

    @property
    def dm_channels(self) -> dict[str, Channel]:
        return self.default.dm_channels

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

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}{API}"

    def channel_options(self) -> dict[str, str]:
        """The Discord channel options that point a bot here: ``DiscordAdapter(**...)`` keywords
        and ``[[bots.channels]]`` keys alike (``api_base_url``, ``gateway_url``)."""
        return {"api_base_url": self.api_base_url, "gateway_url": self.gateway_url}

    # -- the world -----------------------------------------------------------------------------
    def user(self, username: str, *, global_name: str | None = None, bot: bool = False) -> User:
        """A new user (``bot=True``: a third-party bot, not served here). Not listed as a server
        member, but it may write anywhere and be mentioned."""
        return self._register(User(self.snowflake(), username, global_name=global_name, bot=bot))

    def _register(self, user: User) -> User:
        self._users[user.id] = user
        return user

    def _make_guild(self, bot: User) -> Guild:
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
        bot_role = _role(self.snowflake(), bot.username, ALL_PERMISSIONS, position=1, managed=True)
        bot_role["tags"] = {"bot_id": bot.id}
        return Guild(
            id=guild_id,
            name="Test Server",
            owner=self.owner,
            members=[bot, self.owner, self.alice, self.bob],
            channels=[general],
            threads=[thread],
            roles=[everyone, bot_role],
            member_roles={bot.id: [bot_role["id"]]},
        )

    def dm_channel(self, user: User, *, bot: BotRef | None = None) -> Channel:
        """The DM channel between ``user`` and ``bot`` (default: the default bot)."""
        channels = self.account(bot).dm_channels
        if user.id not in channels:
            channels[user.id] = Channel(self.snowflake(), "", DM, recipient=user)
        return channels[user.id]

    def channel(self, channel_id: str) -> Channel | None:
        dms = [c for account in self.accounts.values() for c in account.dm_channels.values()]
        every = [c for g in self.guilds for c in (*g.channels, *g.threads)] + dms
        return next((c for c in every if c.id == channel_id), None)

    def _may_use(self, account: BotAccount, channel: Channel) -> bool:
        """Guild channels: every served bot is a member; a DM channel: only its own bot."""
        return channel.guild_id is not None or channel.id in {c.id for c in account.dm_channels.values()}

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
            data["member"] = self._guild(channel.guild_id).member(author)
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
        self,
        user: User,
        text: str,
        *,
        attachments: Sequence[dict[str, Any]] = (),
        bot: BotRef | None = None,
    ) -> dict[str, Any]:
        """``user`` writes ``text`` to ``bot`` (default: the default bot) in a DM; returns the
        MESSAGE_CREATE payload sent."""
        account = self.account(bot)
        channel = self.dm_channel(user, bot=account)
        message = self.message(channel, user, text, attachments=attachments)
        await self.dispatch_raw("MESSAGE_CREATE", message, bot=account)
        return message

    async def guild_message(
        self,
        channel: Channel,
        user: User,
        text: str,
        *,
        mention_bot: bool | BotRef = False,
        mention_bot_role: bool | BotRef = False,
        mentions: Sequence[User] = (),
        reply_to: dict[str, Any] | None = None,
        reply_ping: bool = True,
        attachments: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """``user`` writes in a guild channel or thread; returns the MESSAGE_CREATE payload, sent to
        every served bot with a gateway session (``user`` itself only with ``echo_own_messages``).

        ``user`` may be a person, a third-party bot (``user("name", bot=True)``) or a served bot.
        ``mention_bot`` prefixes ``<@bot>`` (as the Discord client does when you pick the bot):
        True for the default bot, or the served bot it names; ``mention_bot_role`` prefixes the
        bot's managed role ``<@&role>`` instead (a common mistake of users, the autocomplete offers
        both). ``reply_to`` is a message dict (from :attr:`messages`, a builder, or
        ``sent[i].message``); with ``reply_ping`` the replied author is in ``mentions`` like
        Discord's default "@ON" reply.
        """
        users = list(mentions)
        roles: list[str] = []
        prefix = ""
        if mention_bot is not False and mention_bot is not None:
            target = self.default if mention_bot is True else self.account(mention_bot)
            users.insert(0, target.user)
            prefix = f"{target.user.mention} "
        if mention_bot_role is not False and mention_bot_role is not None:
            target = self.default if mention_bot_role is True else self.account(mention_bot_role)
            roles.append(target.role_id)
            prefix = f"<@&{target.role_id}> " + prefix
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
        await self._dispatch_to_guild(message)
        return message

    def _user_by_id(self, user_id: str) -> User | None:
        return self._users.get(user_id)

    async def redeliver(self, message: dict[str, Any], *, bot: BotRef | None = None) -> int:
        """Send the same MESSAGE_CREATE again to ``bot`` (what an at-least-once delivery looks like)."""
        return await self.dispatch_raw("MESSAGE_CREATE", message, bot=bot)

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
    async def dispatch_raw(
        self, event_type: str, data: Any, *, bot: BotRef | None = None, shard: int = 0
    ) -> int:
        """Dispatch ``data`` as event ``event_type`` on ``bot``'s current session of ``shard``, as
        is (malformed payloads welcome); buffered for RESUME while the client is away. Returns the
        sequence."""
        account = self.account(bot)
        session = account.shards.get(shard)
        if session is None:
            raise RuntimeError(
                f"no gateway session of {account.user.username} yet: start the client before dispatching"
            )
        session.seq += 1
        frame = json.dumps({"op": 0, "t": event_type, "s": session.seq, "d": data})
        if event_type == "MESSAGE_CREATE" and isinstance(data, dict) and "id" in data:
            account.seq_by_message[str(data["id"])] = session.seq
        session.events.append((session.seq, frame))
        await self._send(session.ws, frame)
        return session.seq

    async def _dispatch_to_guild(self, message: dict[str, Any], *, sender: BotAccount | None = None) -> None:
        """MESSAGE_CREATE for a guild message to every served bot with a session: Discord delivers
        other bots' messages; its own only with ``echo_own_messages``."""
        author_id = message["author"]["id"]
        receivers = [a for a in self.accounts.values() if a.shards]
        if not receivers and sender is None:
            raise RuntimeError("no gateway session yet: start a client before dispatching")
        for account in receivers:
            if account.user.id == author_id and not self.echo_own_messages:
                continue
            count = next(iter(account.shards.values())).shard_count
            shard = shard_of(message["guild_id"], count)
            if shard in account.shards:  # a shard nobody connected gets nothing
                await self.dispatch_raw("MESSAGE_CREATE", message, bot=account, shard=shard)

    async def send_raw_frame(self, frame: str | bytes, *, bot: BotRef | None = None) -> None:
        """Send ``frame`` as one websocket frame (text, or binary for bytes: what a compressed
        gateway stream sends) on ``bot``'s live connection (not buffered)."""
        session = self.account(bot).session
        if session is None or session.ws is None:
            raise RuntimeError("no live gateway connection")
        if isinstance(frame, bytes):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.ws.send_bytes(frame)
        else:
            await self._send(session.ws, frame)

    async def drop_connection(
        self, code: int = 4000, *, replay_from: int | None = None, bot: BotRef | None = None
    ) -> None:
        """Close ``bot``'s live gateway socket; the client reconnects and RESUMEs. With ``replay_from``
        (a sequence number, see :attr:`seq_by_message`) the RESUME replays every event from
        there on, including ones the client already had: delivery is at-least-once."""
        session = self.account(bot).session
        if session is None or session.ws is None:
            raise RuntimeError("no live gateway connection")
        ws, session.ws = session.ws, None
        session.replay_from = replay_from
        await ws.close(code=code)

    async def wait_identified(
        self, count: int = 1, timeout: float = 10.0, *, bot: BotRef | None = None
    ) -> None:
        """Wait until ``count`` IDENTIFYs of ``bot`` succeeded and READY/GUILD_CREATE went out."""
        account = self.account(bot)
        what = f"{count} IDENTIFY(s) of {account.user.username}"
        await self.wait_for(lambda: account.identify_count >= count, timeout, what=what)

    async def wait_resumed(self, count: int = 1, timeout: float = 10.0, *, bot: BotRef | None = None) -> None:
        account = self.account(bot)
        what = f"{count} RESUME(s) of {account.user.username}"
        await self.wait_for(lambda: account.resume_count >= count, timeout, what=what)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 5.0, *, what: str = "a condition"
    ) -> None:
        """Wait until ``predicate()`` holds (checked whenever the emulator's state changes: a
        message posted, a typing call, an IDENTIFY or RESUME); TimeoutError naming ``what``."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"waited {timeout:g}s for {what}") from None

    async def _wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        await self.wait_for(predicate, timeout)

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
        account = self.accounts.get(str(data.get("token")))
        if account is None:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        account.intents = int(data.get("intents") or 0)
        if account.intents & INTENT_MESSAGE_CONTENT and not self.message_content_intent:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        shard, count = _shard_field(data.get("shard"))
        if not 0 <= shard < count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return None
        session = _Session(uuid.uuid4().hex, account, ws=ws, shard=shard, shard_count=count)
        self._sessions[session.id] = session
        account.shards[shard] = session
        if shard == 0:
            account.session = session
        guilds = [g for g in self.guilds if shard_of(g.id, count) == shard]
        ready = {
            "v": 10,
            "user": {**account.user.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": g.id, "unavailable": True} for g in guilds],
            "shard": [shard, count],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.gateway_url,
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "application": {"id": account.application_id, "flags": self._application_flags()},
            "_trace": ["emulator"],
        }
        await self.dispatch_raw("READY", ready, bot=account, shard=shard)
        for guild in guilds:
            await self.dispatch_raw("GUILD_CREATE", guild.payload(), bot=account, shard=shard)
        account.identify_count += 1
        await self._notify()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        session = self._sessions.get(str(data.get("session_id")))
        account = self.accounts.get(str(data.get("token")))
        if account is None:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        if session is None or not session.valid or session.account is not account:
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
                account.replayed.append(seq)
                await self._send(ws, frame)
        account.shards[session.shard] = session
        if session.shard == 0:
            account.session = session
        await self.dispatch_raw("RESUMED", {"_trace": ["emulator"]}, bot=account, shard=session.shard)
        account.resume_count += 1
        await self._notify()
        return session

    def _application_flags(self) -> int:
        # GATEWAY_MESSAGE_CONTENT (verified bots) or GATEWAY_MESSAGE_CONTENT_LIMITED (under 100 guilds)
        return 1 << 19 if self.message_content_intent else 0

    # -- REST ----------------------------------------------------------------------------------
    def _caller(self, request: web.Request) -> BotAccount | None:
        """The served bot whose token the request carries (``Authorization: Bot <token>``)."""
        auth = request.headers.get("Authorization", "")
        return self.accounts.get(auth.removeprefix("Bot ")) if auth.startswith("Bot ") else None

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
        bot: BotRef | None = None,
    ) -> None:
        """Answer ``bot``'s next ``times`` requests to ``route`` with 429 Too Many Requests.

        ``route`` is "METHOD /path" with the id placeholders of the API docs
        ("POST /channels/{channel_id}/messages") or with a concrete id.
        """
        self.account(bot)._failures.extend(_Failure(route, retry_after, is_global) for _ in range(times))

    def _take_failure(self, account: BotAccount, request: web.Request) -> _Failure | None:
        keys = {self._route_key(request), f"{request.method} {request.path.removeprefix(API)}"}
        for failure in account._failures:
            if failure.key in keys:
                account._failures.remove(failure)
                return failure
        return None

    def _guard(self, request: web.Request) -> BotAccount | web.Response:
        """Auth and on-demand 429s, shared by every REST route: the calling bot, or the refusal."""
        account = self._caller(request)
        (account or self.default).requests.append(self._route_key(request))
        if account is None:
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        failure = self._take_failure(account, request)
        if failure is not None:
            account.rate_limited += 1
            return _rate_limited(failure)
        return account

    async def _get_me(self, request: web.Request) -> web.Response:
        if isinstance(account := self._guard(request), web.Response):
            return account
        return _json({**account.user.payload(), "verified": True, "mfa_enabled": False, "flags": 0})

    async def _get_application(self, request: web.Request) -> web.Response:
        if isinstance(account := self._guard(request), web.Response):
            return account
        return _json(
            {
                "id": account.application_id,
                "name": account.user.username,
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
                "bot": account.user.payload(),
                "interactions_endpoint_url": None,
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        if isinstance(account := self._guard(request), web.Response):
            return account
        limit = {"total": 1000, "remaining": 1000 - account.identify_count, "reset_after": 86_400_000}
        return _json(
            {"url": self.gateway_url, "shards": 1, "session_start_limit": limit | {"max_concurrency": 1}}
        )

    async def _not_found(self, request: web.Request) -> web.Response:
        if isinstance(refused := self._guard(request), web.Response):
            return refused
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _post_typing(self, request: web.Request) -> web.Response:
        if isinstance(account := self._guard(request), web.Response):
            return account
        channel_id = request.match_info["channel_id"]
        channel = self.channel(channel_id)
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        if not self._may_use(account, channel):
            return _json({"message": "Missing Access", "code": 50001}, 403)
        account.typing_calls.append(channel_id)
        await self._notify()
        return web.Response(status=204)

    async def _post_message(self, request: web.Request) -> web.Response:
        if isinstance(account := self._guard(request), web.Response):
            return account
        channel = self.channel(request.match_info["channel_id"])
        if channel is None:
            return _json({"message": "Unknown Channel", "code": 10003}, 404)
        if not self._may_use(account, channel):
            return _json({"message": "Missing Access", "code": 50001}, 403)
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
            account.user,
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
            author_id=account.user.id,
        )
        account.sent.append(sent)
        self.all_sent.append(sent)
        account._sent_queue.put_nowait(sent)
        if nonce is not None:
            self._nonces[nonce] = message
        event = dict(message)
        if channel.guild_id is not None:
            event["member"] = self._guild(channel.guild_id).member(account.user)
            await self._dispatch_to_guild(event, sender=account)  # the other bots see it too
        elif self.echo_own_messages and account.session is not None:
            await self.dispatch_raw("MESSAGE_CREATE", event, bot=account)
        await self._notify()
        return _json(message)

    # -- reading what the bots did -------------------------------------------------------------
    async def next_sent(self, timeout: float = 5.0, *, bot: BotRef | None = None) -> SentMessage:
        """The next message ``bot`` (default: the default bot) posts, in order, waiting up to
        ``timeout`` seconds; each is returned once."""
        account = self.account(bot)
        try:
            return await asyncio.wait_for(account._sent_queue.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{account.user.username} posted nothing within {timeout:g}s") from None

    def take_sent(self, *, bot: BotRef | None = None) -> list[SentMessage]:
        """Everything ``bot`` posted and not yet taken by :meth:`next_sent`."""
        queue = self.account(bot)._sent_queue
        items = []
        while not queue.empty():
            items.append(queue.get_nowait())
        return items

    def replies_to(self, message: dict[str, Any], *, bot: BotRef | None = None) -> list[SentMessage]:
        """What ``bot`` posted as a reply to ``message``."""
        return [s for s in self.account(bot).sent if s.reply_to == message["id"]]

    async def wait_sent(
        self, count: int, timeout: float = 5.0, *, bot: BotRef | None = None
    ) -> list[SentMessage]:
        """Wait until ``bot`` posted at least ``count`` messages in all; returns its sent list."""
        account = self.account(bot)
        what = f"{account.user.username} to have posted {count} message(s)"
        await self.wait_for(lambda: len(account.sent) >= count, timeout, what=what)
        return account.sent

    async def wait_typing(self, channel_id: str, timeout: float = 5.0, *, bot: BotRef | None = None) -> None:
        account = self.account(bot)
        what = f"{account.user.username} typing in channel {channel_id}"
        await self.wait_for(lambda: channel_id in account.typing_calls, timeout, what=what)


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
    every ``discord.Client`` created inside the block talks to the emulator, however many bots
    (tokens) they log in as: one patch serves them all. For bare ``discord.Client``s; a
    ``DiscordAdapter`` needs no patch: give it :meth:`DiscordServer.channel_options`.
    """
    import discord.gateway
    import discord.http
    import yarl

    route_base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = server.api_base_url
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
    "BotAccount",
    "BotRef",
    "Channel",
    "DiscordServer",
    "Guild",
    "SentMessage",
    "User",
    "discord_emulator",
    "patch_discord_py",
]


def _shard_field(value: Any) -> tuple[int, int]:
    """IDENTIFY's ``shard`` as (id, count); (0, 1) when absent, (-1, 0) when unreadable (refused)."""
    if value is None:
        return 0, 1
    try:
        shard, count = (int(part) for part in value)
    except (TypeError, ValueError):
        return -1, 0
    return shard, count
