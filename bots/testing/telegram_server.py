"""A local, protocol-faithful Telegram Bot API server for tests (the real client library talks to it).

Start it, point the channel's ``base_url`` at it, then play the users' side::

    from bots.testing.telegram_server import TelegramServer

    async def test_dm(harness, monkeypatch):
        async with TelegramServer(token="123:ABC") as tg:
            monkeypatch.setenv("TELEGRAM_BOT_TOKEN", tg.token)
            adapter = TelegramAdapter.from_config("tg", {"base_url": tg.base_url}, Secrets())
            await harness(adapter=adapter, llm=FakeLLM(default="hello"))
            tg.private_message("alice", "hi")             # queues an Update, as Telegram would
            reply = await tg.next_sent()                    # the Message the bot sent
            assert reply["text"] == "hello"

What it speaks: ``POST|GET /bot{token}/{method}`` with JSON, form or multipart bodies, answering
``{"ok": true, "result": ...}`` or Telegram's error objects (401 for a wrong token, 404 for an
unknown method, 400 ``Bad Request: ...`` for bad input, 403 ``Forbidden: ...`` for a chat the bot
is not in or a user who never wrote to it, 409 for getUpdates while a webhook is set or when a newer
getUpdates takes over, 429 with ``parameters.retry_after`` on :meth:`fail_next`).
Methods: getMe, getUpdates (long poll honouring ``offset``, ``limit`` and ``timeout``),
setWebhook / deleteWebhook / getWebhookInfo, sendMessage (checks the 4096 UTF-16 unit limit, empty
text, HTML and Markdown markup, reply parameters; mentions and commands in the text come back as
entities), sendChatAction, editMessageText and answerCallbackQuery. ``allowed_updates`` is recorded
(:attr:`TelegramServer.allowed_updates`), not applied.

The user side: :meth:`~TelegramServer.user`, :meth:`~TelegramServer.group`,
:meth:`~TelegramServer.topic` make users and chats; :meth:`~TelegramServer.private_message`,
:meth:`~TelegramServer.group_message` and :meth:`~TelegramServer.command` queue realistic updates
(entities with UTF-16 offsets, ``reply_to_message``, forum topics) and return them;
:meth:`~TelegramServer.push_raw` queues anything (malformed updates included) and
:meth:`~TelegramServer.redeliver` queues an update again under its own ``update_id``, as Telegram does
when a bot did not confirm it. With a webhook set, queued updates are POSTed to it (with the secret
header) and retried until answered 2xx. ``privacy_mode=True`` keeps group chatter from the bot the way
Telegram's privacy mode does.

The bot side is recorded: :attr:`~TelegramServer.sent` (Message dicts, in order),
:meth:`~TelegramServer.next_sent`, :attr:`~TelegramServer.calls` (every method call with its
decoded parameters), :attr:`~TelegramServer.confirmed_offset` and
:meth:`~TelegramServer.wait_confirmed`; :meth:`~TelegramServer.wait_for` waits for any condition.

Several bots on one server
--------------------------
The constructor's token is the *default bot*; :meth:`~TelegramServer.add_bot` serves more tokens::

    tg = TelegramServer(token="111:AAA", username="keeper_bot", bot_to_bot=True)
    other = tg.add_bot("222:BBB", "sailor_bot", "Sailor", privacy_mode=True, bot_to_bot=True)
    group = tg.group("Harbour")                          # every served bot is a member (bots=...)
    tg.group_message(group, "alice", "evening all")      # -> keeper_bot only (sailor_bot: privacy)
    reply = await tg.next_sent(bot=other)                 # what sailor_bot sent
    assert tg.delivered_to(reply) == [tg.bot]             # keeper_bot got it as a bot-to-bot update

Each bot (a :class:`BotAccount`, see :meth:`~TelegramServer.account`) has its own getMe answer, update
queue and ``update_id`` confirmation, webhook, sent messages, calls and failures. Methods about one
bot take ``bot=`` (its User dict, token, username or id; None: the default bot), and the plain
attributes (:attr:`~TelegramServer.token`, :attr:`~TelegramServer.bot`, :attr:`~TelegramServer.sent`,
:attr:`~TelegramServer.webhook`, ...) are the default bot's. :attr:`~TelegramServer.all_sent` holds
every bot's messages in order; each Message's ``from`` is the bot that sent it.

A group message goes to every served bot that is a member (:meth:`~TelegramServer.group`'s
``bots``, :meth:`~TelegramServer.join`, :meth:`~TelegramServer.leave`) and may see it: a bot in
privacy mode sees commands (``/cmd`` or ``/cmd@itself``), mentions of itself, replies to its own
messages and service messages; a bot never sees its own messages. Messages of other bots (``from``
with ``is_bot``, whether a served bot's sendMessage or a third party posting through
``group_message(chat, tg.user("Weather", "weather_bot", is_bot=True), ...)``) reach only bots with
Bot-to-Bot Communication Mode on (``bot_to_bot=True``, Bot API 10.0), under the same privacy rules.
An anonymous group admin (:meth:`~TelegramServer.anonymous_admin_message`: ``from`` is
:data:`GROUP_ANONYMOUS_BOT`, ``sender_chat`` the group) is a person, delivered like one. A private
chat belongs to one bot (``private_message(..., bot=)``): a bot may write only to users who wrote to
it. Every recipient of one message gets the same Update (one ``update_id``);
:meth:`~TelegramServer.delivered_to` and :meth:`~TelegramServer.update_for` tell who got what.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from html.parser import HTMLParser
from typing import Any, ClassVar

import aiohttp
from aiohttp import web

JSON = dict[str, Any]
MAX_MESSAGE_UTF16 = 4096
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
GROUP_ANONYMOUS_BOT_ID = 1087968824  # "from" of an anonymous group admin's messages
CHANNEL_BOT_ID = 136817688  # "from" of a linked channel's posts in its discussion group
GROUP_ANONYMOUS_BOT: JSON = {
    "id": GROUP_ANONYMOUS_BOT_ID,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
_SERVICE_ACCOUNTS = frozenset({GROUP_ANONYMOUS_BOT_ID, CHANNEL_BOT_ID})  # is_bot, but a person speaks
# service messages reach bots in privacy mode too
_SERVICE_KEYS = frozenset({
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo", "delete_chat_photo",
    "group_chat_created", "supergroup_chat_created", "migrate_to_chat_id", "migrate_from_chat_id",
    "pinned_message", "forum_topic_created", "forum_topic_edited", "forum_topic_closed",
    "forum_topic_reopened",
})  # fmt: skip
_TOKEN = re.compile(r"^(\d+):[A-Za-z0-9_-]+$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_USERNAME = r"[A-Za-z][A-Za-z0-9_]{3,31}"  # Telegram usernames: 5-32 chars, a letter first
_MENTION = re.compile(rf"(?<![\w@/])@{_USERNAME}\b")
_COMMAND = re.compile(rf"(?<![\w/@])/[A-Za-z0-9_]{{1,32}}(?:@{_USERNAME})?\b")
# form fields that are strings on Telegram's side, never JSON-decoded
_STRING_FIELDS = frozenset({
    "text", "caption", "parse_mode", "url", "secret_token", "action", "callback_query_id",
    "inline_message_id", "ip_address", "business_connection_id", "message_effect_id",
})  # fmt: skip
_CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})  # fmt: skip


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


class ApiError(Exception):
    """An error answer of the Bot API: HTTP status, ``description`` and optional ``parameters``."""

    def __init__(self, status: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad_request(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


class BotAccount:
    """One bot token served by :class:`TelegramServer`: its User, its settings and what it did.

    ``privacy_mode`` and ``bot_to_bot`` may be changed at any time; the rest is for reading.
    """

    def __init__(self, token: str, user: JSON, *, privacy_mode: bool, bot_to_bot: bool) -> None:
        self.token = token
        self.user = user  # the bot's User object (id, is_bot, first_name, username)
        self.privacy_mode = privacy_mode  # groups deliver only commands, mentions and replies to the bot
        self.bot_to_bot = bot_to_bot  # Bot-to-Bot Communication Mode: other bots' messages reach it
        self.sent: list[JSON] = []  # messages this bot sent, in order
        self.sent_at: list[float] = []  # time.monotonic() when each of `sent` arrived
        self.calls: list[tuple[str, JSON]] = []  # every method call (canonical name, decoded params)
        self.chat_actions: list[JSON] = []
        self.edits: list[JSON] = []
        self.callback_answers: list[JSON] = []
        self.updates: list[JSON] = []  # every update queued for this bot, in order (redeliveries too)
        self.pending: list[JSON] = []  # queued updates not yet confirmed
        self.confirmed_offset = 0  # the highest offset the bot confirmed (all updates below are gone)
        self.allowed_updates: list[str] | None = None
        self.webhook: JSON | None = None  # {"url", "secret_token", "allowed_updates"} while set
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status; 0: unreachable)
        self.private_chats: set[int] = set()  # users who wrote to this bot (it may write back)
        self._sent_queue: asyncio.Queue[JSON] = asyncio.Queue()
        self._failures: dict[str, list[ApiError]] = {}
        self._poll_generation = 0
        self._deliverer: asyncio.Task[None] | None = None

    @property
    def id(self) -> int:
        return int(self.user["id"])

    @property
    def username(self) -> str:
        return str(self.user["username"])

    def __repr__(self) -> str:
        return f"<BotAccount @{self.username} ({self.id})>"


BotRef = JSON | str | int | BotAccount  # a served bot: its User dict, token, username (@ optional) or id


class TelegramServer:
    """A fake Bot API on 127.0.0.1 for one bot (``token``) or several (:meth:`add_bot`); see the module
    docstring for a tour."""

    def __init__(
        self,
        token: str = "123456:TEST-token",
        *,
        username: str = "persona_test_bot",
        first_name: str = "Persona",
        privacy_mode: bool = False,
        bot_to_bot: bool = False,
        webhook_retry_s: float = 0.2,
    ) -> None:
        self.webhook_retry_s = webhook_retry_s  # pause before a failed webhook delivery is retried
        self.accounts: dict[str, BotAccount] = {}  # token -> served bot, the default bot first
        self.all_sent: list[JSON] = []  # messages every bot sent, in order (``from``: the bot)
        self._update_ids = itertools.count(700_000_001)
        self._user_ids = itertools.count(1_000_001)
        self._group_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, JSON] = {}
        self._group_members: dict[int, set[int] | None] = {}  # chat id -> bot ids (None: every bot)
        self._messages: dict[tuple[int, int], JSON] = {}
        self._users_by_name: dict[str, JSON] = {}
        self._pulse = asyncio.Event()  # set (and replaced) whenever the state changes
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0
        self.default = self._add_account(
            token, username, first_name, privacy_mode=privacy_mode, bot_to_bot=bot_to_bot
        )
        methods: dict[str, Callable[[BotAccount, JSON], Awaitable[Any]]] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "sendChatAction": self._send_chat_action,
            "editMessageText": self._edit_message_text,
            "answerCallbackQuery": self._answer_callback_query,
        }
        # method names are case-insensitive, as on Telegram: lower-cased name -> (name, handler)
        self._methods = {name.lower(): (name, handler) for name, handler in methods.items()}

    # -- the served bots -----------------------------------------------------------------------
    def add_bot(
        self,
        token: str,
        username: str,
        first_name: str | None = None,
        *,
        privacy_mode: bool = False,
        bot_to_bot: bool = False,
    ) -> JSON:
        """Serve another bot token; returns the bot's User (``id`` is the token's number). It joins
        every group made with ``bots=None`` (the default), those made before too."""
        return self._add_account(
            token, username, first_name or username, privacy_mode=privacy_mode, bot_to_bot=bot_to_bot
        ).user

    def _add_account(
        self, token: str, username: str, first_name: str, *, privacy_mode: bool, bot_to_bot: bool
    ) -> BotAccount:
        match = _TOKEN.match(token)
        if not match:
            raise ValueError("a bot token looks like '123456:ABC-def' (the bot id, a colon, a secret)")
        bot_id = int(match.group(1))
        if token in self.accounts or any(a.id == bot_id for a in self.accounts.values()):
            raise ValueError(f"bot {bot_id} is served already")
        if username.lower() in self._users_by_name:
            raise ValueError(f"the username {username!r} is taken")
        user: JSON = {"id": bot_id, "is_bot": True, "first_name": first_name, "username": username}
        account = BotAccount(token, user, privacy_mode=privacy_mode, bot_to_bot=bot_to_bot)
        self.accounts[token] = account
        self._users_by_name[username.lower()] = user
        return account

    def account(self, bot: BotRef | None = None) -> BotAccount:
        """The served bot ``bot`` names (its User dict, token, username or id); None: the default bot."""
        if bot is None:
            return self.default
        if isinstance(bot, BotAccount):
            return bot
        key: Any = bot.get("id") if isinstance(bot, dict) else bot
        if isinstance(key, str) and key in self.accounts:
            return self.accounts[key]
        for account in self.accounts.values():
            if isinstance(key, int) and not isinstance(key, bool) and account.id == key:
                return account
            if isinstance(key, str) and account.username.lower() == key.removeprefix("@").lower():
                return account
        raise KeyError(f"no served bot {bot!r}")

    @property
    def bots(self) -> list[JSON]:
        """The User of every served bot, the default bot first."""
        return [account.user for account in self.accounts.values()]

    def sent_by(self, bot: BotRef | None = None) -> list[JSON]:
        """The messages ``bot`` sent, in order (the same list as its :attr:`BotAccount.sent`)."""
        return self.account(bot).sent

    # the default bot's state, under the names of the one-bot server
    @property
    def token(self) -> str:
        return self.default.token

    @property
    def bot(self) -> JSON:
        """The default bot's User."""
        return self.default.user

    @property
    def privacy_mode(self) -> bool:
        return self.default.privacy_mode

    @privacy_mode.setter
    def privacy_mode(self, value: bool) -> None:
        self.default.privacy_mode = value

    @property
    def bot_to_bot(self) -> bool:
        return self.default.bot_to_bot

    @bot_to_bot.setter
    def bot_to_bot(self, value: bool) -> None:
        self.default.bot_to_bot = value

    @property
    def sent(self) -> list[JSON]:
        """Messages the default bot sent, in order."""
        return self.default.sent

    @property
    def calls(self) -> list[tuple[str, JSON]]:
        return self.default.calls

    @property
    def chat_actions(self) -> list[JSON]:
        return self.default.chat_actions

    @property
    def edits(self) -> list[JSON]:
        return self.default.edits

    @property
    def callback_answers(self) -> list[JSON]:
        return self.default.callback_answers

    @property
    def confirmed_offset(self) -> int:
        return self.default.confirmed_offset

    @property
    def allowed_updates(self) -> list[str] | None:
        return self.default.allowed_updates

    @property
    def webhook(self) -> JSON | None:
        return self.default.webhook

    @property
    def webhook_deliveries(self) -> list[tuple[int, int]]:
        return self.default.webhook_deliveries

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The value for the channel's ``base_url`` option (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        self._closing = True
        self._notify()  # long polls answer at once
        for account in self.accounts.values():
            if account._deliverer:
                account._deliverer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await account._deliverer
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> TelegramServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the users' side -----------------------------------------------------------------------
    def user(
        self,
        first_name: str = "Alice",
        username: str | None = None,
        *,
        last_name: str = "",
        is_bot: bool = False,
    ) -> JSON:
        """A new user (``username`` may be None: users without one are mentioned by text_mention).
        ``is_bot=True`` makes a bot that is not served here; bots always have a username (the
        first name when none is given)."""
        if is_bot and not username:
            username = first_name
        user: JSON = {
            "id": next(self._user_ids),
            "is_bot": is_bot,
            "first_name": first_name,
        }
        if not is_bot:
            user["language_code"] = "en"
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
            self._users_by_name[username.lower()] = user
        return user

    def group(
        self,
        title: str = "Test group",
        *,
        supergroup: bool = True,
        forum: bool = False,
        bots: Iterable[BotRef] | None = None,
    ) -> JSON:
        """A group chat (supergroup ids look like -100..., forums are supergroups). ``bots``: the
        served bots that are members; None: all of them, bots added later too."""
        number = next(self._group_ids)
        if supergroup or forum:
            chat: JSON = {"id": -1_001_000_000_000 - number, "type": "supergroup", "title": title}
            if forum:
                chat["is_forum"] = True
        else:
            chat = {"id": -4_000_000_000 - number, "type": "group", "title": title}
        self._chats[chat["id"]] = chat
        self._group_members[chat["id"]] = None if bots is None else {self.account(b).id for b in bots}
        return chat

    def join(self, chat: JSON, bot: BotRef) -> None:
        """Make served bot ``bot`` a member of group ``chat`` (from now on it gets its messages)."""
        members = self._group_members[chat["id"]]
        if members is not None:
            members.add(self.account(bot).id)

    def leave(self, chat: JSON, bot: BotRef) -> None:
        """Take served bot ``bot`` out of group ``chat``: no more updates from it, sendMessage 403."""
        members = self._group_members[chat["id"]]
        if members is None:
            members = self._group_members[chat["id"]] = {a.id for a in self.accounts.values()}
        members.discard(self.account(bot).id)

    def members(self, chat: JSON) -> list[JSON]:
        """The Users of the served bots in group ``chat``."""
        return [account.user for account in self._members(chat["id"])]

    def topic(self, chat: JSON, name: str = "Topic", *, creator: JSON | str | None = None) -> int:
        """Open a forum topic in ``chat``; returns its ``message_thread_id`` (the service message id)."""
        if not chat.get("is_forum"):
            raise ValueError("topics exist only in forum supergroups: group(..., forum=True)")
        message = self._new_message(chat, self._user(creator or "admin"))
        message["forum_topic_created"] = {"name": name, "icon_color": 7322096}
        message["message_thread_id"] = message["message_id"]
        message["is_topic_message"] = True
        return int(message["message_id"])

    def private_message(
        self, user: JSON | str, text: str, *, reply_to: JSON | None = None, bot: BotRef | None = None
    ) -> JSON:
        """Queue a message from ``user`` to ``bot`` (default: the default bot) in their private chat;
        returns the Update. From then on that bot may write to the user."""
        account = self.account(bot)
        sender = self._user(user)
        chat = self._private_chat(sender)
        account.private_chats.add(chat["id"])
        message = self._new_message(chat, sender, text, reply_to=reply_to)
        update = {"update_id": next(self._update_ids), "message": message}
        self._queue(account, update)
        return update

    def group_message(
        self,
        chat: JSON,
        user: JSON | str,
        text: str,
        *,
        mention_bot: bool | BotRef = False,
        reply_to: JSON | None = None,
        thread: int | None = None,
        text_mentions: Sequence[tuple[JSON, str]] = (),
        sender_chat: JSON | None = None,
        author_signature: str | None = None,
    ) -> JSON:
        """Queue a group message to every served bot in ``chat`` that may see it (see the module
        docstring). ``mention_bot`` prefixes ``@username`` of the default bot (True) or of the served
        bot it names; ``reply_to`` is a sent or received message (or update); ``thread`` a forum
        topic id; ``text_mentions`` pairs a user with the text that names them; ``sender_chat`` the
        chat a person speaks as (set to ``chat`` when ``user`` is :data:`GROUP_ANONYMOUS_BOT`).
        Returns the Update (one for all recipients), or the bare Message when no bot gets it."""
        if mention_bot is not False and mention_bot is not None:
            target = self.default if mention_bot is True else self.account(mention_bot)
            text = f"@{target.username} {text}"
        sender = self._user(user)
        message = self._new_message(chat, sender, text, reply_to=reply_to, thread=thread)
        for target_user, name in text_mentions:
            start = text.index(name)
            message.setdefault("entities", []).append(
                {
                    "type": "text_mention",
                    "offset": utf16_len(text[:start]),
                    "length": utf16_len(name),
                    "user": target_user,
                }
            )
        if sender_chat is None and sender.get("id") == GROUP_ANONYMOUS_BOT_ID:
            sender_chat = chat
        if sender_chat is not None:
            message["sender_chat"] = dict(sender_chat)
        if author_signature:
            message["author_signature"] = author_signature
        return self._fan_out(message)

    def anonymous_admin_message(
        self, chat: JSON, text: str, *, signature: str | None = None, **kw: Any
    ) -> JSON:
        """Queue ``text`` from an admin posting anonymously: ``from`` is GroupAnonymousBot (``is_bot``
        true), ``sender_chat`` the group, ``author_signature`` the admin's custom title if any.
        Other keywords as for :meth:`group_message`."""
        return self.group_message(chat, dict(GROUP_ANONYMOUS_BOT), text, author_signature=signature, **kw)

    def command(
        self,
        user: JSON | str,
        name: str,
        args: str = "",
        *,
        chat: JSON | None = None,
        to: str | bool | BotRef | None = None,
        thread: int | None = None,
        bot: BotRef | None = None,
    ) -> JSON:
        """Queue ``/name[@to] args`` in ``chat`` or privately to ``bot`` (default: the default bot).
        ``to=True``: ``bot``'s username; a username string as is; a served bot's User: its username."""
        account = self.account(bot)
        if to is True:
            target: str | None = account.username
        elif isinstance(to, dict | BotAccount):
            target = self.account(to).username
        else:
            target = to or None
        text = f"/{name}" + (f"@{target}" if target else "") + (f" {args}" if args else "")
        if chat is None:
            return self.private_message(user, text, bot=account)
        return self.group_message(chat, user, text, thread=thread)

    def push_raw(self, update: JSON, *, bot: BotRef | Sequence[BotRef] | None = None) -> JSON:
        """Queue ``update`` as is (malformed ones too); an ``update_id`` is added when missing.
        It goes to ``bot`` (one or a list) when given; else a message in a group made by
        :meth:`group` goes to the member bots that may see it, anything else to the default bot."""
        update = dict(update)
        update.setdefault("update_id", next(self._update_ids))
        if bot is not None:
            listed = bot if isinstance(bot, list | tuple | set) else [bot]
            targets = [self.account(b) for b in listed]
        else:
            message = update.get("message")
            chat = message.get("chat") if isinstance(message, dict) else None
            chat_id = chat.get("id") if isinstance(chat, dict) else None
            if isinstance(message, dict) and chat_id in self._group_members:
                targets = [a for a in self._members(chat_id) if self._sees(a, message)]
            else:
                targets = [self.default]
        for account in targets:
            self._queue(account, update)
        return update

    def redeliver(self, update: JSON, *, bot: BotRef | None = None) -> JSON:
        """Queue ``update`` again for ``bot`` under the same ``update_id``, as Telegram does when a bot
        did not confirm it (a crash before the offset moved on)."""
        account = self.account(bot)
        self._queue(account, update)
        account.pending.sort(key=lambda u: u.get("update_id", 0))
        return update

    def fail_next(
        self,
        method: str,
        retry_after: float | None = 1,
        *,
        status: int = 429,
        description: str | None = None,
        bot: BotRef | None = None,
    ) -> None:
        """Answer ``bot``'s next call of ``method`` with an error: by default Telegram's flood control
        (429 ``Too Many Requests: retry after N`` with ``parameters.retry_after``)."""
        if status == 429:
            text = description or f"Too Many Requests: retry after {retry_after}"
            error = ApiError(429, text, {"retry_after": retry_after})
        else:
            error = ApiError(status, description or "Internal Server Error")
        self.account(bot)._failures.setdefault(method.lower(), []).append(error)

    async def webhook_post(
        self,
        update: JSON | None = None,
        *,
        secret: str | None = None,
        body: bytes | None = None,
        bot: BotRef | None = None,
    ) -> int:
        """POST ``update`` (or raw ``body``) to ``bot``'s webhook with ``secret`` as the secret header
        (None: no header); returns the HTTP status. Bypasses the queue (nothing is retried)."""
        hook = self.account(bot).webhook
        if hook is None or self._session is None:
            raise RuntimeError("no webhook is set")
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        data = body if body is not None else json.dumps(update).encode()
        async with self._session.post(hook["url"], data=data, headers=headers) as response:
            return response.status

    # -- what the bots did ---------------------------------------------------------------------
    async def next_sent(self, timeout: float = 5.0, *, bot: BotRef | None = None) -> JSON:
        """The next message ``bot`` (default: the default bot) sends, in order; each is returned once."""
        account = self.account(bot)
        try:
            return await asyncio.wait_for(account._sent_queue.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"@{account.username} sent no message within {timeout:g}s") from None

    def requests(self, method: str, *, bot: BotRef | None = None) -> list[JSON]:
        """Decoded parameters of every call of ``method`` by ``bot`` so far."""
        return [params for name, params in self.account(bot).calls if name.lower() == method.lower()]

    def update_for(self, message: JSON, *, bot: BotRef | None = None) -> JSON | None:
        """The Update that carried ``message`` (a Message or an Update) to ``bot``, or None."""
        message = message.get("message", message)
        key = (message.get("chat", {}).get("id"), message.get("message_id"))
        for update in self.account(bot).updates:
            carried = update.get("message")
            if carried is message or (
                isinstance(carried, dict)
                and isinstance(carried.get("chat"), dict)
                and (carried["chat"].get("id"), carried.get("message_id")) == key
            ):
                return update
        return None

    def delivered_to(self, item: JSON) -> list[JSON]:
        """The Users of the served bots that got ``item`` (an Update, or a Message), in serving order."""
        if "update_id" in item:
            return [
                a.user
                for a in self.accounts.values()
                if any(u.get("update_id") == item["update_id"] for u in a.updates)
            ]
        return [a.user for a in self.accounts.values() if self.update_for(item, bot=a) is not None]

    def is_confirmed(self, update: JSON | int, *, bot: BotRef | None = None) -> bool:
        """Whether ``bot`` confirmed ``update`` (an Update, its id, or a Message it was sent)."""
        account = self.account(bot)
        update_id = self._update_id(update, account)
        if update_id is None:
            return False
        still_pending = any(u.get("update_id") == update_id for u in account.pending)
        return not still_pending and account.confirmed_offset > update_id

    async def wait_confirmed(
        self, update: JSON | int, timeout: float = 5.0, *, bot: BotRef | None = None
    ) -> None:
        """Wait until ``bot`` confirmed ``update`` (getUpdates with a higher offset, or a 2xx answer
        to its webhook delivery). ``update`` may be a Message: the Update that carried it to ``bot``
        (LookupError when there was none)."""
        account = self.account(bot)
        if self._update_id(update, account) is None:
            raise LookupError(f"that message was never delivered to @{account.username}")
        what = f"@{account.username} to confirm update {self._update_id(update, account)}"
        await self.wait_for(lambda: self.is_confirmed(update, bot=account), timeout, what=what)

    async def wait_all_confirmed(self, timeout: float = 5.0) -> None:
        """Wait until every served bot confirmed every update queued for it so far."""
        await self.wait_for(
            lambda: not any(a.pending for a in self.accounts.values()), timeout, what="all updates confirmed"
        )

    async def wait_sent(self, count: int, timeout: float = 5.0, *, bot: BotRef | None = None) -> list[JSON]:
        """Wait until ``bot`` sent at least ``count`` messages in all; returns its sent list."""
        account = self.account(bot)
        what = f"@{account.username} to have sent {count} message(s)"
        await self.wait_for(lambda: len(account.sent) >= count, timeout, what=what)
        return account.sent

    async def wait_for(
        self, ready: Callable[[], bool], timeout: float = 5.0, *, what: str = "a condition"
    ) -> None:
        """Wait until ``ready()`` holds (checked whenever the server's state changes);
        TimeoutError naming ``what`` after ``timeout`` seconds."""
        try:
            await self._wait_until(ready, timeout)
        except TimeoutError:
            raise TimeoutError(f"waited {timeout:g}s for {what}") from None

    def _update_id(self, update: JSON | int, account: BotAccount) -> int | None:
        if isinstance(update, int):
            return update
        if "update_id" in update:
            return int(update["update_id"])
        found = self.update_for(update, bot=account)
        return int(found["update_id"]) if found is not None else None

    # -- HTTP ----------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        account = self.accounts.get(token)
        if account is None:
            if _TOKEN.match(token):
                return _answer(ApiError(401, "Unauthorized").body(), 401)
            return _answer(ApiError(404, "Not Found").body(), 404)
        if method.lower() not in self._methods:
            return _answer(ApiError(404, "Not Found").body(), 404)
        name, handler = self._methods[method.lower()]
        try:
            params = await _decode_params(request)
        except ValueError as exc:
            return _answer(_bad_request(str(exc)).body(), 400)
        account.calls.append((name, params))
        failures = account._failures.get(method.lower())
        try:
            if failures:
                raise failures.pop(0)
            result = await handler(account, params)
        except ApiError as exc:
            return _answer(exc.body(), exc.status)
        return _answer({"ok": True, "result": result}, 200)

    # -- methods -------------------------------------------------------------------------------
    async def _get_me(self, account: BotAccount, params: JSON) -> JSON:
        return {
            **account.user,
            "can_join_groups": True,
            "can_read_all_group_messages": not account.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, account: BotAccount, params: JSON) -> list[JSON]:
        if account.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset, limit = _int(params, "offset", 0), _int(params, "limit", 100)
        timeout = min(max(_int(params, "timeout", 0), 0), 50)
        if "allowed_updates" in params:
            account.allowed_updates = params["allowed_updates"] or None
        self._confirm(account, offset)
        account._poll_generation += 1
        generation = account._poll_generation
        with contextlib.suppress(TimeoutError):
            await self._wait_until(
                lambda: bool(account.pending) or self._closing or generation != account._poll_generation,
                timeout,
            )
        if generation != account._poll_generation:
            raise ApiError(
                409,
                "Conflict: terminated by other getUpdates request; "
                "make sure that only one bot instance is running",
            )
        return account.pending[: max(1, min(limit, 100))]

    def _confirm(self, account: BotAccount, offset: int) -> None:
        if offset < 0:  # -N: only the last N updates are kept
            keep = account.pending[offset:]
            if keep:
                account.confirmed_offset = max(account.confirmed_offset, keep[0].get("update_id", 0))
            account.pending = keep
        elif offset > 0:
            account.pending = [u for u in account.pending if u.get("update_id", 0) >= offset]
            account.confirmed_offset = max(account.confirmed_offset, offset)
        self._notify()

    async def _set_webhook(self, account: BotAccount, params: JSON) -> bool:
        url = params.get("url") or ""
        if not url:  # Telegram: an empty url removes the webhook
            return await self._delete_webhook(account, params)
        if not re.match(r"^https?://[^/\s]+", str(url)):
            raise _bad_request("bad webhook: Failed to resolve host: Name or service not known")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.match(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            account.pending.clear()
        account.webhook = {
            "url": str(url),
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
        }
        if account._deliverer is None or account._deliverer.done():
            account._deliverer = asyncio.create_task(self._deliver_to_webhook(account))
        account._poll_generation += 1  # a waiting getUpdates gives way
        self._notify()
        return True

    async def _delete_webhook(self, account: BotAccount, params: JSON) -> bool:
        account.webhook = None
        if params.get("drop_pending_updates"):
            account.pending.clear()
        self._notify()
        return True

    async def _get_webhook_info(self, account: BotAccount, params: JSON) -> JSON:
        info: JSON = {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(account.pending),
        }
        if account.webhook:
            info["url"] = account.webhook["url"]
            if account.webhook.get("allowed_updates"):
                info["allowed_updates"] = account.webhook["allowed_updates"]
        return info

    async def _send_message(self, account: BotAccount, params: JSON) -> JSON:
        chat = self._chat(account, params)
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _bad_request("message text is empty")
        plain = _render(text, params.get("parse_mode")).strip()  # Telegram trims messages
        if not plain:
            raise _bad_request("message text is empty")
        if utf16_len(plain) > MAX_MESSAGE_UTF16:
            raise _bad_request("message is too long")
        reply_to = self._reply_target(chat, params)
        thread = _int(params, "message_thread_id", 0) or None
        if thread is not None and chat.get("is_forum") and (chat["id"], thread) not in self._messages:
            raise _bad_request("message thread not found")
        message = self._new_message(chat, account.user, plain, reply_to=reply_to, thread=thread)
        account.sent.append(message)
        account.sent_at.append(time.monotonic())
        self.all_sent.append(message)
        account._sent_queue.put_nowait(message)
        if chat["id"] in self._group_members:
            self._fan_out(message)  # other bots in Bot-to-Bot Communication Mode
        self._notify()
        return message

    async def _send_chat_action(self, account: BotAccount, params: JSON) -> bool:
        chat = self._chat(account, params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        account.chat_actions.append(
            {
                "chat_id": chat["id"],
                "action": params["action"],
                "message_thread_id": params.get("message_thread_id"),
            }
        )
        self._notify()
        return True

    async def _edit_message_text(self, account: BotAccount, params: JSON) -> JSON:
        chat = self._chat(account, params)
        message = self._messages.get((chat["id"], _int(params, "message_id", 0)))
        if message is None or message.get("from", {}).get("id") != account.id:
            raise _bad_request("message to edit not found")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _bad_request("message text is empty")
        plain = _render(text, params.get("parse_mode")).strip()
        if utf16_len(plain) > MAX_MESSAGE_UTF16:
            raise _bad_request("MESSAGE_TOO_LONG")
        if plain == message.get("text"):
            raise _bad_request(
                "message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup "
                "of the message"
            )
        message["text"], message["edit_date"] = plain, int(time.time())
        account.edits.append(dict(message))
        self._notify()
        return message

    async def _answer_callback_query(self, account: BotAccount, params: JSON) -> bool:
        if not params.get("callback_query_id"):
            raise _bad_request("query is too old and response timeout expired or query ID is invalid")
        account.callback_answers.append(params)
        return True

    # -- helpers -------------------------------------------------------------------------------
    def _user(self, user: JSON | str) -> JSON:
        if isinstance(user, dict):
            return user
        return self._users_by_name.get(user.lower()) or self.user(user.capitalize(), user)

    def _private_chat(self, user: JSON) -> JSON:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        for key in ("last_name", "username"):
            if key in user:
                chat[key] = user[key]
        self._chats[chat["id"]] = chat
        return chat

    def _chat(self, account: BotAccount, params: JSON) -> JSON:
        """The chat ``params`` names, if ``account`` may write there."""
        chat_id = params.get("chat_id")
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        chat = self._chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise _bad_request("chat not found")
        if chat["type"] == "private" and chat["id"] not in account.private_chats:
            raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        if chat["id"] in self._group_members and account not in self._members(chat["id"]):
            kind = "supergroup chat" if chat["type"] == "supergroup" else "group chat"
            raise ApiError(403, f"Forbidden: bot is not a member of the {kind}")
        return chat

    def _members(self, chat_id: Any) -> list[BotAccount]:
        members = self._group_members.get(chat_id)
        if members is None:
            return list(self.accounts.values())
        return [a for a in self.accounts.values() if a.id in members]

    def _reply_target(self, chat: JSON, params: JSON) -> JSON | None:
        reply = params.get("reply_parameters")
        if reply is None and params.get("reply_to_message_id") is not None:
            reply = {
                "message_id": params["reply_to_message_id"],
                "allow_sending_without_reply": params.get("allow_sending_without_reply", False),
            }
        if not isinstance(reply, dict):
            return None
        target_chat = self._chats.get(reply.get("chat_id"), chat) if "chat_id" in reply else chat
        target = self._messages.get((target_chat["id"], int(reply.get("message_id", 0))))
        if target is None and not reply.get("allow_sending_without_reply"):
            raise _bad_request("message to be replied not found")
        return target

    def _new_message(
        self,
        chat: JSON,
        sender: JSON,
        text: str | None = None,
        *,
        reply_to: JSON | None = None,
        thread: int | None = None,
    ) -> JSON:
        ids = self._message_ids.setdefault(chat["id"], itertools.count(1))
        message: JSON = {"message_id": next(ids), "from": sender, "chat": chat, "date": int(time.time())}
        if thread is not None and chat.get("is_forum"):
            message["message_thread_id"] = thread
            message["is_topic_message"] = True
            if reply_to is None:  # in a topic, Telegram points at the topic's opening message
                reply_to = self._messages.get((chat["id"], thread))
        if text is not None:
            message["text"] = text
            found = _entities(text)
            if found:
                message["entities"] = found
        if reply_to is not None:
            replied = reply_to.get("message", reply_to)  # an Update or a Message
            message["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    def _sees(self, account: BotAccount, message: JSON) -> bool:
        """Whether ``account`` receives group ``message``: never its own; other bots' only in
        Bot-to-Bot Communication Mode; in privacy mode only what is addressed to it."""
        sender = message.get("from") if isinstance(message.get("from"), dict) else {}
        if sender.get("id") == account.id:
            return False
        if sender.get("is_bot") and sender.get("id") not in _SERVICE_ACCOUNTS and not account.bot_to_bot:
            return False
        return not account.privacy_mode or self._visible_with_privacy(account, message)

    def _visible_with_privacy(self, account: BotAccount, message: JSON) -> bool:
        """What a bot in privacy mode receives from a group: commands, mentions, replies to it,
        service messages."""
        if any(key in message for key in _SERVICE_KEYS):
            return True
        try:
            has_text = "text" in message
            text = message.get("text" if has_text else "caption") or ""
            entities = message.get("entities" if has_text else "caption_entities") or []
            username = account.username.lower()
            for entity in entities:
                piece = _utf16_slice(text, entity["offset"], entity["length"]).lower()
                if entity["type"] == "bot_command" and ("@" not in piece or piece.endswith("@" + username)):
                    return True
                if entity["type"] == "mention" and piece == "@" + username:
                    return True
            replied = message.get("reply_to_message") or {}
            return replied.get("from", {}).get("id") == account.id and "forum_topic_created" not in replied
        except (AttributeError, KeyError, TypeError, ValueError):
            return True  # a malformed message (push_raw): let the bot cope with it

    def _fan_out(self, message: JSON) -> JSON:
        """Queue group ``message`` for every member bot that sees it; the Update, or the Message if
        none does."""
        recipients = [a for a in self._members(message["chat"]["id"]) if self._sees(a, message)]
        if not recipients:
            return message
        update = {"update_id": next(self._update_ids), "message": message}
        for account in recipients:
            self._queue(account, update)
        return update

    def _queue(self, account: BotAccount, update: JSON) -> JSON:
        account.pending.append(update)
        account.updates.append(update)
        self._notify()
        return update

    def _notify(self) -> None:
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def _wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not ready():
                await self._pulse.wait()

    async def _deliver_to_webhook(self, account: BotAccount) -> None:
        """Push ``account``'s queued updates to its webhook one at a time, oldest first, until each
        gets a 2xx."""
        while account.webhook is not None and not self._closing:
            if not account.pending:
                pulse = self._pulse
                await pulse.wait()
                continue
            update, hook = account.pending[0], account.webhook
            status = await self._post_update(hook, update)
            account.webhook_deliveries.append((update.get("update_id", 0), status))
            if 200 <= status < 300:
                with contextlib.suppress(ValueError):
                    account.pending.remove(update)
                account.confirmed_offset = max(account.confirmed_offset, update.get("update_id", 0) + 1)
                self._notify()
            else:
                await asyncio.sleep(self.webhook_retry_s)

    async def _post_update(self, hook: JSON, update: JSON) -> int:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if hook.get("secret_token"):
            headers[SECRET_HEADER] = hook["secret_token"]
        try:
            async with self._session.post(
                hook["url"], data=json.dumps(update), headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


# -- body decoding, markup and entities ---------------------------------------------------------
async def _decode_params(request: web.Request) -> JSON:
    params: JSON = dict(request.query)
    if request.method == "GET" or not request.can_read_body:
        return {k: _field(k, v) for k, v in params.items()}
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise ValueError("can't parse JSON request body") from None
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        params.update(body)
        return params
    form = await request.post()  # urlencoded or multipart (PTB sends forms); files stay FileFields
    params.update(form.items())
    return {k: _field(k, v) if isinstance(v, str) else v for k, v in params.items()}


def _field(key: str, value: str) -> Any:
    """Form values arrive as strings; non-string parameters are JSON-encoded by the client."""
    if key in _STRING_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _int(params: JSON, key: str, default: int) -> int:
    value = params.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid {key} specified") from None


def _answer(body: JSON, status: int) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _entities(text: str) -> list[JSON]:
    """Mentions and bot commands the way Telegram finds them, with UTF-16 offsets and lengths."""
    found = [("mention", m) for m in _MENTION.finditer(text)]
    found += [("bot_command", m) for m in _COMMAND.finditer(text)]
    found.sort(key=lambda item: item[1].start())
    return [
        {"type": kind, "offset": utf16_len(text[: m.start()]), "length": utf16_len(m.group(0))}
        for kind, m in found
    ]


def _utf16_slice(text: str, offset: int, length: int) -> str:
    units = text.encode("utf-16-le")
    return units[offset * 2 : (offset + length) * 2].decode("utf-16-le", errors="replace")


def _render(text: str, parse_mode: Any) -> str:
    """The text a user would see, or 400 ``can't parse entities`` as Telegram answers bad markup."""
    mode = str(parse_mode or "").lower()
    if not mode:
        return text
    if mode == "html":
        checker = _HtmlChecker()
        checker.feed(text)
        checker.close()
        return checker.finish()
    if mode in {"markdown", "markdownv2"}:
        return _strip_markdown(text, v2=mode == "markdownv2")
    raise _bad_request(f"unsupported parse_mode {parse_mode}")


class _HtmlChecker(HTMLParser):
    """Telegram's HTML: a fixed set of tags, properly nested; anything else is an error."""

    ALLOWED: ClassVar[frozenset[str]] = frozenset({
        "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a",
        "tg-spoiler", "span", "blockquote", "tg-emoji",
    })  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.ALLOWED:
            raise _bad_request(f'can\'t parse entities: Unsupported start tag "{tag}"')
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            raise _bad_request(f'can\'t parse entities: Unmatched end tag "{tag}"')
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def finish(self) -> str:
        if self.stack:
            tag = self.stack[-1]
            raise _bad_request(
                f"can't parse entities: Can't find end tag corresponding to start tag \"{tag}\""
            )
        return "".join(self.parts)


_V2_RESERVED = set("_*[]()~`>#+-=|{}.!")


def _strip_markdown(text: str, *, v2: bool) -> str:
    """Check entity markers are closed (and, in MarkdownV2, reserved characters escaped)."""
    marks = "*_`~" if v2 else "*_`"
    out: list[str] = []
    open_marks: list[tuple[str, int]] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and v2 and index + 1 < len(text):
            out.append(text[index + 1])
            index += 2
            continue
        if char in marks:
            if open_marks and open_marks[-1][0] == char:
                open_marks.pop()
            else:
                open_marks.append((char, len(text[:index].encode())))
        elif v2 and char in _V2_RESERVED and char not in "[]()":
            raise _bad_request(
                f"can't parse entities: Character '{char}' is reserved and must be "
                "escaped with the preceding '\\'"
            )
        else:
            out.append(char)
        index += 1
    if open_marks:
        raise _bad_request(
            f"can't parse entities: Can't find end of the entity starting at byte offset {open_marks[0][1]}"
        )
    return "".join(out)


__all__ = [
    "CHANNEL_BOT_ID",
    "GROUP_ANONYMOUS_BOT",
    "GROUP_ANONYMOUS_BOT_ID",
    "MAX_MESSAGE_UTF16",
    "SECRET_HEADER",
    "ApiError",
    "BotAccount",
    "BotRef",
    "TelegramServer",
    "utf16_len",
]
