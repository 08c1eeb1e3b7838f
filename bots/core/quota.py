"""Daily quotas per user: messages answered by the model and model tokens spent.

The database holds each user's day totals, and every process adds what it counted to them (an
upsert that adds), so workers of one bot on one database share a user's quota; each process
re-reads the totals every ``refresh_s`` (a user may overdraw by what other processes counted in
that time)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bots.core.groupcommit import GroupCommit, upsert_adding
from bots.core.storage import Database, QuotaUsage

log = logging.getLogger("bots.quota")


def _today() -> date:
    return datetime.now(UTC).date()


class QuotaStore:
    """Today's totals in the database, so a restart forgives nothing and processes share them."""

    def __init__(self, db: Database, writes: GroupCommit, bot: str) -> None:
        self._db = db
        self._writes = writes
        keys, counts = ["bot", "day", "user"], ["messages", "tokens"]
        statement = upsert_adding(db, QuotaUsage.__table__, keys, counts)
        self._add = writes.prepare(statement, merge_by=keys, add_up=counts)
        self.bot = bot

    def add(self, day: date, user: str, messages: int, tokens: int) -> None:
        """Add to ``user``'s totals of ``day`` (written behind)."""
        row = {"bot": self.bot, "day": day.isoformat(), "user": user, "messages": messages, "tokens": tokens}
        self._writes.write_behind(self._add, row, f"quota of {user}")

    async def load(self, day: date) -> list[QuotaUsage]:
        async with self._db.session() as session:
            query = select(QuotaUsage).where(QuotaUsage.bot == self.bot, QuotaUsage.day == day.isoformat())
            return list(await session.scalars(query))


class Quotas:
    """Counts reset at midnight UTC. ``0`` means no limit. With a store, counts survive restarts."""

    def __init__(
        self,
        messages_per_day: int = 0,
        tokens_per_day: int = 0,
        today: Callable[[], date] = _today,
        store: QuotaStore | None = None,
        refresh_s: float = 10.0,
    ):
        self.messages_per_day = messages_per_day
        self.tokens_per_day = tokens_per_day
        self.today = today
        self.store = store
        self.refresh_s = refresh_s
        self._loaded_at = float("-inf")
        self._day = today()
        self._messages: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()

    async def load(self) -> None:
        """Pick up today's totals (at start, then from :meth:`refresh`)."""
        if self.store is None:
            return
        self._roll()
        self._loaded_at = time.monotonic()
        for row in await self.store.load(self._day):
            self._messages[row.user] = max(self._messages[row.user], row.messages)
            self._tokens[row.user] = max(self._tokens[row.user], row.tokens)

    async def refresh(self) -> None:
        """Re-read the totals when the last read is ``refresh_s`` old (what other processes of
        this bot counted); nothing to do without limits or a store. A failed read keeps the counts
        this process has (it runs on the message's path: a database blip must not drop it)."""
        limited = self.messages_per_day or self.tokens_per_day
        if limited and self.store is not None and time.monotonic() - self._loaded_at >= self.refresh_s:
            try:
                await self.load()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("re-reading today's quota totals failed (%s); going on with this process's", exc)

    def _add(self, user: str, messages: int, tokens: int) -> None:
        if self.store is not None and (self.messages_per_day or self.tokens_per_day):
            self.store.add(self._day, user, messages, tokens)

    def _roll(self) -> None:
        day = self.today()
        if day != self._day:
            self._day, self._messages, self._tokens = day, Counter(), Counter()

    def over(self, user: str) -> str | None:
        """Why ``user`` may not use the model now, or None."""
        self._roll()
        if self.messages_per_day and self._messages[user] >= self.messages_per_day:
            return f"daily message quota ({self.messages_per_day})"
        if self.tokens_per_day and self._tokens[user] >= self.tokens_per_day:
            return f"daily token quota ({self.tokens_per_day})"
        return None

    def count_message(self, user: str) -> None:
        self._roll()
        self._messages[user] += 1
        self._add(user, 1, 0)

    def charge_tokens(self, user: str, tokens: int) -> None:
        self._roll()
        self._tokens[user] += tokens
        self._add(user, 0, tokens)
