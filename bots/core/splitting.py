"""Split long replies to a platform's length limit on sentence boundaries (CJK and Latin)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from langchain_text_splitters import RecursiveCharacterTextSplitter

from bots.core.adapter import LengthUnit

# Tried in order: paragraphs, lines, sentence ends (CJK first, closing quotes kept with their
# sentence), clauses, words, and finally single characters.
SEPARATORS = [
    "\n\n", "\n",
    "。”", "！”", "？”", "。」", "！」", "？」",
    "。", "！", "？", "……", "…", "；",
    ". ", "! ", "? ", "; ",
    "，", "、", ", ", ": ", "：",
    " ", "",
]  # fmt: skip


def measure(unit: LengthUnit) -> Callable[[str], int]:
    if unit == "utf16":
        return lambda text: len(text.encode("utf-16-le")) // 2
    if unit == "utf8":
        return lambda text: len(text.encode("utf-8"))
    return len


@lru_cache(maxsize=32)
def _splitter(max_length: int, unit: LengthUnit) -> RecursiveCharacterTextSplitter:
    return RecursiveCharacterTextSplitter(
        chunk_size=max_length,
        chunk_overlap=0,
        separators=SEPARATORS,
        keep_separator="end",
        length_function=measure(unit),
    )


def split_message(text: str, max_length: int | None, unit: LengthUnit = "chars") -> list[str]:
    """Pieces of ``text`` no longer than ``max_length``; the text itself when it fits."""
    if not text.strip():
        return []
    if max_length is None or measure(unit)(text) <= max_length:
        return [text]
    return [piece for piece in _splitter(max_length, unit).split_text(text) if piece]
