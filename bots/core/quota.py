"""Daily quotas per user: messages answered by the model and model tokens spent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime

from sqlalchemy import select

from bots.core.groupcommit import GroupCommit, upsert
from bots.core.storage import Database, QuotaUsage


def _today() -> date:
    return datetime.now(UTC).date()


class QuotaStore:
    """Today's counts in the database, so a restart forgives nothing."""

    def __init__(self, db: Database, writes: GroupCommit, bot: str) -> None:
        self._db = db
        self._writes = writes
        keys = ["bot", "day", "user"]
        self._upsert = writes.prepare(upsert(db, QuotaUsage.__table__, keys), merge_by=keys)
        self.bot = bot

    def save(self, day: date, user: str, messages: int, tokens: int) -> None:
        row = {"bot": self.bot, "day": day.isoformat(), "user": user, "messages": messages, "tokens": tokens}
        self._writes.write_behind(self._upsert, row, f"quota of {user}")

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
    ):
        self.messages_per_day = messages_per_day
        self.tokens_per_day = tokens_per_day
        self.today = today
        self.store = store
        self._day = today()
        self._messages: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()

    async def load(self) -> None:
        """Pick up today's counts (at start)."""
        if self.store is None:
            return
        self._roll()
        for row in await self.store.load(self._day):
            self._messages[row.user] = max(self._messages[row.user], row.messages)
            self._tokens[row.user] = max(self._tokens[row.user], row.tokens)

    def _save(self, user: str) -> None:
        if self.store is not None and (self.messages_per_day or self.tokens_per_day):
            self.store.save(self._day, user, self._messages[user], self._tokens[user])

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
        self._save(user)

    def charge_tokens(self, user: str, tokens: int) -> None:
        self._roll()
        self._tokens[user] += tokens
        self._save(user)
