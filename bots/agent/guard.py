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
        # a window shorter than LEAK_WINDOW (a short prompt) can sit anywhere in a reply: then
        # every window is searched for; else the fewer of the prompt's windows (each searched in
        # the reply) and the reply's windows (each looked up)
        self._all_full = all(len(window) == LEAK_WINDOW for window in self._windows)
        ids = set()
        for canonical in protected_ids:
            ids.add(canonical.lower())
            local = canonical.partition(":")[2]
            if len(local) >= 4:  # short ids ("1") would match ordinary numbers
                ids.add(local.lower())
        self._ids = ids
        # an id is searched for (a pattern without a literal start tries every position) only
        # where it occurs at all
        self._id_patterns = [(i, re.compile(rf"(?<![\w]){re.escape(i)}(?![\w])")) for i in ids]

    def leaks(self, reply: str) -> bool:
        squashed = _squash(reply)
        if len(squashed) >= LEAK_WINDOW:
            windows = self._windows
            if self._all_full and len(squashed) - LEAK_WINDOW < len(windows):
                if any(
                    squashed[i : i + LEAK_WINDOW] in windows for i in range(len(squashed) - LEAK_WINDOW + 1)
                ):
                    return True
            elif any(window in squashed for window in windows):
                return True
        if not self._id_patterns:
            return False
        lowered = reply.lower()
        return any(i in lowered and pattern.search(lowered) for i, pattern in self._id_patterns)


def _squash(text: str) -> str:
    """Letters and digits, lowercased one by one (as ``str.lower`` of each character)."""
    return "".join(map(str.lower, filter(str.isalnum, unicodedata.normalize("NFKC", text))))
