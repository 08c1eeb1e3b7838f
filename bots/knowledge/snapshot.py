"""What a search reads, in one folder per collection, written at ingest from the chromadb store.

``<data_dir>/knowledge/keyword/<name>/``:

- ``meta.json``: the embedding model and text pipeline the index was built with, chunk count;
- ``ids.json``, ``cjk.json``: chunk ids in index order, and each chunk's share of CJK tokens (the
  language it is written in, for the cross-lingual path);
- ``bm25/``: the BM25 index as bm25s saves it (a score per token and chunk), read here with numpy
  alone and memory-mapped;
- ``chunks.jsonl`` + ``offsets.npy``: each chunk's text and citation (source, lines), read a line
  at a time for the hits;
- ``terms.sqlite``: the bilingual term map of the collection's words (``bilingual.py``), for the
  cross-lingual keyword path; absent without the dictionary package;
- ``vectors.npy``: the chunk vectors, for exact dense search, when the collection has at most
  ``EXACT_LIMIT`` chunks (larger ones are searched through chromadb's HNSW index).

So a keyword search opens neither chromadb nor a model, and a small collection's dense search
needs only the model. The folder is written beside and swapped in whole: a reader never sees the
ids of one build with the scores of another.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bots.knowledge.bilingual import TERMS_FILE, TERMS_VERSION, Terms, write_terms
from bots.knowledge.text import cjk_share

log = logging.getLogger("bots.knowledge")

# Up to this many chunks, dense search is an exact scan of vectors.npy (2-core box: a few ms per
# 10k chunks); beyond it chromadb's HNSW index answers (bench/README.md, ingest_bench.py).
EXACT_LIMIT = 20_000
# BM25 term saturation and length normalisation, measured in bench/retrieval_eval.py (bench/README):
# against bm25s's 1.5 / 0.75, r@1 up on our own set (0.68 -> 0.72, both held-out halves) and the
# same on the real documents (keyword alone 0.57 -> 0.61 there). A folder built otherwise is rebuilt.
BM25_PARAMS = {"k1": 0.9, "b": 0.5}


class Bm25:
    """Scores from a bm25s index as saved (BM25 scores precomputed per token and chunk, stored by
    token), summed with numpy as bm25s does, without importing bm25s (or scipy) at search time."""

    def __init__(self, folder: Path) -> None:
        self.vocab: dict[str, int] = json.loads((folder / "vocab.index.json").read_text(encoding="utf-8"))
        self.num_docs = int(json.loads((folder / "params.index.json").read_text())["num_docs"])
        self.data = np.load(folder / "data.csc.index.npy", mmap_mode="r")
        self.indices = np.load(folder / "indices.csc.index.npy", mmap_mode="r")
        self.indptr = np.load(folder / "indptr.csc.index.npy", mmap_mode="r")

    def search(self, tokens: list[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best (chunk position, score) with a score above 0; a repeated token counts again."""
        ids = [self.vocab[token] for token in tokens if token in self.vocab]
        if not ids or k <= 0:
            return []
        scores = np.zeros(self.num_docs, dtype=np.float32)
        for token in ids:
            start, end = int(self.indptr[token]), int(self.indptr[token + 1])
            scores[self.indices[start:end]] += self.data[start:end]  # one chunk once per token
        return _top(scores, k)


def _top(scores: np.ndarray, k: int, positive: bool = True) -> list[tuple[int, float]]:
    k = min(k, len(scores))
    if k <= 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [(int(i), float(scores[i])) for i in best if not positive or scores[i] > 0]


class Snapshot:
    """One collection's search folder, loaded lazily part by part."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp = self.stamp_of(path)
        self.meta: dict[str, Any] = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        self.ids: list[str] = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        self.position = {chunk_id: i for i, chunk_id in enumerate(self.ids)}
        self.cjk = np.asarray(json.loads((path / "cjk.json").read_text(encoding="utf-8")), dtype=np.float32)
        self._bm25: Bm25 | None = None
        self._offsets: np.ndarray | None = None
        self._vectors: np.ndarray | None = None
        self._terms: Terms | None = None
        self._terms_broken = False  # the map could not be read: searched without it

    @staticmethod
    def stamp_of(path: Path) -> int:
        """When the folder was last swapped in (its ids file is written last): tells when to reload."""
        try:
            return (path / "ids.json").stat().st_mtime_ns
        except OSError:
            return -1

    @staticmethod
    def exists(path: Path) -> bool:
        return (path / "meta.json").is_file() and (path / "ids.json").is_file()

    @property
    def current(self) -> bool:
        """Built with today's BM25 parameters and term map (else it is rebuilt from the store); a
        folder written without the dictionary package (terms None) is not rebuilt for it."""
        return self.meta.get("bm25") == BM25_PARAMS and self.meta.get("terms", 0) in (TERMS_VERSION, None)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def exact(self) -> bool:
        return bool(self.meta.get("exact"))

    def written_in_cjk(self, chunk_id: str) -> bool:
        position = self.position.get(chunk_id)
        return position is not None and bool(self.cjk[position] >= 0.5)

    def keyword(self, tokens: list[str], k: int) -> list[tuple[str, float]]:
        if not self.ids or not tokens:
            return []
        if self._bm25 is None:
            self._bm25 = Bm25(self.path / "bm25")
        return [(self.ids[i], score) for i, score in self._bm25.search(tokens, k)]

    def translate(self, tokens: list[str], into_cjk: bool) -> list[str]:
        """A question's tokens in the other language, through the collection's term map."""
        if not self.meta.get("terms") or not tokens or self._terms_broken:
            return []
        try:
            if self._terms is None:
                self._terms = Terms(self.path / TERMS_FILE)
            return self._terms.translate(tokens, into_cjk)
        except sqlite3.Error as exc:  # the map is an extra: its loss must not fail the search
            self._terms_broken = True
            log.warning("%s: the term map cannot be read (%s); searching without it", self.path, exc)
            return []

    def similarities(self, vector: np.ndarray) -> np.ndarray:
        """Cosine similarity of every chunk to ``vector`` (all vectors are unit length)."""
        if self._vectors is None:
            self._vectors = np.load(self.path / "vectors.npy", mmap_mode="r")
        return np.asarray(self._vectors @ np.asarray(vector, dtype=np.float32), dtype=np.float32)

    def dense(self, similarities: np.ndarray, k: int, in_cjk: bool | None = None) -> list[tuple[str, float]]:
        """The exact dense ranking from ``similarities``: all chunks, or only those written in CJK
        (``in_cjk`` True) or not (False)."""
        if in_cjk is not None:
            wrong = (self.cjk >= 0.5) != in_cjk
            similarities = np.where(wrong, -np.inf, similarities).astype(np.float32)
        ranked = _top(similarities, k, positive=False)
        return [(self.ids[i], score) for i, score in ranked if score > -np.inf]

    def chunk(self, chunk_id: str) -> tuple[str, dict[str, Any]] | None:
        """The chunk's text and citation metadata (None: not in this build)."""
        position = self.position.get(chunk_id)
        if position is None:
            return None
        if self._offsets is None:
            self._offsets = np.load(self.path / "offsets.npy")
        start, end = int(self._offsets[position]), int(self._offsets[position + 1])
        with (self.path / "chunks.jsonl").open("rb") as handle:
            handle.seek(start)
            row = json.loads(handle.read(end - start))
        return row.pop("text"), row


def write_snapshot(
    path: Path,
    ids: Sequence[str],
    metadatas: Sequence[dict[str, Any]],
    documents: Sequence[str],
    vectors: np.ndarray | None,
    meta: dict[str, Any],
    cache_dir: Path | None = None,
) -> None:
    """Build the BM25 index from the chunks' stored tokens and write the folder (beside, then
    swapped); ``cache_dir`` keeps the prepared dictionary for the term map."""
    fresh, old = path.with_name(path.name + ".new"), path.with_name(path.name + ".old")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    tokens = [m["tokens"].split(" ") if m.get("tokens") else [] for m in metadatas]
    if ids:
        import bm25s

        bm25 = bm25s.BM25(**BM25_PARAMS)
        bm25.index([[t for t in doc if t] or ["<empty>"] for doc in tokens], show_progress=False)
        bm25.save(str(fresh / "bm25"))
    shares = [round(sum(cjk_share(t) > 0 for t in doc) / len(doc), 3) if doc else 0.0 for doc in tokens]
    offsets = [0]
    with (fresh / "chunks.jsonl").open("wb") as handle:
        for text, m in zip(documents, metadatas, strict=True):
            row = {
                key: value for key, value in m.items() if key not in ("tokens", "content_hash", "collection")
            }
            line = (json.dumps({"text": text, **row}, ensure_ascii=False) + "\n").encode()
            handle.write(line)
            offsets.append(offsets[-1] + len(line))
    np.save(fresh / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    exact = vectors is not None and len(ids) <= EXACT_LIMIT
    if exact:
        assert vectors is not None
        np.save(fresh / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    vocabulary = {token for doc in tokens for token in doc}
    terms = TERMS_VERSION if write_terms(fresh / TERMS_FILE, vocabulary, cache_dir) else None
    meta = {**meta, "count": len(ids), "exact": exact, "bm25": BM25_PARAMS, "terms": terms}
    (fresh / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    (fresh / "cjk.json").write_text(json.dumps(shares), encoding="utf-8")
    (fresh / "ids.json").write_text(json.dumps(list(ids)), encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    fresh.rename(path)
    shutil.rmtree(old, ignore_errors=True)
