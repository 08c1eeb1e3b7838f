"""The knowledge base: chromadb (dense) + BM25 (keyword) per collection, ingested idempotently.

Layout under ``<data_dir>/knowledge/``: ``chroma/`` (one chromadb collection per knowledge
collection, holding text, vectors and metadata) and ``keyword/<name>/`` (the BM25 index, rebuilt
from the tokens stored in chromadb whenever the collection changes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bm25s
import numpy as np

from bots.knowledge.chunking import Chunk, chunk_document
from bots.knowledge.collection import Collection, collection_names
from bots.knowledge.embeddings import Embedder
from bots.knowledge.loaders import LoadError, load, remove_boilerplate
from bots.knowledge.text import cjk_share, tokenize

log = logging.getLogger("bots.knowledge")

Method = Literal["keyword", "dense", "fused"]
RRF_K = 60  # the usual reciprocal-rank-fusion constant
EMBED_BATCH = 64
CHROMA_BATCH = 1000


class KnowledgeError(Exception):
    """A problem the operator must fix (not ingested, wrong model, unknown collection)."""


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the dense ranking against the keyword ranking (weight 1), by query script.

    The bundled embedding model is English-only, so it helps on English queries and only adds
    noise to Chinese ones; measured with bench/retrieval_eval.py.
    """

    dense_latin: float = 1.0
    dense_cjk: float = 0.0

    def dense_weight(self, query: str) -> float:
        share = cjk_share(query)
        return self.dense_latin * (1 - share) + self.dense_cjk * share


@dataclass(frozen=True)
class Hit:
    id: str
    text: str
    collection: str
    source: str
    title: str
    start_line: int
    end_line: int
    page: int | None
    score: float
    keyword_score: float = 0.0
    dense_similarity: float = 0.0

    @property
    def location(self) -> str:
        lines = (
            f"line {self.start_line}"
            if self.start_line == self.end_line
            else (f"lines {self.start_line}-{self.end_line}")
        )
        return f"{self.source}, " + (f"p. {self.page}, " if self.page else "") + lines


@dataclass
class IngestReport:
    collection: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    boilerplate_lines: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_added / self.embed_seconds if self.embed_seconds else 0.0


Progress = Callable[[str, int], None]  # (what: "files" | "chunks", how many more)


class KnowledgeBase:
    def __init__(
        self, knowledge_dir: Path, data_dir: Path, embedder: Embedder, weights: FusionWeights | None = None
    ) -> None:
        self.root = knowledge_dir
        self.index_dir = data_dir / "knowledge"
        self.embedder = embedder
        self.weights = weights or FusionWeights()
        self._client: Any = None
        self._keyword: dict[str, KeywordIndex] = {}
        self._lock = threading.RLock()

    # -- collections ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return collection_names(self.root)

    def collection(self, name: str) -> Collection:
        return Collection(self.root, name)

    def _chroma_client(self) -> Any:
        with self._lock:
            if self._client is None:
                import chromadb
                from chromadb.config import Settings

                self.index_dir.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(
                    path=str(self.index_dir / "chroma"), settings=Settings(anonymized_telemetry=False)
                )
            return self._client

    @staticmethod
    def _chroma_name(name: str) -> str:
        return f"kb-{name}-chunks"

    def _stored(self, name: str) -> Any | None:
        client = self._chroma_client()
        try:
            return client.get_collection(self._chroma_name(name), embedding_function=None)
        except Exception:  # chromadb raises NotFoundError/ValueError by version
            return None

    def _check_model(self, name: str, stored: Any) -> None:
        built_with = (stored.metadata or {}).get("embedding_model")
        if built_with != self.embedder.model_name:
            raise KnowledgeError(
                f"collection {name!r} was indexed with the embedding model {built_with!r}, but the "
                f"configured model is {self.embedder.model_name!r}; re-index it with "
                f"`bots ingest {name} --rebuild`"
            )

    # -- ingest --------------------------------------------------------------------------------
    def ingest(self, name: str, *, rebuild: bool = False, progress: Progress | None = None) -> IngestReport:
        started = time.perf_counter()
        collection = self.collection(name)
        report = IngestReport(name)
        with self._lock:
            if rebuild:
                self.drop(name)
            stored = self._stored(name)
            if stored is not None:
                self._check_model(name, stored)
            else:
                stored = self._chroma_client().create_collection(
                    self._chroma_name(name),
                    embedding_function=None,
                    metadata={"embedding_model": self.embedder.model_name, "hnsw:space": "cosine"},
                )
            known = _files_in_index(stored)
            signature = json.dumps(collection.settings.model_dump(), sort_keys=True).encode()
            files = collection.files()
            present = set()
            for path in files:
                source = path.relative_to(collection.folder).as_posix()
                present.add(source)
                self._ingest_file(stored, collection, path, source, signature, known, report, progress)
                if progress:
                    progress("files", 1)
            for source in sorted(set(known) - present):
                ids = known[source][1]
                stored.delete(ids=ids)
                report.removed.append(source)
                report.chunks_removed += len(ids)
            if report.added or report.changed or report.removed or not self._keyword_path(name).is_dir():
                self._rebuild_keyword_index(name, stored)
        report.seconds = time.perf_counter() - started
        return report

    def _ingest_file(
        self,
        stored: Any,
        collection: Collection,
        path: Path,
        source: str,
        signature: bytes,
        known: dict[str, tuple[str, list[str]]],
        report: IngestReport,
        progress: Progress | None = None,
    ) -> None:
        try:
            file_hash = hashlib.sha256(path.read_bytes() + signature).hexdigest()
        except OSError as exc:
            report.errors.append(f"{source}: {exc}")
            return
        previous = known.get(source)
        if previous and previous[0] == file_hash:
            report.unchanged += 1
            return
        try:
            document = load(path, boilerplate=False)
        except LoadError as exc:
            report.errors.append(str(exc))  # an old version, if any, stays searchable
            return
        settings = collection.settings
        if settings.boilerplate_repeats:
            report.boilerplate_lines += remove_boilerplate(document, settings.boilerplate_repeats)
        chunks = chunk_document(document, source, settings.chunk_size, settings.chunk_overlap)
        embed_started = time.perf_counter()
        vectors = self._embed([index_text(chunk) for chunk in chunks])
        report.embed_seconds += time.perf_counter() - embed_started
        if previous:
            stored.delete(ids=previous[1])
            report.chunks_removed += len(previous[1])
            report.changed.append(source)
        else:
            report.added.append(source)
        for start in range(0, len(chunks), CHROMA_BATCH):
            batch = chunks[start : start + CHROMA_BATCH]
            stored.add(
                ids=[f"{source}#{start + i}:{c.content_hash[:12]}" for i, c in enumerate(batch)],
                embeddings=vectors[start : start + CHROMA_BATCH],
                documents=[c.text for c in batch],
                metadatas=[_metadata(c, file_hash, collection.name) for c in batch],
            )
        report.chunks_added += len(chunks)
        if progress:
            progress("chunks", len(chunks))

    def _embed(self, texts: list[str]) -> np.ndarray:
        parts = [self.embedder.embed(texts[i : i + EMBED_BATCH]) for i in range(0, len(texts), EMBED_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def drop(self, name: str) -> None:
        """Forget a collection's index (files are untouched)."""
        with self._lock:
            if self._stored(name) is not None:
                self._chroma_client().delete_collection(self._chroma_name(name))
            shutil.rmtree(self._keyword_path(name), ignore_errors=True)
            self._keyword.pop(name, None)

    # -- keyword index -------------------------------------------------------------------------
    def _keyword_path(self, name: str) -> Path:
        return self.index_dir / "keyword" / name

    def _rebuild_keyword_index(self, name: str, stored: Any) -> None:
        rows = stored.get(include=["metadatas"])
        index = KeywordIndex.build(rows["ids"], [m["tokens"].split(" ") for m in rows["metadatas"]])
        index.save(self._keyword_path(name))
        self._keyword[name] = index

    def _keyword_index(self, name: str, stored: Any) -> KeywordIndex:
        with self._lock:
            if name not in self._keyword:
                path = self._keyword_path(name)
                if path.is_dir():
                    self._keyword[name] = KeywordIndex.load(path)
                else:
                    self._rebuild_keyword_index(name, stored)
            return self._keyword[name]

    # -- search --------------------------------------------------------------------------------
    def search(self, names: list[str], query: str, k: int = 5, method: Method = "fused") -> list[Hit]:
        """The best ``k`` chunks of the named collections (never of any other collection)."""
        hits: list[Hit] = []
        for name in names:
            hits += self._search_one(name, query, k, method)
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits[:k]

    def _search_one(self, name: str, query: str, k: int, method: Method) -> list[Hit]:
        stored = self._stored(name)
        if stored is None:
            raise KnowledgeError(f"collection {name!r} is not indexed yet; run `bots ingest {name}`")
        self._check_model(name, stored)
        pool = max(4 * k, 20)
        keyword: list[tuple[str, float]] = []
        dense: list[tuple[str, float]] = []
        if method in ("keyword", "fused"):
            keyword = self._keyword_index(name, stored).search(tokenize(query), pool)
        dense_weight = 1.0 if method == "dense" else self.weights.dense_weight(query)
        if method in ("dense", "fused") and dense_weight > 0 and stored.count():
            result = stored.query(
                query_embeddings=self.embedder.embed([query]),
                n_results=min(pool, stored.count()),
                include=["distances"],
            )
            dense = [(i, 1.0 - d) for i, d in zip(result["ids"][0], result["distances"][0], strict=True)]
        scores: dict[str, float] = {}
        for weight, ranking in ((1.0 if method != "dense" else 0.0, keyword), (dense_weight, dense)):
            for rank, (chunk_id, _) in enumerate(ranking):
                scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (RRF_K + rank + 1)
        best = sorted(scores, key=lambda i: scores[i], reverse=True)[:k]
        if not best:
            return []
        rows = stored.get(ids=best, include=["documents", "metadatas"])
        found = dict(zip(rows["ids"], zip(rows["documents"], rows["metadatas"], strict=True), strict=True))
        keyword_scores, similarities = dict(keyword), dict(dense)
        hits = []
        for chunk_id in best:
            text, meta = found[chunk_id]
            hits.append(
                Hit(
                    id=chunk_id,
                    text=text,
                    collection=name,
                    source=meta["source"],
                    title=meta["title"],
                    start_line=meta["start_line"],
                    end_line=meta["end_line"],
                    page=meta.get("page") or None,
                    score=scores[chunk_id],
                    keyword_score=keyword_scores.get(chunk_id, 0.0),
                    dense_similarity=similarities.get(chunk_id, 0.0),
                )
            )
        return hits

    def stats(self, name: str) -> dict[str, Any]:
        collection = self.collection(name)
        stored = self._stored(name)
        info: dict[str, Any] = {
            "collection": name,
            "title": collection.settings.title,
            "role": collection.settings.role,
            "files": len(collection.files()),
            "indexed": stored is not None,
        }
        if stored is not None:
            known = _files_in_index(stored)
            info |= {
                "indexed_files": len(known),
                "chunks": stored.count(),
                "embedding_model": (stored.metadata or {}).get("embedding_model"),
            }
        return info


def index_text(chunk: Chunk) -> str:
    """What is embedded: the title gives short chunks their context."""
    return f"{chunk.title}\n{chunk.text}" if chunk.title and chunk.title not in chunk.text else chunk.text


def _metadata(chunk: Chunk, file_hash: str, collection: str) -> dict[str, Any]:
    return {
        "collection": collection,
        "source": chunk.source,
        "title": chunk.title,
        "start_line": chunk.start_line,
        "end_line": chunk.end_line,
        "page": chunk.page or 0,
        "part": chunk.part,
        "content_hash": chunk.content_hash,
        "file_hash": file_hash,
        "tokens": " ".join(tokenize(index_text(chunk))),
    }


def _files_in_index(stored: Any) -> dict[str, tuple[str, list[str]]]:
    """source -> (file hash, chunk ids) of what the index holds."""
    rows = stored.get(include=["metadatas"])
    files: dict[str, tuple[str, list[str]]] = {}
    for chunk_id, meta in zip(rows["ids"], rows["metadatas"], strict=True):
        file_hash, ids = files.get(meta["source"], (meta["file_hash"], []))
        ids.append(chunk_id)
        files[meta["source"]] = (file_hash, ids)
    return files


class KeywordIndex:
    """BM25 (bm25s) over pre-tokenised chunks, with the chunk ids in index order."""

    def __init__(self, ids: list[str], bm25: bm25s.BM25 | None) -> None:
        self.ids = ids
        self.bm25 = bm25

    @classmethod
    def build(cls, ids: list[str], tokens: list[list[str]]) -> KeywordIndex:
        if not ids:
            return cls([], None)
        bm25 = bm25s.BM25()
        bm25.index([[t for t in doc if t] or ["<empty>"] for doc in tokens], show_progress=False)
        return cls(ids, bm25)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "ids.json").write_text(json.dumps(self.ids), encoding="utf-8")
        if self.bm25 is not None:
            self.bm25.save(str(path / "bm25"))

    @classmethod
    def load(cls, path: Path) -> KeywordIndex:
        ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        bm25 = bm25s.BM25.load(str(path / "bm25")) if ids else None
        return cls(ids, bm25)

    def search(self, tokens: list[str], k: int) -> list[tuple[str, float]]:
        if self.bm25 is None or not tokens:
            return []
        k = min(k, len(self.ids))
        documents, scores = self.bm25.retrieve([tokens], k=k, show_progress=False)
        return [(self.ids[int(d)], float(s)) for d, s in zip(documents[0], scores[0], strict=True) if s > 0]
