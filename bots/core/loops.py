"""Bots never talk themselves into a loop.

By default a bot does not answer other bots: the platform's bot flag, or one of this host's own
accounts (two personas in one group). Where an operator allows some (``answer_bots``), each chat
has a budget of consecutive bot-to-bot turns: a person speaking to the bot starts a new budget;
past it, bot messages in that chat are ignored for a cool-down. The counts are kept in the
database, so a restart in the middle of a loop does not hand it a fresh budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bots.core.events import UserRef
from bots.core.storage import Database, KeyValueStore

log = logging.getLogger("bots.loops")


@dataclass(slots=True)
class ChatTurns:
    bot_turns: int = 0  # bot messages answered since a human last spoke
    quiet_until: float = 0.0  # wall-clock seconds: bot messages are ignored until then


class BotPolicy:
    """Which bots a bot answers: none (``False``), all (``True``), or those listed by canonical id
    ("telegram:123"), platform id ("123") or user name."""

    def __init__(self, answer_bots: bool | list[str]) -> None:
        self.all = answer_bots is True
        self.listed = {str(item).lower() for item in answer_bots} if isinstance(answer_bots, list) else set()

    def allows(self, author: UserRef) -> bool:
        if self.all:
            return True
        names = {author.canonical.lower(), author.id.lower(), author.name.lower(), author.username.lower()}
        names = {name.lstrip("@") for name in names if name}
        return bool(self.listed & names)


class LoopGuard:
    """Per chat budgets of bot-to-bot turns for one bot, kept in the database."""

    def __init__(
        self,
        db: Database | None,
        bot: str,
        *,
        budget: int = 3,
        cooldown_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = KeyValueStore(db, f"loops/{bot}") if db is not None else None
        self.bot = bot
        self.budget = budget
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.stops = 0  # loops stopped since start (metrics)
        self._chats: dict[str, ChatTurns] = {}
        self._lock = asyncio.Lock()  # events of one chat are handled concurrently: one change at a time

    async def _state(self, chat: str) -> ChatTurns:
        state = self._chats.get(chat)
        if state is None:
            stored = await self._store.get(chat) if self._store else None
            state = ChatTurns(**stored) if isinstance(stored, dict) else ChatTurns()
            self._chats[chat] = state
        return state

    async def _save(self, chat: str, state: ChatTurns) -> None:
        if self._store is not None:
            await self._store.set(chat, {"bot_turns": state.bot_turns, "quiet_until": state.quiet_until})

    async def human_spoke(self, chat: str) -> None:
        """A person spoke to the bot in ``chat``: it may answer bots there again, up to the budget."""
        state = self._chats.get(chat)
        if state is not None and not state.bot_turns:
            return  # nothing to reset (turns are counted under the lock before any await: no one is midway)
        async with self._lock:
            state = await self._state(chat)
            if state.bot_turns:
                state.bot_turns = 0
                await self._save(chat, state)

    async def bot_turn(self, chat: str) -> bool:
        """Whether a bot's message in ``chat`` may be answered; counts it when it may."""
        async with self._lock:
            return await self._count(chat)

    async def _count(self, chat: str) -> bool:
        state = await self._state(chat)
        now = self.clock()
        if now < state.quiet_until:
            return False
        if state.bot_turns >= self.budget:
            state.quiet_until = now + self.cooldown_s
            state.bot_turns = 0
            self.stops += 1
            log.warning(
                "bot %s: stopped a bot-to-bot loop in %s after %d turns; bots are ignored there for %.0f s",
                self.bot, chat, self.budget, self.cooldown_s,
            )  # fmt: skip
            await self._save(chat, state)
            return False
        state.bot_turns += 1
        await self._save(chat, state)
        return True
