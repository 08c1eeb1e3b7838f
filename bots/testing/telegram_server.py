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
unknown method, 400 ``Bad Request: ...`` for bad input, 409 for getUpdates while a webhook is set
or when a newer getUpdates takes over, 429 with ``parameters.retry_after`` on :meth:`fail_next`).
Methods: getMe, getUpdates (long poll honouring ``offset``, ``limit`` and ``timeout``),
setWebhook / deleteWebhook / getWebhookInfo, sendMessage (checks the 4096 UTF-16 unit limit, empty
text, HTML and Markdown markup, reply parameters), sendChatAction, editMessageText and
answerCallbackQuery. ``allowed_updates`` is recorded (:attr:`TelegramServer.allowed_updates`), not
applied.

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
:meth:`~TelegramServer.wait_confirmed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from html.parser import HTMLParser
from typing import Any, ClassVar

import aiohttp
from aiohttp import web

JSON = dict[str, Any]
MAX_MESSAGE_UTF16 = 4096
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
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


class TelegramServer:
    """A fake Bot API on 127.0.0.1 for one bot (``token``); see the module docstring for a tour."""

    def __init__(
        self,
        token: str = "123456:TEST-token",
        *,
        username: str = "persona_test_bot",
        first_name: str = "Persona",
        privacy_mode: bool = False,
        webhook_retry_s: float = 0.2,
    ) -> None:
        match = _TOKEN.match(token)
        if not match:
            raise ValueError("a bot token looks like '123456:ABC-def' (the bot id, a colon, a secret)")
        self.token = token
        self.privacy_mode = privacy_mode  # groups deliver only commands, mentions and replies to the bot
        self.webhook_retry_s = webhook_retry_s  # pause before a failed webhook delivery is retried
        self.bot: JSON = {
            "id": int(match.group(1)),
            "is_bot": True,
            "first_name": first_name,
            "username": username,
        }
        self.sent: list[JSON] = []  # messages the bot sent, in order
        self.calls: list[tuple[str, JSON]] = []  # every method call (canonical name, decoded params)
        self.chat_actions: list[JSON] = []
        self.edits: list[JSON] = []
        self.callback_answers: list[JSON] = []
        self.confirmed_offset = 0  # the highest offset the bot confirmed (all updates below are gone)
        self.allowed_updates: list[str] | None = None
        self.webhook: JSON | None = None  # {"url", "secret_token", "allowed_updates"} while set
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status; 0: unreachable)
        self._pending: list[JSON] = []  # queued updates not yet confirmed
        self._update_ids = itertools.count(700_000_001)
        self._user_ids = itertools.count(1_000_001)
        self._group_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._chats: dict[int, JSON] = {}
        self._messages: dict[tuple[int, int], JSON] = {}
        self._users_by_name: dict[str, JSON] = {}
        self._failures: dict[str, list[ApiError]] = {}
        self._sent_queue: asyncio.Queue[JSON] = asyncio.Queue()
        self._pulse = asyncio.Event()  # set (and replaced) whenever the state changes
        self._poll_generation = 0
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._deliverer: asyncio.Task[None] | None = None
        self.port = 0
        methods: dict[str, Callable[[JSON], Awaitable[Any]]] = {
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
        if self._deliverer:
            self._deliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deliverer
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
        """A new user (``username`` may be None: users without one are mentioned by text_mention)."""
        user: JSON = {
            "id": next(self._user_ids),
            "is_bot": is_bot,
            "first_name": first_name,
            "language_code": "en",
        }
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username
            self._users_by_name[username.lower()] = user
        return user

    def group(self, title: str = "Test group", *, supergroup: bool = True, forum: bool = False) -> JSON:
        """A group chat the bot is a member of (supergroup ids look like -100..., forums are supergroups)."""
        number = next(self._group_ids)
        if supergroup or forum:
            chat: JSON = {"id": -1_001_000_000_000 - number, "type": "supergroup", "title": title}
            if forum:
                chat["is_forum"] = True
        else:
            chat = {"id": -4_000_000_000 - number, "type": "group", "title": title}
        self._chats[chat["id"]] = chat
        return chat

    def topic(self, chat: JSON, name: str = "Topic", *, creator: JSON | str | None = None) -> int:
        """Open a forum topic in ``chat``; returns its ``message_thread_id`` (the service message id)."""
        if not chat.get("is_forum"):
            raise ValueError("topics exist only in forum supergroups: group(..., forum=True)")
        message = self._new_message(chat, self._user(creator or "admin"))
        message["forum_topic_created"] = {"name": name, "icon_color": 7322096}
        message["message_thread_id"] = message["message_id"]
        message["is_topic_message"] = True
        return int(message["message_id"])

    def private_message(self, user: JSON | str, text: str, *, reply_to: JSON | None = None) -> JSON:
        """Queue a message from ``user`` to the bot in their private chat; returns the Update."""
        sender = self._user(user)
        chat = self._private_chat(sender)
        return self._queue_message(self._new_message(chat, sender, text, reply_to=reply_to))

    def group_message(
        self,
        chat: JSON,
        user: JSON | str,
        text: str,
        *,
        mention_bot: bool = False,
        reply_to: JSON | None = None,
        thread: int | None = None,
        text_mentions: Sequence[tuple[JSON, str]] = (),
    ) -> JSON:
        """Queue a group message; ``mention_bot`` prefixes ``@bot_username``; ``reply_to`` is a sent
        or received message (or update); ``thread`` a forum topic id; ``text_mentions`` pairs a user
        with the text that names them. Returns the Update (or the bare Message when privacy mode
        keeps it from the bot)."""
        if mention_bot:
            text = f"@{self.bot['username']} {text}"
        sender = self._user(user)
        message = self._new_message(chat, sender, text, reply_to=reply_to, thread=thread)
        for target, name in text_mentions:
            start = text.index(name)
            message.setdefault("entities", []).append(
                {
                    "type": "text_mention",
                    "offset": utf16_len(text[:start]),
                    "length": utf16_len(name),
                    "user": target,
                }
            )
        if self.privacy_mode and not self._visible_with_privacy(message):
            return message
        return self._queue_message(message)

    def command(
        self,
        user: JSON | str,
        name: str,
        args: str = "",
        *,
        chat: JSON | None = None,
        to: str | bool | None = None,
        thread: int | None = None,
    ) -> JSON:
        """Queue ``/name[@to] args`` (``to=True``: this bot's username) in ``chat`` or privately."""
        target = self.bot["username"] if to is True else to
        text = f"/{name}" + (f"@{target}" if target else "") + (f" {args}" if args else "")
        if chat is None:
            return self.private_message(user, text)
        return self.group_message(chat, user, text, thread=thread)

    def push_raw(self, update: JSON) -> JSON:
        """Queue ``update`` as is (malformed ones too); an ``update_id`` is added when missing."""
        update = dict(update)
        update.setdefault("update_id", next(self._update_ids))
        return self._queue(update)

    def redeliver(self, update: JSON) -> JSON:
        """Queue ``update`` again under the same ``update_id``, as Telegram does when a bot did not
        confirm it (a crash before the offset moved on)."""
        self._pending.append(update)
        self._pending.sort(key=lambda u: u.get("update_id", 0))
        self._notify()
        return update

    def fail_next(
        self, method: str, retry_after: float | None = 1, *, status: int = 429, description: str | None = None
    ) -> None:
        """Answer the next call of ``method`` with an error: by default Telegram's flood control
        (429 ``Too Many Requests: retry after N`` with ``parameters.retry_after``)."""
        if status == 429:
            text = description or f"Too Many Requests: retry after {retry_after}"
            error = ApiError(429, text, {"retry_after": retry_after})
        else:
            error = ApiError(status, description or "Internal Server Error")
        self._failures.setdefault(method.lower(), []).append(error)

    async def webhook_post(
        self, update: JSON | None = None, *, secret: str | None = None, body: bytes | None = None
    ) -> int:
        """POST ``update`` (or raw ``body``) to the webhook with ``secret`` as the secret header
        (None: no header); returns the HTTP status. Bypasses the queue (nothing is retried)."""
        if self.webhook is None or self._session is None:
            raise RuntimeError("no webhook is set")
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers[SECRET_HEADER] = secret
        data = body if body is not None else json.dumps(update).encode()
        async with self._session.post(self.webhook["url"], data=data, headers=headers) as response:
            return response.status

    # -- what the bot did ----------------------------------------------------------------------
    async def next_sent(self, timeout: float = 5.0) -> JSON:
        """The next message the bot sends (in order; each is returned once)."""
        return await asyncio.wait_for(self._sent_queue.get(), timeout)

    def requests(self, method: str) -> list[JSON]:
        """Decoded parameters of every call of ``method`` so far."""
        return [params for name, params in self.calls if name.lower() == method.lower()]

    def is_confirmed(self, update: JSON | int) -> bool:
        update_id = update if isinstance(update, int) else update["update_id"]
        still_pending = any(u.get("update_id") == update_id for u in self._pending)
        return not still_pending and self.confirmed_offset > update_id

    async def wait_confirmed(self, update: JSON | int, timeout: float = 5.0) -> None:
        """Wait until the bot confirmed ``update`` (getUpdates with a higher offset, or a 2xx answer
        to its webhook delivery)."""
        await self._wait_until(lambda: self.is_confirmed(update), timeout)

    # -- HTTP ----------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        if token != self.token:
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
        self.calls.append((name, params))
        failures = self._failures.get(method.lower())
        try:
            if failures:
                raise failures.pop(0)
            result = await handler(params)
        except ApiError as exc:
            return _answer(exc.body(), exc.status)
        return _answer({"ok": True, "result": result}, 200)

    # -- methods -------------------------------------------------------------------------------
    async def _get_me(self, params: JSON) -> JSON:
        return {
            **self.bot,
            "can_join_groups": True,
            "can_read_all_group_messages": not self.privacy_mode,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, params: JSON) -> list[JSON]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset, limit = _int(params, "offset", 0), _int(params, "limit", 100)
        timeout = min(max(_int(params, "timeout", 0), 0), 50)
        if "allowed_updates" in params:
            self.allowed_updates = params["allowed_updates"] or None
        self._confirm(offset)
        self._poll_generation += 1
        generation = self._poll_generation
        with contextlib.suppress(TimeoutError):
            await self._wait_until(
                lambda: bool(self._pending) or self._closing or generation != self._poll_generation, timeout
            )
        if generation != self._poll_generation:
            raise ApiError(
                409,
                "Conflict: terminated by other getUpdates request; "
                "make sure that only one bot instance is running",
            )
        return self._pending[: max(1, min(limit, 100))]

    def _confirm(self, offset: int) -> None:
        if offset < 0:  # -N: only the last N updates are kept
            keep = self._pending[offset:]
            if keep:
                self.confirmed_offset = max(self.confirmed_offset, keep[0].get("update_id", 0))
            self._pending = keep
        elif offset > 0:
            self._pending = [u for u in self._pending if u.get("update_id", 0) >= offset]
            self.confirmed_offset = max(self.confirmed_offset, offset)
        self._notify()

    async def _set_webhook(self, params: JSON) -> bool:
        url = params.get("url") or ""
        if not url:  # Telegram: an empty url removes the webhook
            return await self._delete_webhook(params)
        if not re.match(r"^https?://[^/\s]+", str(url)):
            raise _bad_request("bad webhook: Failed to resolve host: Name or service not known")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET.match(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._pending.clear()
        self.webhook = {
            "url": str(url),
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
        }
        if self._deliverer is None or self._deliverer.done():
            self._deliverer = asyncio.create_task(self._deliver_to_webhook())
        self._poll_generation += 1  # a waiting getUpdates gives way
        self._notify()
        return True

    async def _delete_webhook(self, params: JSON) -> bool:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self._pending.clear()
        self._notify()
        return True

    async def _get_webhook_info(self, params: JSON) -> JSON:
        info: JSON = {"url": "", "has_custom_certificate": False, "pending_update_count": len(self._pending)}
        if self.webhook:
            info["url"] = self.webhook["url"]
            if self.webhook.get("allowed_updates"):
                info["allowed_updates"] = self.webhook["allowed_updates"]
        return info

    async def _send_message(self, params: JSON) -> JSON:
        chat = self._chat(params)
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
        message = self._new_message(chat, self.bot, plain, reply_to=reply_to, thread=thread, entities=False)
        self.sent.append(message)
        self._sent_queue.put_nowait(message)
        self._notify()
        return message

    async def _send_chat_action(self, params: JSON) -> bool:
        chat = self._chat(params)
        if params.get("action") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        self.chat_actions.append(
            {
                "chat_id": chat["id"],
                "action": params["action"],
                "message_thread_id": params.get("message_thread_id"),
            }
        )
        self._notify()
        return True

    async def _edit_message_text(self, params: JSON) -> JSON:
        chat = self._chat(params)
        message = self._messages.get((chat["id"], _int(params, "message_id", 0)))
        if message is None or message.get("from", {}).get("id") != self.bot["id"]:
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
        self.edits.append(dict(message))
        self._notify()
        return message

    async def _answer_callback_query(self, params: JSON) -> bool:
        if not params.get("callback_query_id"):
            raise _bad_request("query is too old and response timeout expired or query ID is invalid")
        self.callback_answers.append(params)
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

    def _chat(self, params: JSON) -> JSON:
        chat_id = params.get("chat_id")
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        chat = self._chats.get(chat_id) if isinstance(chat_id, int) else None
        if chat is None:
            raise _bad_request("chat not found")
        return chat

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
        entities: bool = True,
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
            found = _entities(text) if entities else []
            if found:
                message["entities"] = found
        if reply_to is not None:
            replied = reply_to.get("message", reply_to)  # an Update or a Message
            message["reply_to_message"] = {k: v for k, v in replied.items() if k != "reply_to_message"}
        self._messages[(chat["id"], message["message_id"])] = message
        return message

    def _visible_with_privacy(self, message: JSON) -> bool:
        """What a bot in privacy mode receives from a group: commands, mentions, replies to it."""
        text, username = message.get("text", ""), self.bot["username"].lower()
        for entity in message.get("entities", []):
            piece = _utf16_slice(text, entity["offset"], entity["length"]).lower()
            if entity["type"] == "bot_command" and ("@" not in piece or piece.endswith("@" + username)):
                return True
            if entity["type"] == "mention" and piece == "@" + username:
                return True
        replied = message.get("reply_to_message") or {}
        return replied.get("from", {}).get("id") == self.bot["id"] and "forum_topic_created" not in replied

    def _queue_message(self, message: JSON) -> JSON:
        return self._queue({"update_id": next(self._update_ids), "message": message})

    def _queue(self, update: JSON) -> JSON:
        self._pending.append(update)
        self._notify()
        return update

    def _notify(self) -> None:
        self._pulse.set()
        self._pulse = asyncio.Event()

    async def _wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not ready():
                await self._pulse.wait()

    async def _deliver_to_webhook(self) -> None:
        """Push queued updates to the webhook one at a time, oldest first, until each gets a 2xx."""
        while self.webhook is not None and not self._closing:
            if not self._pending:
                pulse = self._pulse
                await pulse.wait()
                continue
            update, hook = self._pending[0], self.webhook
            status = await self._post_update(hook, update)
            self.webhook_deliveries.append((update.get("update_id", 0), status))
            if 200 <= status < 300:
                with contextlib.suppress(ValueError):
                    self._pending.remove(update)
                self.confirmed_offset = max(self.confirmed_offset, update.get("update_id", 0) + 1)
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


__all__ = ["MAX_MESSAGE_UTF16", "SECRET_HEADER", "ApiError", "TelegramServer", "utf16_len"]
