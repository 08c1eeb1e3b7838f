"""Per-user and per-chat rate limits, counted in the event loop: no timers, no threads.

Rules use the `limits` notation ("12/minute", "5/second;60/minute"). Each rule is a moving window
per key: at most ``amount`` hits within any ``window`` seconds, kept as the times of the recent
hits (never more than ``amount`` of them); keys idle for a whole window are forgotten once a window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from limits import RateLimitItem, parse_many

Clock = Callable[[], float]


class MovingWindow:
    """One rule's counts per key."""

    def __init__(self, item: RateLimitItem) -> None:
        self.item = item
        self.amount = item.amount
        self.seconds = float(item.get_expiry())
        self._hits: dict[str, deque[float]] = {}
        self._sweep_at = 0.0

    def test(self, key: str, now: float) -> bool:
        """Whether one more hit would be within the rule."""
        hits = self._hits.get(key)
        if hits is None:
            return self.amount > 0
        cutoff = now - self.seconds
        while hits and hits[0] <= cutoff:
            hits.popleft()
        return len(hits) < self.amount

    def hit(self, key: str, now: float) -> bool:
        """Count one hit; False (and not counted) when it would break the rule."""
        if not self.test(key, now):
            return False
        self._hits.setdefault(key, deque()).append(now)
        if now >= self._sweep_at:
            self._sweep_at = now + self.seconds
            self._hits = {k: hits for k, hits in self._hits.items() if hits and hits[-1] > now - self.seconds}
        return True

    def __str__(self) -> str:
        return str(self.item)


def windows(rules: str) -> list[MovingWindow]:
    return [MovingWindow(item) for item in parse_many(rules)]


class RateLimiter:
    def __init__(self, per_user: str, per_chat: str, clock: Clock = time.monotonic) -> None:
        self._rules = [("user", w) for w in windows(per_user)] + [("chat", w) for w in windows(per_chat)]
        self._clock = clock

    def check(self, user_key: str, chat_key: str) -> str | None:
        """Count one message; return why it is over a limit, or None when it may pass."""
        now = self._clock()
        keys = {"user": user_key, "chat": chat_key}
        for scope, window in self._rules:
            if not window.test(keys[scope], now):
                return f"{scope} limit {window}"
        for scope, window in self._rules:
            window.hit(keys[scope], now)
        return None
