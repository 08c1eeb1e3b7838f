"""Daily quotas per user: messages answered by the model and model tokens spent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime


def _today() -> date:
    return datetime.now(UTC).date()


class Quotas:
    """Counts reset at midnight UTC. ``0`` means no limit. Kept in memory: a restart forgives."""

    def __init__(
        self, messages_per_day: int = 0, tokens_per_day: int = 0, today: Callable[[], date] = _today
    ):
        self.messages_per_day = messages_per_day
        self.tokens_per_day = tokens_per_day
        self.today = today
        self._day = today()
        self._messages: Counter[str] = Counter()
        self._tokens: Counter[str] = Counter()

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

    def charge_tokens(self, user: str, tokens: int) -> None:
        self._roll()
        self._tokens[user] += tokens
