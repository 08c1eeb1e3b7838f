"""The retrieval seam. The knowledge layer plugs in here; until then nothing is retrieved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Passage:
    text: str
    source: str  # title or path of the document
    location: str = ""  # "lines 10-24", "p. 3"


class Retriever(Protocol):
    async def retrieve(self, query: str, collections: list[str]) -> list[Passage]: ...


class NoRetrieval:
    async def retrieve(self, query: str, collections: list[str]) -> list[Passage]:
        return []
