"""Grounding: the agent's retriever over the knowledge base (facts, voice examples, quote checks)."""

from __future__ import annotations

import asyncio
import logging
import re

from bots.agent.retrieval import Passage
from bots.core.config import ConfigError
from bots.knowledge.store import Hit, KnowledgeBase
from bots.knowledge.text import squash

log = logging.getLogger("bots.knowledge")


class KnowledgeRetriever:
    """Implements the agent's ``Retriever`` seam on a :class:`KnowledgeBase`."""

    def __init__(
        self,
        kb: KnowledgeBase,
        *,
        k: int = 4,
        style_k: int = 2,
        min_similarity: float = 0.35,
        style_max_chars: int = 300,
    ) -> None:
        self.kb = kb
        self.k = k
        self.style_k = style_k
        self.min_similarity = min_similarity  # dense-only hits below this are not relevant
        self.style_max_chars = style_max_chars
        self._warned: set[str] = set()
        self._role: dict[str, str] = {}

    def _roles(self, collections: list[str]) -> tuple[list[str], list[str]]:
        facts, style = [], []
        for name in collections:
            if name not in self._role:
                try:
                    self._role[name] = self.kb.collection(name).settings.role
                except ConfigError as exc:
                    self._warn_once(name, exc)
                    continue
            (style if self._role[name] == "style" else facts).append(name)
        return facts, style

    def _warn_once(self, name: str, problem: Exception) -> None:
        message = f"{name}: {problem}"
        if message not in self._warned:
            self._warned.add(message)
            log.warning("knowledge: %s", problem)

    def _search(self, names: list[str], query: str, k: int) -> list[Hit]:
        if not names:
            return []
        return self.kb.search(names, query, k, on_error=self._warn_once)

    def _relevant(self, hit: Hit) -> bool:
        return hit.keyword_score > 0 or hit.dense_similarity >= self.min_similarity

    def _passages(self, query: str, collections: list[str]) -> list[Passage]:
        facts, style = self._roles(collections)
        passages = [
            Passage(
                hit.text,
                hit.title or hit.source,
                hit.location,
                path=hit.source,
                start_line=hit.start_line,
                end_line=hit.end_line,
            )
            for hit in self._search(facts, query, self.k)[: self.k]
            if self._relevant(hit)
        ]
        if style:
            short = [
                hit
                for hit in self._search(style, query, self.style_k * 3)
                if len(hit.text) <= self.style_max_chars
            ]
            passages += [
                Passage(hit.text, hit.title, hit.location, kind="style") for hit in short[: self.style_k]
            ]
        return passages

    async def retrieve(self, query: str, collections: list[str]) -> list[Passage]:
        if not collections or not query.strip():
            return []
        return await asyncio.to_thread(self._passages, query, collections)

    def _similarities(self, query: str, texts: list[str]) -> list[float]:
        vectors = self.kb.embedder.embed([query, *texts])
        return [float(v) for v in vectors[1:] @ vectors[0]]

    async def similarities(self, query: str, texts: list[str]) -> list[float] | None:
        if not texts:
            return []
        try:
            return await asyncio.to_thread(self._similarities, query, texts)
        except Exception:  # composition works on keywords alone
            log.exception("knowledge: could not embed sentences for composition")
            return None

    def _verify(self, quote: str, collections: list[str]) -> bool:
        wanted = squash(quote)
        if not wanted:
            return True
        facts, style = self._roles(collections)
        return any(wanted in squash(hit.text) for hit in self._search(facts + style, quote, 10))

    async def verify_quote(self, quote: str, collections: list[str]) -> bool:
        try:
            return await asyncio.to_thread(self._verify, quote, collections)
        except Exception:  # a broken index must not cost the whole answer: the quote stays unverified
            log.exception("knowledge: could not check a quotation")
            return False


_SENTENCE_END = re.compile(r"[。！？!?]|\.\s")


def _shortened(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut after the last sentence end that fits."""
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, limit)]
    return text[: ends[-1]].strip() if ends else text[:limit]
