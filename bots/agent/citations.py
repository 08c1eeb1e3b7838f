"""Citations and the quote check: answers say where they come from and never invent quotations."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from bots.agent.retrieval import Passage

# 「…」 『…』 “…” "…" with at least four characters inside.
_QUOTE = re.compile(r"「([^」]{4,})」|『([^』]{4,})』|“([^”]{4,})”|\"([^\"\n]{4,})\"")
_MARKER = re.compile(r"\[(\d{1,2})\]")
_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+[”」』\"]?|\n+|$)")

SOURCES = {"zh": "出处：", "en": "Sources: "}


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def quotations(text: str) -> list[str]:
    """Quoted passages long enough to be quotations, not scare quotes ("the light"): four CJK
    characters, or three words."""
    found = [next(group for group in match.groups() if group) for match in _QUOTE.finditer(text)]
    return [q for q in found if len(_CJK.findall(q)) >= 4 or len(q.split()) >= 3]


async def unverified_quotes(
    answer: str, verify: Callable[[str], Awaitable[bool]], *, exempt: str = ""
) -> list[str]:
    """The quotations in ``answer`` the corpus does not hold. Quotations of the user's own
    message (``exempt``) are not attributed to the corpus."""
    return [q for q in dict.fromkeys(quotations(answer)) if q not in exempt and not await verify(q)]


def without_quotes(answer: str, quotes: list[str]) -> str:
    """``answer`` without the sentences that carry ``quotes``."""
    for quote in quotes:
        answer = _without_sentences_around(answer, quote)
    return answer


def _without_sentences_around(answer: str, quote: str) -> str:
    """Remove every sentence that overlaps the quotation (it may hold sentence ends itself)."""
    found = answer.find(quote)
    while found >= 0:
        start, end = found - 1, found + len(quote) + 1  # with the quotation marks
        kept = [m.group() for m in _SENTENCE.finditer(answer) if m.end() <= start or m.start() >= end]
        answer = "".join(kept).strip()
        found = answer.find(quote)
    return answer


def cited(answer: str, passages: list[Passage]) -> list[tuple[int, Passage]]:
    """The passages the answer cites as [n]; the best one when it cites none."""
    numbers = [int(n) for n in _MARKER.findall(answer) if 0 < int(n) <= len(passages)]
    if not numbers and passages:
        numbers = [1]
    return [(n, passages[n - 1]) for n in dict.fromkeys(numbers)]


def sources_note(answer: str, passages: list[Passage], lang: str) -> str:
    """The line appended to an answer: the passages it cites, or its best one."""
    sources = cited(answer, passages)
    if not sources:
        return ""
    listed = "; ".join(
        f"[{n}] {p.source} ({p.location})" if p.location else f"[{n}] {p.source}" for n, p in sources
    )
    return f"\n\n{SOURCES[lang]}{listed}"
