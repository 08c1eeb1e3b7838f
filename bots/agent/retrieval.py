"""The retrieval seam. The knowledge layer plugs in here; until then nothing is retrieved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Passage:
    text: str
    source: str  # title or path of the document
    location: str = ""  # "fog.md, lines 10-24", "book.pdf, p. 3, lines 1-9"
    kind: str = "fact"  # "fact": cite it; "style": the author's prose, a model of the voice
    path: str = ""  # the file, relative to its collection folder
    start_line: int = 0  # lines of the file the text spans (0: unknown)
    end_line: int = 0


class Retriever(Protocol):
    async def retrieve(self, query: str, collections: list[str]) -> list[Passage]: ...

    async def verify_quote(self, quote: str, collections: list[str]) -> bool:
        """Whether ``quote`` appears in the collections (normalised: script, width, punctuation)."""

    async def similarities(self, query: str, texts: list[str]) -> list[float] | None:
        """Embedding similarity of ``query`` to each text (None when the retriever has no model)."""


class NoRetrieval:
    async def retrieve(self, query: str, collections: list[str]) -> list[Passage]:
        return []

    async def verify_quote(self, quote: str, collections: list[str]) -> bool:
        return False

    async def similarities(self, query: str, texts: list[str]) -> list[float] | None:
        return None
