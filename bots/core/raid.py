"""Join floods: when more people join a chat than ``joins_per_chat`` allows, the chat is in raid
mode for a while. Members who joined during a raid are not answered and their joins reach no
plugin (no greeting storms); everyone else carries on as usual."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from bots.core.ratelimit import windows

log = logging.getLogger("bots.raid")


class RaidGuard:
    def __init__(
        self, joins: str = "10/minute", minutes: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._windows = windows(joins)
        self._seconds = minutes * 60
        self._clock = clock
        self._raid_until: dict[str, float] = {}  # chat -> when its raid mode ends
        self._raiders: dict[tuple[str, str], float] = {}  # (chat, user) -> until when

    def in_raid(self, chat: str) -> bool:
        return self._raid_until.get(chat, 0.0) > self._clock()

    def on_joins(self, chat: str, users: Sequence[str]) -> bool:
        """Count the joins; True when the chat is (now) in raid mode and these joiners are held."""
        now = self._clock()
        flooded = False
        for _ in users:
            if not all(window.hit(chat, now) for window in self._windows):
                flooded = True
        if flooded:
            if not self.in_raid(chat):
                log.warning("chat %s: join flood; raid mode for %.0f min", chat, self._seconds / 60)
            self._raid_until[chat] = now + self._seconds
        if not self.in_raid(chat):
            return False
        for user in users:
            self._raiders[(chat, user)] = self._raid_until[chat]
        self._forget(now)
        return True

    def is_raider(self, chat: str, user: str) -> bool:
        return self._raiders.get((chat, user), 0.0) > self._clock()

    def _forget(self, now: float) -> None:
        if len(self._raiders) > 10_000:
            self._raiders = {key: until for key, until in self._raiders.items() if until > now}
