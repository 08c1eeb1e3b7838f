"""The path of one message: inbound middleware -> command router -> listeners -> agent -> outbound.

One bad event never stops the pipeline: every error is logged with the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cachetools import TTLCache

from bots.core.adapter import Adapter, StreamingAdapter
from bots.core.audit import AuditLog
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound
from bots.core.history import History
from bots.core.loops import BotPolicy, LoopGuard
from bots.core.metrics import HostMetrics
from bots.core.outbound import deliver
from bots.core.outbox import Outbox
from bots.core.permissions import NOT_ALLOWED, Permissions, Role
from bots.core.quota import Quotas
from bots.core.raid import RaidGuard
from bots.core.ratelimit import RateLimiter
from bots.core.routing import Dispatch, Invocation
from bots.core.sanitize import clean_user_text

log = logging.getLogger("bots.pipeline")

ReplyPolicy = Literal["mention-only", "keywords", "always"]
# Inbound middleware: return None to let the message through, or the reason to drop it.
InboundMiddleware = Callable[[Invocation], Awaitable[str | None]]

COMMAND_FAILED = "That command failed. The operators can find the details in the log."
DM_ONLY = "That command only works in a direct message."


class Responder(Protocol):
    """The agent fallback, as the pipeline sees it."""

    async def respond(self, inv: Invocation) -> str: ...

    def stream(self, inv: Invocation) -> AsyncIterator[str]: ...


@dataclass
class PipelineSettings:
    bot: str
    command_prefix: str = "/"
    reply_policy: ReplyPolicy = "mention-only"
    keywords: list[str] = field(default_factory=list)
    group_scope: Literal["group", "user"] = "group"
    muted: set[str] = field(default_factory=set)
    busy_reply: str = "One moment, please: too many messages at once."
    quota_reply: str = "That is enough for today. Come back tomorrow."
    per_user_limit: str = "12/minute"
    per_chat_limit: str = "40/minute"
    joins_per_chat: str = "10/minute"
    raid_minutes: float = 10.0
    max_input_chars: int = 4000  # longer messages are cut before anything else sees them
    answer_bots: bool | list[str] = False  # other bots answered: none, all, or these (bots.core.loops)
    own_accounts: set[str] = field(default_factory=set)  # this host's bot accounts, shared by its bots


def session_id(event: MessageEvent, group_scope: str) -> str:
    """DM: per user. Group/thread: shared per chat, or per member of the chat."""
    if event.channel.kind is ChannelKind.DM:
        return event.author.canonical
    if group_scope == "user":
        return f"{event.channel.canonical}/{event.author.canonical}"
    return event.channel.canonical


class Pipeline:
    def __init__(
        self,
        settings: PipelineSettings,
        dispatch: Dispatch,
        permissions: Permissions,
        responder: Responder | None = None,
        audit: AuditLog | None = None,
        quotas: Quotas | None = None,
        outbox: Outbox | None = None,
        history: History | None = None,
        loops: LoopGuard | None = None,
        metrics: HostMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or HostMetrics()  # the host's: replies counted as messages out
        self.dispatch = dispatch
        self.permissions = permissions
        self.responder = responder
        self.audit = audit
        self.quotas = quotas or Quotas()
        self.outbox = outbox  # replies recorded under a key per event, so a replay never repeats one
        self.history = history  # group messages kept for digests
        self.loops = loops or LoopGuard(None, settings.bot)  # budgets of bot-to-bot turns per chat
        self._bots = BotPolicy(settings.answer_bots)
        self.errors: deque[str] = deque(maxlen=5)  # the last errors, for the admin status
        self._limiter = RateLimiter(settings.per_user_limit, settings.per_chat_limit)
        self.raids = RaidGuard(settings.joins_per_chat, settings.raid_minutes)
        self._told_busy: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=60)
        self._told_quota: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=6 * 3600)
        self._keywords = [k.lower() for k in settings.keywords if k]
        self.inbound: list[InboundMiddleware] = [
            self._drop_own,
            self._drop_bots,
            self._drop_commands_for_others,
            self._drop_banned,
            self._drop_raiders,
            self._drop_muted,
            self._rate_limit,
            self._quota,
        ]

    def use_persona_settings(
        self, *, reply_policy: ReplyPolicy, keywords: list[str], busy_reply: str, quota_reply: str
    ) -> None:
        """The persona-derived settings, when an operator switches or reloads the persona."""
        self.settings.reply_policy = reply_policy
        self.settings.keywords = keywords
        self.settings.busy_reply = busy_reply
        self.settings.quota_reply = quota_reply
        self._keywords = [k.lower() for k in keywords if k]

    # -- entry point ---------------------------------------------------------------------------
    async def handle(self, event: MessageEvent, adapter: Adapter, *, replay: bool = False) -> None:
        """Process one event. ``replay``: an earlier run accepted it and stopped before the end."""
        try:
            await self._handle(event, adapter, replay)
        except Exception as exc:
            log.exception("event %s: unhandled error; the pipeline goes on", _safe_id(event))
            self.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def _handle(self, event: MessageEvent, adapter: Adapter, replay: bool) -> None:
        inv = self._classify(event, adapter)
        inv.replay = replay
        for middleware in self.inbound:
            reason = await middleware(inv)
            if reason:
                log.debug("event %s dropped: %s", event.id, reason)
                return
        if event.joined:
            await self._joins(inv)
            return
        if inv.command is not None:
            await self._run_command(inv, adapter)
            return
        if self.history is not None and not replay:
            self.history.record(self.settings.bot, event, inv.text)
        if await self._listeners(inv):
            return
        if inv.addressed and self.responder is not None:
            await self._answer(inv, adapter)

    async def _listeners(self, inv: Invocation) -> bool:
        """Plugins' listeners by priority; True when one of them stopped propagation."""
        for listener in self.dispatch.listeners:
            if listener.addressed_only and not inv.addressed:
                continue
            try:
                if await listener.handler(inv):
                    return True
            except Exception:
                log.exception("event %s: listener of plugin %s failed", inv.event.id, listener.plugin)
        return False

    # -- classification ----------------------------------------------------------------------
    def _classify(self, event: MessageEvent, adapter: Adapter) -> Invocation:
        event.session_id = session_id(event, self.settings.group_scope)
        text = clean_user_text(_strip_self_mentions(event)[: self.settings.max_input_chars])
        is_dm = event.channel.kind is ChannelKind.DM
        addressed = is_dm or event.to_me or event.mentions_me or event.replies_to_me
        if not addressed and self.settings.reply_policy == "always":
            addressed = True
        if not addressed and self.settings.reply_policy == "keywords" and self._keywords:
            lowered = text.lower()
            addressed = any(k in lowered for k in self._keywords)
        inv = Invocation(
            event=event,
            text=text,
            addressed=addressed,
            role=self.permissions.role_of(event.author.canonical),
        )
        inv._reply = lambda reply_text: self._reply(inv, adapter, reply_text)
        self._parse_command(inv, event)
        return inv

    def _parse_command(self, inv: Invocation, event: MessageEvent) -> None:
        prefix = self.settings.command_prefix
        text = inv.text.strip()
        if prefix and text.startswith(prefix) and text[len(prefix) : len(prefix) + 1].strip():
            head, _, rest = text[len(prefix) :].partition(" ")
            name, _, target = head.partition("@")  # Telegram's /cmd@botname
            if target and event.self_name and target.lower() != event.self_name.lower():
                inv.command_for_other = True
                return
        elif event.mentions_me or event.to_me:
            # "@bot help": a known command name right after the mention
            head, _, rest = text.partition(" ")
            name = head if self.dispatch.command(head) else ""
        else:
            return
        if name:
            inv.command, inv.args = name.lower(), rest.strip()

    # -- inbound middleware ------------------------------------------------------------------
    async def _drop_own(self, inv: Invocation) -> str | None:
        event = inv.event
        if event.self_id:  # known to every bot of the host: a sibling's message is a bot's
            self.settings.own_accounts.add(f"{event.platform}:{event.self_id}")
        return "own message" if event.self_id and event.author.id == event.self_id else None

    async def _drop_bots(self, inv: Invocation) -> str | None:
        """Other bots are not answered unless allowed, and then only within the chat's budget of
        bot-to-bot turns; their commands run only when the bot holds an operator role."""
        event = inv.event
        chat = event.channel.canonical
        if not (event.author.is_bot or event.author.canonical in self.settings.own_accounts):
            if inv.addressed and event.channel.kind is not ChannelKind.DM:
                await self.loops.human_spoke(chat)  # a person talks to this bot: a new budget
            return None
        if inv.command is not None:
            return None if inv.role >= Role.OPERATOR else "a command from a bot"
        if not self._bots.allows(event.author):
            return "a message from a bot"
        if inv.addressed and not await self.loops.bot_turn(chat):
            return "the chat's budget of bot-to-bot turns is spent"
        return None

    async def _drop_commands_for_others(self, inv: Invocation) -> str | None:
        return "a command for another bot" if inv.command_for_other else None

    async def _drop_banned(self, inv: Invocation) -> str | None:
        return "banned user" if inv.role is Role.BANNED else None

    async def _drop_raiders(self, inv: Invocation) -> str | None:
        event = inv.event
        held = self.raids.is_raider(event.channel.canonical, event.author.canonical)
        return "joined during a raid" if held and inv.role < Role.OPERATOR else None

    async def _drop_muted(self, inv: Invocation) -> str | None:
        return "muted chat" if inv.event.channel.canonical in self.settings.muted else None

    async def _rate_limit(self, inv: Invocation) -> str | None:
        if not (inv.addressed or inv.command) or inv.role >= Role.OPERATOR:
            return None  # plain chatter costs nothing; operators are never throttled
        event = inv.event
        reason = self._limiter.check(event.author.canonical, event.channel.canonical)
        if reason:
            # tell each user once per window; when the whole chat is over, tell the chat once
            who = event.channel.canonical if reason.startswith("chat") else event.author.canonical
            if who not in self._told_busy:
                self._told_busy[who] = True
                await inv.reply(self.settings.busy_reply)
        return reason

    async def _quota(self, inv: Invocation) -> str | None:
        """Daily quotas apply to what reaches the model: addressed messages that are no command."""
        if inv.command is not None or not inv.addressed or inv.role >= Role.OPERATOR or inv.replay:
            return None  # a replay was counted when it first came
        user = inv.event.author.canonical
        await self.quotas.refresh()
        reason = self.quotas.over(user)
        if reason is None:
            self.quotas.count_message(user)
            return None
        if user not in self._told_quota:
            self._told_quota[user] = True
            await inv.reply(self.settings.quota_reply)
        return reason

    async def _joins(self, inv: Invocation) -> None:
        """A join reaches the plugins (a greeting), unless it is part of a flood."""
        event = inv.event
        joiners = [f"{event.platform}:{j.user_id}" for j in event.joined]
        if self.raids.on_joins(event.channel.canonical, joiners):
            log.debug("event %s: %d join(s) during a raid; not passed on", event.id, len(joiners))
            return
        inv.addressed = False  # a join never reaches the agent, nor addressed-only listeners
        await self._listeners(inv)

    # -- commands ------------------------------------------------------------------------------
    async def _run_command(self, inv: Invocation, adapter: Adapter) -> None:
        entry = self.dispatch.command(inv.command or "")
        event = inv.event
        if inv.replay and self.outbox is not None and await self.outbox.recorded(self._reply_key(inv)):
            # it ran and answered before the restart: running it again would repeat what it did
            log.info("event %s: /%s answered before the restart; not run again", event.id, inv.command)
            await self.outbox.resume(self._reply_key(inv, advance=True), lambda _name: adapter)
            return
        if entry is None:
            # an unknown /command in a group may belong to another bot: answer only when spoken to
            if (
                event.channel.kind is ChannelKind.DM
                or event.to_me
                or event.mentions_me
                or event.replies_to_me
            ):
                prefix = self.settings.command_prefix
                await inv.reply(f"Unknown command {prefix}{inv.command}. Try {prefix}help.")
            return
        if entry.dm_only and event.channel.kind is not ChannelKind.DM:
            await inv.reply(DM_ONLY)
            return
        if inv.role < entry.permission:
            log.info("event %s: %s refused /%s", event.id, event.author.canonical, entry.name)
            await self._audit(inv, entry.permission, "refused")
            await inv.reply(NOT_ALLOWED)
            return
        try:
            await entry.handler(inv)
        except Exception as exc:
            log.exception("event %s: command /%s of plugin %s failed", event.id, entry.name, entry.plugin)
            self.errors.append(f"/{entry.name}: {type(exc).__name__}: {exc}"[:200])
            await self._audit(inv, entry.permission, f"error: {type(exc).__name__}")
            await inv.reply(COMMAND_FAILED)
            return
        await self._audit(inv, entry.permission, "ok")

    async def _audit(self, inv: Invocation, permission: Role, result: str) -> None:
        """Admin commands (operator level and up) are written to the audit log, refusals too."""
        if self.audit is None or permission < Role.OPERATOR:
            return
        event = inv.event
        await self.audit.record(
            bot=self.settings.bot,
            actor=event.author.canonical,
            channel=event.channel.canonical,
            command=inv.command or "",
            args=inv.args,
            result=result,
        )

    # -- agent and outbound --------------------------------------------------------------------
    async def _answer(self, inv: Invocation, adapter: Adapter) -> None:
        assert self.responder is not None
        event = inv.event
        if adapter.capabilities.streaming and isinstance(adapter, StreamingAdapter):
            # the adapter owns length limits while streaming; aclosing frees the session even
            # when the adapter stops reading early
            async with contextlib.aclosing(self.responder.stream(inv)) as chunks:
                await adapter.send_stream(event.channel, chunks, _reply_to(event))
            self.metrics.message_out(self.settings.bot, adapter.platform)
            return
        if inv.replay and self.outbox is not None and await self.outbox.recorded(self._reply_key(inv)):
            # a replay after a restart: the answer was written before; send what is left of it
            log.info("event %s: answer found in the outbox; not generating it again", event.id)
            await self.outbox.resume(self._reply_key(inv, advance=True), lambda _name: adapter)
            return
        async with _Typing(adapter, event.channel):
            text = await self.responder.respond(inv)
        await self._reply(inv, adapter, text)

    async def _reply(self, inv: Invocation, adapter: Adapter, text: str) -> None:
        event = inv.event
        outbound = Outbound(event.channel, text, reply_to=_reply_to(event))
        key = self._reply_key(inv, advance=True)
        if self.outbox is None:
            await deliver(adapter, outbound)
        else:
            await self.outbox.deliver(self.settings.bot, adapter, outbound, key, fresh=not inv.replay)
        self.metrics.message_out(self.settings.bot, adapter.platform)

    def _reply_key(self, inv: Invocation, *, advance: bool = False) -> str:
        """The idempotency key of the invocation's next reply: the same on a replay."""
        key = reply_key(self.settings.bot, inv.event.id, inv.replies)
        if advance:
            inv.replies += 1
        return key


def reply_key(bot: str, event_id: str, index: int = 0) -> str:
    """The outbox key of a bot's ``index``-th reply to an event."""
    return f"{bot}|{event_id}|{index}"


TYPING_EVERY_S = 4.0  # Telegram shows "typing" for 5 s, Discord for 10 s
TYPING_AFTER_S = 0.15  # no one sees "typing" flash for an answer ready sooner


class _Typing:
    """Keep the channel's typing indicator on while the body runs (where the channel has one),
    from ``TYPING_AFTER_S`` on: an answer ready sooner costs the platform no typing call. A class,
    not an ``asynccontextmanager``: every answer enters it, and an async generator per answer
    cost more than the rest of it."""

    __slots__ = ("_adapter", "_channel", "_task", "_timer")

    def __init__(self, adapter: Adapter, channel: ChannelRef) -> None:
        self._adapter = adapter
        self._channel = channel
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # started by the timer

    async def __aenter__(self) -> None:
        typing = getattr(self._adapter, "typing", None)  # a TypingAdapter (isinstance on a Protocol is slow)
        if typing is not None:
            self._timer = asyncio.get_running_loop().call_later(TYPING_AFTER_S, self._start, typing)

    def _start(self, typing: Callable[[ChannelRef], Awaitable[None]]) -> None:
        self._task = asyncio.create_task(_keep_typing(typing, self._channel))

    async def __aexit__(self, *_exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _keep_typing(typing: Callable[[ChannelRef], Awaitable[None]], channel: ChannelRef) -> None:
    while True:
        await typing(channel)
        await asyncio.sleep(TYPING_EVERY_S)


def _reply_to(event: MessageEvent) -> str | None:
    """In groups an answer threads to its trigger; in a DM it needs no reference."""
    return None if event.channel.kind is ChannelKind.DM else event.message_id


def _safe_id(event: object) -> str:
    try:
        return event.id  # type: ignore[attr-defined,no-any-return]
    except Exception:
        return repr(getattr(event, "message_id", event))[:80]


def _strip_self_mentions(event: MessageEvent) -> str:
    text = event.text
    for mention in event.mentions:
        if mention.user_id == event.self_id and mention.name:
            text = re.sub(rf"@{re.escape(mention.name)}[,:：，]?\s*", "", text)
    return text.strip()
