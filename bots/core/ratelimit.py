"""Per-user and per-chat rate limits on top of the `limits` library (moving window, in memory)."""

from __future__ import annotations

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class RateLimiter:
    def __init__(self, per_user: str, per_chat: str) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._rules: list[tuple[str, RateLimitItem]] = [
            *(("user", item) for item in parse_many(per_user)),
            *(("chat", item) for item in parse_many(per_chat)),
        ]

    def check(self, user_key: str, chat_key: str) -> str | None:
        """Count one message; return why it is over a limit, or None when it may pass."""
        keys = {"user": user_key, "chat": chat_key}
        for scope, item in self._rules:
            if not self._limiter.test(item, scope, keys[scope]):
                return f"{scope} limit {item}"
        for scope, item in self._rules:
            self._limiter.hit(item, scope, keys[scope])
        return None
