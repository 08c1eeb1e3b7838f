"""The Telegram channel: python-telegram-bot's ``ExtBot`` inside our loop, long polling or a webhook.

Updates are acknowledged only after the host accepted them: in polling mode the offset moves past
an update once ``sink`` returned (or the update was judged unusable and skipped); in webhook mode the
HTTP answer is 200 only then (500 makes Telegram deliver it again). One bad update is logged by type
and ids, never by content, and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import re
import warnings
from datetime import timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from telegram import LinkPreviewOptions, Message, MessageEntity, ReplyParameters, Update
from telegram.constants import ChatAction, ChatType
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import AIORateLimiter, ExtBot
from telegram.warnings import PTBUserWarning
from yarl import URL

from bots.core.adapter import Capabilities, EventSink
from bots.core.config import ConfigError, channel_options
from bots.core.events import (
    Attachment,
    ChannelKind,
    ChannelRef,
    Joined,
    Mention,
    MessageEvent,
    Outbound,
    ReplyTo,
    Segment,
    SentRef,
    UserRef,
)

log = logging.getLogger("bots.adapters.telegram")

OFFICIAL_API = "https://api.telegram.org"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message"]  # the only kind translated; Telegram then creates no others for us
TYPING_EVERY_S = 3.0  # Telegram shows "typing" for 5 s; closer calls to one chat are skipped
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_CHAT_KINDS = {ChatType.PRIVATE: ChannelKind.DM, ChatType.GROUP: ChannelKind.GROUP,
               ChatType.SUPERGROUP: ChannelKind.GROUP}  # fmt: skip


class TelegramOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "telegram" may set."""

    model_config = ConfigDict(extra="forbid")
    token_env: str = Field("TELEGRAM_BOT_TOKEN", pattern=_ENV_NAME)
    base_url: str = OFFICIAL_API  # a self-hosted Bot API server, or an emulator in tests
    mode: Literal["polling", "webhook"] = "polling"
    poll_timeout: int = Field(30, ge=1, le=50)  # seconds one getUpdates long poll may wait
    # webhook mode: the public URL Telegram calls (https for api.telegram.org); with a self-hosted
    # Bot API server it may be left out and is then http://{listen}:{port}{path}
    webhook_url: str | None = None
    listen: str = "127.0.0.1"  # behind a reverse proxy; "0.0.0.0" to take Telegram's calls directly
    port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    path: str = Field("/telegram", pattern=r"^/[A-Za-z0-9_./~-]*$")
    secret_env: str = Field("TELEGRAM_WEBHOOK_SECRET", pattern=_ENV_NAME)

    @field_validator("base_url", "webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _webhook_needs_public_url(self) -> TelegramOptions:
        official = URL(self.base_url).host == URL(OFFICIAL_API).host
        if self.mode == "webhook" and official:
            if self.webhook_url is None:
                raise ValueError("webhook mode needs webhook_url: the public https URL Telegram calls")
            if URL(self.webhook_url).scheme != "https":
                raise ValueError("api.telegram.org calls webhooks over https only; webhook_url must be https")
        return self


class MessageRateLimiter(AIORateLimiter):
    """PTB's limiter (30 requests a second, 20 a minute into one group), except for typing
    indicators: Telegram's limits are on messages, and counting "typing" (every 3 s while a
    model writes) used up half of a busy group's 20, so replies waited seconds behind it.
    ``typing`` already sends at most one per chat every few seconds."""

    async def process_request(
        self,
        callback: Any,
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        if endpoint == "sendChatAction":
            return await callback(*args, **kwargs)
        return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)


class TelegramAdapter:
    """A Telegram bot account as a channel: private chats, groups and forum topics."""

    platform = "telegram"
    retry_initial_s = 0.5  # first pause after a failed poll or a refused event (doubles, capped)
    retry_max_s = 30.0

    def __init__(
        self, name: str, token: str, settings: TelegramOptions, *, webhook_secret: str | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = Capabilities(
            max_length=4096,
            length_unit="utf16",
            markup=frozenset({"plain", "markdown"}),
            edits=False,
            threads=True,
        )
        self.self_id = ""
        self.self_name = ""
        self.webhook_port: int | None = None  # the bound port in webhook mode
        self._token = token
        self._webhook_secret = webhook_secret
        self._bot: ExtBot[Any] | None = None
        self._sink: EventSink | None = None
        self._offset = 0
        self._poller: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._typing_at: dict[str, float] = {}

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> TelegramAdapter:
        settings = channel_options(TelegramOptions, name, "telegram", options)
        token = secrets.require(settings.token_env, f"channel {name} (telegram)").get_secret_value()
        secret = None
        if settings.mode == "webhook":
            purpose = f"channel {name} (telegram webhook secret)"
            secret = secrets.require(settings.secret_env, purpose).get_secret_value()
            if not _SECRET.match(secret):
                raise ConfigError(
                    f"channel {name} (telegram): {settings.secret_env} must be 1-256 characters of "
                    "A-Z, a-z, 0-9, _ and - (Telegram's rule for webhook secret tokens)"
                )
        return cls(name, token, settings, webhook_secret=secret)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, sink: EventSink) -> None:
        """Check the token (getMe), then start polling or serve the webhook; return once running."""
        self._sink = sink
        base = self.settings.base_url
        self._bot = ExtBot(
            self._token,
            base_url=f"{base}/bot",
            base_file_url=f"{base}/file/bot",
            rate_limiter=MessageRateLimiter(max_retries=3),  # waits out 429 retry_after and resends
        )
        try:
            await self._initialize(self._bot)
            if self.settings.mode == "webhook":
                await self._start_webhook(self._bot)
            else:
                await self._bot.delete_webhook(drop_pending_updates=False)
                # getUpdates goes through do_api_request to get raw dicts; PTB warns about that
                warnings.filterwarnings(
                    "ignore", message=r"Please use 'Bot\.getUpdates'", category=PTBUserWarning
                )
                self._poller = asyncio.create_task(self._poll_forever(), name=f"telegram-poll-{self.name}")
        except BaseException:
            await self.stop()
            raise
        log.info(
            "channel %s: Telegram bot @%s (%s), %s mode",
            self.name,
            self.self_name,
            self.self_id,
            self.settings.mode,
        )

    async def _initialize(self, bot: ExtBot[Any]) -> None:
        try:
            await bot.initialize()  # getMe
        except InvalidToken as exc:
            # PTB's own message quotes the token; ours names only where it came from
            cause = exc.__cause__.message if isinstance(exc.__cause__, TelegramError) else "Unauthorized"
            status = "404 Not Found: the token is malformed" if cause == "Not Found" else "401 Unauthorized"
            raise ConfigError(
                f"channel {self.name}: Telegram rejected the token in {self.settings.token_env} ({status}); "
                "copy it again from @BotFather"
            ) from None
        self.self_id, self.self_name = str(bot.id), bot.username

    async def stop(self) -> None:
        if self._poller and self._poller is not asyncio.current_task():
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        self._poller = None
        if self._runner:
            await self._runner.cleanup()
            self._runner = None
        if self._bot:
            with contextlib.suppress(Exception):
                await self._bot.shutdown()
            self._bot = None

    # -- polling -------------------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        """getUpdates, hand over, repeat; errors pause the loop (capped exponential), never end it."""
        pause = self.retry_initial_s
        while True:
            try:
                all_accepted = await self._handle_batch(await self._get_updates())
            except RetryAfter as exc:
                delay = exc.retry_after
                await asyncio.sleep(delay.total_seconds() if isinstance(delay, timedelta) else float(delay))
                continue
            except Exception as exc:
                self._log_poll_error(exc)
                all_accepted = False
            if all_accepted:
                pause = self.retry_initial_s
            else:
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.retry_max_s)

    def _log_poll_error(self, exc: Exception) -> None:
        if isinstance(exc, InvalidToken | EndPointNotFound):  # after getMe, a 401/404 is a revoked token
            log.error(
                "channel %s: Telegram no longer accepts the token in %s", self.name, self.settings.token_env
            )
        elif isinstance(exc, Conflict):
            log.warning("channel %s: %s (another instance polling?)", self.name, exc.message)
        elif isinstance(exc, TelegramError):
            log.warning("channel %s: getUpdates failed (%s: %s)", self.name, type(exc).__name__, exc.message)
        else:
            log.exception("channel %s: polling failed", self.name)

    async def _get_updates(self) -> list[Any]:
        assert self._bot is not None
        timeout = self.settings.poll_timeout
        result = await self._bot.do_api_request(
            "getUpdates",
            api_kwargs={"offset": self._offset, "timeout": timeout, "allowed_updates": ALLOWED_UPDATES},
            read_timeout=timeout + 10,
        )
        return result if isinstance(result, list) else []

    async def _handle_batch(self, updates: list[Any]) -> bool:
        """Hand the updates over concurrently (one commit for the batch, not one each), then move
        the offset past those accepted. They start in update order, and each takes its place in
        its chat's queue as it starts, so every chat keeps its order. False when the host refused
        one: the offset stops there, and Telegram sends it again with those after it (dropped as
        duplicates when they were accepted)."""
        assert self._sink is not None
        batch: list[tuple[int, MessageEvent | None]] = []
        for raw in updates:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if not isinstance(update_id, int):
                log.warning(
                    "channel %s: an update without update_id skipped (%s)", self.name, type(raw).__name__
                )
                continue
            if update_id >= self._offset:  # else already handed over
                batch.append((update_id, self._decode(raw)))
        handed = [self._sink(event) for _, event in batch if event is not None]
        outcomes = iter(await asyncio.gather(*handed, return_exceptions=True))
        for update_id, event in batch:
            outcome = next(outcomes) if event is not None else None
            if isinstance(outcome, BaseException):
                log.error(
                    "channel %s: update %s not accepted; retrying", self.name, update_id, exc_info=outcome
                )
                return False
            self._offset = update_id + 1  # confirmed to Telegram by the next getUpdates
        return True

    # -- webhook -------------------------------------------------------------------------------
    async def _start_webhook(self, bot: ExtBot[Any]) -> None:
        settings = self.settings
        app = web.Application()
        app.router.add_post(settings.path, self._on_webhook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, settings.listen, settings.port).start()
        self.webhook_port = int(self._runner.addresses[0][1])
        url = settings.webhook_url or f"http://{settings.listen}:{self.webhook_port}{settings.path}"
        await bot.set_webhook(url, secret_token=self._webhook_secret, allowed_updates=ALLOWED_UPDATES)
        log.info(
            "channel %s: webhook on %s:%s%s", self.name, settings.listen, self.webhook_port, settings.path
        )

    async def _on_webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "replace")
        assert self._webhook_secret is not None and self._sink is not None
        if not hmac.compare_digest(given, self._webhook_secret.encode()):
            log.warning(
                "channel %s: webhook call from %s without the right secret; refused",
                self.name,
                request.remote,
            )
            return web.Response(status=403)
        try:
            raw = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            log.warning("channel %s: webhook call with a body that is not JSON; refused", self.name)
            return web.Response(status=400)
        if not isinstance(raw, dict):
            return web.Response(status=400)
        event = self._decode(raw)
        if event is not None:
            try:
                await self._sink(event)
            except Exception:
                log.exception(
                    "channel %s: update %s not accepted; Telegram will retry", self.name, raw.get("update_id")
                )
                return web.Response(status=500)
        return web.Response(status=200)

    # -- inbound translation -------------------------------------------------------------------
    def _decode(self, raw: dict[str, Any]) -> MessageEvent | None:
        """The event in ``raw``, or None for updates we skip (logged: kind and ids, no content)."""
        if "message" not in raw:  # edited messages, channel posts, ...: not for us
            kind = next((key for key in raw if key != "update_id"), "empty")
            log.debug("channel %s: update %s (%s) ignored", self.name, raw.get("update_id"), kind)
            return None
        try:
            return self._translate(Update.de_json(raw, self._bot), raw)
        except Exception as exc:
            log.warning(
                "channel %s: malformed update %s skipped (%s, chat %s)",
                self.name, raw.get("update_id"), type(exc).__name__, _chat_id_of(raw),
            )  # fmt: skip
            return None

    def _translate(self, update: Update, raw: dict[str, Any]) -> MessageEvent | None:
        message = update.message
        if message is None:
            return None
        chat = message.chat
        if chat is None or chat.id is None:  # PTB accepts a message without a chat
            raise ValueError("message without chat")
        kind = _CHAT_KINDS.get(chat.type)  # type: ignore[call-overload]
        if kind is None:
            log.debug("channel %s: message in a %s chat ignored", self.name, chat.type)
            return None
        channel = ChannelRef(self.platform, str(chat.id), kind, name=chat.title or chat.full_name or "")
        if message.is_topic_message and message.message_thread_id:
            channel = ChannelRef(
                self.platform, f"{chat.id}:{message.message_thread_id}", ChannelKind.THREAD,
                name=chat.title or "", parent_id=str(chat.id),
            )  # fmt: skip
        return MessageEvent(
            platform=self.platform,
            message_id=str(message.message_id),
            author=_author(message),
            channel=channel,
            text=message.text or message.caption or "",
            self_id=self.self_id,
            self_name=self.self_name,
            segments=tuple(self._segments(message)),
            timestamp=message.date,
            raw=raw,
        )

    def _segments(self, message: Message) -> list[Segment]:
        segments: list[Segment] = []
        kinds = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION]
        entities = message.parse_entities(kinds) if message.text else message.parse_caption_entities(kinds)
        for entity, text in sorted(entities.items(), key=lambda item: item[0].offset):
            if entity.type == MessageEntity.TEXT_MENTION and entity.user:
                segments.append(Mention(str(entity.user.id), text))
            elif entity.type == MessageEntity.MENTION:
                username = text.removeprefix("@")
                is_me = username.lower() == self.self_name.lower()
                segments.append(Mention(self.self_id if is_me else username, username))
        replied = message.reply_to_message
        if replied is not None and replied.forum_topic_created is None:  # not a topic's opening message
            author = str(replied.from_user.id) if replied.from_user else ""
            segments.append(ReplyTo(str(replied.message_id), author_id=author))
        segments.extend(_attachments(message))
        segments.extend(Joined(str(user.id), user.full_name) for user in message.new_chat_members or ())
        return segments

    # -- outbound ------------------------------------------------------------------------------
    async def send(self, outbound: Outbound) -> SentRef:
        bot = self._require_bot()
        chat_id, thread_id = _split_channel_id(outbound.target.id)
        text, parse_mode = render(outbound.text, outbound.markup)
        reply = None
        if outbound.reply_to and outbound.reply_to.isdigit():
            reply = ReplyParameters(int(outbound.reply_to), allow_sending_without_reply=True)
        message = await bot.send_message(
            chat_id=chat_id,
            text=text,
            parse_mode=parse_mode,
            message_thread_id=thread_id,
            reply_parameters=reply,
            link_preview_options=LinkPreviewOptions(is_disabled=True),
        )
        return SentRef(self.platform, outbound.target.id, str(message.message_id))

    def transient(self, exc: BaseException) -> bool:
        """A send worth trying again: the network or Telegram's side failed (timeouts and 5xx are
        NetworkError), not the request itself (BadRequest, Forbidden)."""
        return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest)

    async def typing(self, channel: ChannelRef) -> None:
        """Show "typing..." in ``channel`` once; never raises."""
        bot = self._bot
        if bot is None:
            return
        now = asyncio.get_running_loop().time()
        if now - self._typing_at.get(channel.id, float("-inf")) < TYPING_EVERY_S:
            return
        if len(self._typing_at) > 1000:
            self._typing_at.clear()
        self._typing_at[channel.id] = now
        chat_id, thread_id = _split_channel_id(channel.id)
        try:
            async with asyncio.timeout(5):  # the rate limiter may hold it; a late indicator is useless
                await bot.send_chat_action(chat_id, ChatAction.TYPING, message_thread_id=thread_id)
        except Exception as exc:
            log.debug(
                "channel %s: typing indicator in %s failed (%s)", self.name, channel.id, type(exc).__name__
            )

    def _require_bot(self) -> ExtBot[Any]:
        if self._bot is None:
            raise RuntimeError(f"channel {self.name} is not started; cannot send")
        return self._bot


# -- helpers ------------------------------------------------------------------------------------
# Telegram's stand-ins when a person speaks as a chat: an anonymous group admin, a linked channel.
# They are flagged is_bot, but a person is behind them.
SERVICE_ACCOUNTS = {1087968824, 136817688}  # GroupAnonymousBot, Channel_Bot


def _author(message: Message) -> UserRef:
    user = message.from_user
    speaks_as_chat = message.sender_chat is not None and (user is None or user.id in SERVICE_ACCOUNTS)
    if speaks_as_chat:  # an anonymous admin or a linked channel speaks as the chat
        sender = message.sender_chat
        return UserRef("telegram", str(sender.id), name=sender.title or sender.full_name or "")
    if user is not None:
        name = user.full_name or user.username or ""
        return UserRef("telegram", str(user.id), name=name, is_bot=user.is_bot, username=user.username or "")
    raise ValueError("message without sender")


def _attachments(message: Message) -> list[Attachment]:
    found: list[Attachment] = []
    if message.photo:
        found.append(Attachment("image"))
    if message.document:
        found.append(Attachment("file", name=message.document.file_name or ""))
    for kind, media in (("video", message.video), ("audio", message.audio), ("audio", message.voice),
                        ("sticker", message.sticker)):  # fmt: skip
        if media is not None:
            found.append(Attachment(kind))
    return found


def _chat_id_of(raw: dict[str, Any]) -> str:
    message = raw.get("message")
    chat = message.get("chat") if isinstance(message, dict) else None
    return str(chat.get("id")) if isinstance(chat, dict) else "?"


def _split_channel_id(channel_id: str) -> tuple[int | str, int | None]:
    """``"-100123:7"`` is topic 7 of chat -100123; ``"@name"`` stays a public username."""
    chat, _, thread = channel_id.partition(":")
    chat_id: int | str = int(chat) if re.fullmatch(r"-?\d+", chat) else chat
    return chat_id, int(thread) if thread.isdigit() else None


_FENCE = re.compile(r"```(?:([A-Za-z0-9_+-]+)\n|\n?)(.+?)```", re.DOTALL)  # ```lang\ncode``` or ```code```
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL)


def render(text: str, markup: str) -> tuple[str, str | None]:
    """Text and parse_mode for Telegram. Plain text goes without parse_mode, so ``*``, ``_`` or ``<``
    in a model's answer can never break a send; "markdown" becomes Telegram HTML (bold, code, code
    blocks) with everything else escaped."""
    if markup != "markdown":
        return text, None
    return markdown_to_html(text), "HTML"


def markdown_to_html(text: str) -> str:
    return _convert(text, _FENCE, _code_block, lambda rest: _convert(rest, _INLINE_CODE, _inline_code, _bold))


def _convert(text: str, pattern: re.Pattern[str], matched: Any, between: Any) -> str:
    out, pos = [], 0
    for match in pattern.finditer(text):
        out.append(between(text[pos : match.start()]))
        out.append(matched(match))
        pos = match.end()
    out.append(between(text[pos:]))
    return "".join(out)


def _code_block(match: re.Match[str]) -> str:
    language, code = match.group(1), html.escape(match.group(2), quote=False)
    if language:
        return f'<pre><code class="language-{language}">{code}</code></pre>'
    return f"<pre>{code}</pre>"


def _inline_code(match: re.Match[str]) -> str:
    return f"<code>{html.escape(match.group(1), quote=False)}</code>"


def _bold(text: str) -> str:
    return _convert(
        text,
        _BOLD,
        lambda m: f"<b>{html.escape(m.group(1), quote=False)}</b>",
        lambda s: html.escape(s, quote=False),
    )
