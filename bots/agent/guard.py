"""Prompt-injection hardening on both sides of the model.

In: user text (and speaker names) cannot carry chat-template control tokens, so a member cannot
open a fake system turn. Out: a reply that repeats a stretch of the system prompt, or names an
operator's id, is replaced by the persona's refusal.
"""

from __future__ import annotations

import re
import unicodedata

from bots.core.sanitize import clean_user_text

_NAME_JUNK = re.compile(r"[\[\]<>:\n\r\t]")
LEAK_WINDOW = 32  # characters of the system prompt that may not appear verbatim in a reply


def clean_name(name: str) -> str:
    """A speaker name fit for "[name] text": no brackets, colons or line breaks, at most 40 chars."""
    return _NAME_JUNK.sub(" ", clean_user_text(name)).strip()[:40] or "someone"


class LeakGuard:
    """Knows what must never be echoed: stretches of the system prompt and protected ids."""

    def __init__(self, system_prompt: str, protected_ids: list[str] = ()) -> None:  # type: ignore[assignment]
        squashed = _squash(system_prompt)
        # every window, not every other half-window: a leak may start anywhere
        self._windows = {
            squashed[i : i + LEAK_WINDOW] for i in range(0, max(len(squashed) - LEAK_WINDOW, 0) + 1)
        }
        self._windows.discard("")
        ids = set()
        for canonical in protected_ids:
            ids.add(canonical.lower())
            local = canonical.partition(":")[2]
            if len(local) >= 4:  # short ids ("1") would match ordinary numbers
                ids.add(local.lower())
        self._ids = ids

    def leaks(self, reply: str) -> bool:
        squashed = _squash(reply)
        if len(squashed) >= LEAK_WINDOW and any(window in squashed for window in self._windows):
            return True
        lowered = reply.lower()
        return any(re.search(rf"(?<![\w]){re.escape(i)}(?![\w])", lowered) for i in self._ids)


def _squash(text: str) -> str:
    return "".join(ch.lower() for ch in unicodedata.normalize("NFKC", text) if ch.isalnum())
