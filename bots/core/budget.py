"""Fitting text into a token budget, whatever counts the tokens."""

from __future__ import annotations

from collections.abc import Callable


def longest_prefix(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` that ``count`` puts at or under ``budget`` (binary search)."""
    if count(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]
