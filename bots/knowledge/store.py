"""The knowledge base: chromadb (dense) + BM25 (keyword) per collection, ingested idempotently.

Layout under ``<data_dir>/knowledge/``: ``chroma/`` (one chromadb collection per knowledge
collection, holding text, vectors and metadata: the store ingest writes), ``keyword/<name>/``
(what a search reads: BM25 index, chunk texts and citations, vectors of small collections; see
``snapshot.py``; rebuilt from chromadb whenever the collection changes) and ``cache/`` (jieba's
dictionary and the USE model in forms that open at once).

A search opens chromadb only for a collection larger than ``EXACT_LIMIT`` whose dense ranking it
needs, and loads the embedding model only when the plan has a dense or cross-lingual part.

Shared by many workers: with ``chroma_url`` the collections live in a Chroma server (``chroma
run``, reached with ``chromadb.HttpClient``) instead of ``chroma/``. The server then holds
everything the index is made of (chunk texts, citations, vectors), and each collection's metadata
carries a ``revision`` that every ingest which changed something renews. A worker's search folder
(BM25 and the rest, in its own ``data_dir``) is built from the server at first use and again when
the server's revision differs from the one it was built from (looked up at most every
``revision_check_s``), so every worker reads the same keyword index without a shared disk. The
manifest (which files are indexed) stays with whoever runs ``bots ingest``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import numpy as np

from bots.knowledge.collection import Collection, collection_names
from bots.knowledge.embeddings import Embedder, EmbedderError, query_vectors
from bots.knowledge.snapshot import EXACT_LIMIT, Snapshot, write_snapshot
from bots.knowledge.text import (
    cjk_bigrams,
    entities,
    is_cjk_query,
    prepare_query_dictionary,
    query_tokenize,
    tokenize,
)

if TYPE_CHECKING:
    from bots.knowledge.chunking import Chunk

log = logging.getLogger("bots.knowledge")

Method = Literal["keyword", "dense", "fused"]
RRF_K = 60  # the usual reciprocal-rank-fusion constant
CHROMA_BATCH = 1000
# Candidates per ranking, whatever k (up to it): the first hits do not change with --k. 50 measured
# against max(4k, 20) in bench/retrieval_eval.py: same r@5 over both sets (109 of 124).
SEARCH_POOL = 50
# Bumped when chunking or tokenising changes: an index built otherwise must be rebuilt.
PIPELINE_VERSION = "2"


class KnowledgeError(Exception):
    """A problem the operator must fix (not ingested, wrong model, unknown collection)."""


class ChromaUnreachable(KnowledgeError):
    """The Chroma server of ``chroma_url`` does not answer (down, restarting, the network)."""


@dataclass(frozen=True)
class FusionWeights:
    """Weights of the rankings fused against the keyword ranking (weight 1), by query script.

    ``dense_latin``/``dense_cjk``: the dense ranking on English and Chinese questions (a
    question with as many CJK characters as Latin words is Chinese). The cross-lingual path
    ranks only the chunks written in the other script than the question by the dense
    (multilingual) similarity and, weighted by ``entities``, by a keyword search with the
    question's names, numbers and Latin words (which survive translation) and, weighted by
    ``translated``, by a keyword search with the question's words translated through the
    collection's bilingual term map (``bilingual.py``); its best chunks take the last
    ``cross_slots`` places of the results.
    Measured with bench/retrieval_eval.py: with the term map in the cross place, dense 2.0 on
    English questions and entities 0.5 raised r@1 and r@5 on both sets and both held-out halves
    (dense 2.0 alone had cost cross-lingual r@5 before the map).
    """

    dense_latin: float = 2.0
    dense_cjk: float = 0.0
    entities: float = 0.5
    cross_slots: int = 1  # last places of the results kept for the other language's best chunks
    translated: float = 2.0  # measured: cross-lingual r@5 up on both sets, nothing else down
    # The cross-lingual best takes the first place instead when two independent paths agree on
    # it: the translated keyword search ranks it first of the other language's chunks and the
    # multilingual dense ranking puts it in its first ``cross_first`` places of all chunks (0: never).
    # Measured: r@1 own 0.75 -> 0.79, real documents 0.63 -> 0.73, both held-out halves up,
    # Chinese and English questions unchanged (bench/README.md).
    cross_first: int = 2

    def dense_weight(self, query: str) -> float:
        return self.dense_cjk if is_cjk_query(query) else self.dense_latin


Ranked = list[tuple[float, str, str]]  # (score, collection, chunk id), best first
Key = tuple[str, str]  # (collection, chunk id)


@dataclass(frozen=True)
class Plan:
    """What one search fuses: weights of the keyword and dense rankings, and how many of the last
    places go to the cross-lingual path (chunks in the other script than the question, ranked by
    the dense similarity and, weighted by ``entities`` and ``translated``, by the question's names
    and numbers and by its words translated)."""

    keyword: float = 1.0
    dense: float = 0.0
    entities: float = 0.0
    cross_slots: int = 0
    translated: float = 0.0
    cross_first: int = 0  # see FusionWeights.cross_first


@dataclass
class Rankings:
    keyword: Ranked = field(default_factory=list)
    dense: Ranked = field(default_factory=list)
    # the cross-lingual path, over the chunks written in the other script than the question:
    named: Ranked = field(default_factory=list)  # keyword search with the question's entities
    translated: Ranked = field(default_factory=list)  # keyword search with its words translated
    other: Ranked = field(default_factory=list)  # the dense ranking
    collections: dict[str, Any] = field(default_factory=dict)


def rrf(parts: list[tuple[float, Ranked]]) -> dict[Key, float]:
    """Weighted reciprocal-rank fusion: (collection, chunk id) -> score."""
    scores: dict[Key, float] = {}
    for weight, ranking in parts:
        if weight <= 0:
            continue
        for rank, (_, name, chunk_id) in enumerate(ranking):
            key = (name, chunk_id)
            scores[key] = scores.get(key, 0.0) + weight / (RRF_K + rank + 1)
    return scores


def top_keys(found: Rankings, plan: Plan, k: int) -> list[tuple[Key, float]]:
    """The best ``k`` chunks: the fused ranking, whose last ``plan.cross_slots`` places go to the
    best cross-lingual chunks it does not already hold; the first place too when the translated and
    the dense paths agree on the cross-lingual best (:func:`cross_first`)."""
    scores = rrf([(plan.keyword, found.keyword), (plan.dense, found.dense)])
    best = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    if plan.cross_slots <= 0:
        return best[:k]
    cross = rrf([(1.0, found.other), (plan.entities, found.named), (plan.translated, found.translated)])
    ranked = sorted(cross.items(), key=lambda item: item[1], reverse=True)
    if ranked and cross_first(found, plan, ranked[0][0]):
        first = ranked[0]
        return [first, *[item for item in best if item[0] != first[0]][: k - 1]]
    best = best[:k]
    slots = min(plan.cross_slots, k - 1)
    if slots <= 0:
        return best
    held = {key for key, _ in best}
    extra = [item for item in ranked if item[0] not in held][:slots]
    return best[: k - len(extra)] + extra


def cross_first(found: Rankings, plan: Plan, key: Key) -> bool:
    """Whether the cross-lingual best ``key`` is the answer to show first: the question's words
    translated find it first among the other language's chunks, and the multilingual dense
    ranking of all chunks, both languages, holds it in its first ``plan.cross_first`` places."""
    if plan.cross_first <= 0 or not found.translated:
        return False
    translated_best = found.translated[0][1:]
    return translated_best == key and key in [item[1:] for item in found.dense[: plan.cross_first]]


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
    part: str
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
        where = f"p. {self.page}, " if self.page else (f"{self.part}, " if self.part else "")
        return f"{self.source}, {where}{lines}"


@dataclass
class IngestReport:
    collection: str
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # one line per unreadable file, naming it
    skipped: dict[str, str] = field(default_factory=dict)  # source -> "unreadable" | "empty"
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
    revision_check_s = 10.0  # with a Chroma server: how often a search asks whether an ingest ran

    def __init__(
        self,
        knowledge_dir: Path,
        data_dir: Path,
        embedder: Embedder,
        weights: FusionWeights | None = None,
        *,
        chroma_url: str | None = None,  # a Chroma server ("http://127.0.0.1:8000"); None: on disk
        chroma_headers: dict[str, str] | None = None,  # e.g. its auth token
    ) -> None:
        self.root = knowledge_dir
        self.chroma_url = chroma_url
        self._chroma_headers = chroma_headers or {}
        self._revision_checked: dict[str, float] = {}  # collection -> when the server was last asked
        self.index_dir = data_dir / "knowledge"
        self.embedder = embedder
        self.weights = weights or FusionWeights()
        self.cache_dir = self.index_dir / "cache"
        self._client: Any = None
        self._snapshots: dict[str, Snapshot] = {}
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
                settings = Settings(anonymized_telemetry=False)
                if self.chroma_url:
                    url = urlsplit(self.chroma_url)
                    try:
                        self._client = chromadb.HttpClient(
                            host=url.hostname or "127.0.0.1",
                            port=url.port or (443 if url.scheme == "https" else 8000),
                            ssl=url.scheme == "https",
                            headers=self._chroma_headers,
                            settings=settings,
                        )
                    except Exception as exc:  # chromadb checks the server at once
                        raise KnowledgeError(
                            f"the Chroma server at {self.chroma_url} cannot be reached ({exc}); is `chroma "
                            "run` up, and [knowledge] chroma_url right?"
                        ) from None
                else:
                    self._client = chromadb.PersistentClient(
                        path=str(self.index_dir / "chroma"), settings=settings
                    )
            return self._client

    @staticmethod
    def _chroma_name(name: str) -> str:
        return f"kb-{name}-chunks"

    def _stored(self, name: str) -> Any | None:
        from chromadb.errors import NotFoundError

        try:
            with self._server_answers():
                return self._chroma_client().get_collection(self._chroma_name(name), embedding_function=None)
        except (NotFoundError, ValueError):
            return None

    @contextlib.contextmanager
    def _server_answers(self) -> Iterator[None]:
        """A Chroma server that does not answer is a :class:`ChromaUnreachable` naming it (the
        HTTP client's own errors would reach the message's pipeline as unhandled ones)."""
        import httpx  # here: a cold keyword search imports no HTTP client

        try:
            yield
        except httpx.TransportError as exc:
            raise ChromaUnreachable(
                f"the Chroma server at {self.chroma_url} cannot be reached ({exc}); is `chroma run` up?"
            ) from None

    def _check(self, name: str, stored: Any) -> None:
        """Refuse an index built with another embedding model or another text pipeline."""
        meta = stored.metadata or {}
        built_with = meta.get("embedding_model")
        if built_with != self.embedder.model_name:
            raise KnowledgeError(
                f"collection {name!r} was indexed with the embedding model {built_with!r}, but the "
                f"configured model is {self.embedder.model_name!r}; re-index it with "
                f"`bots ingest {name} --rebuild`"
            )
        if meta.get("pipeline") != PIPELINE_VERSION:
            raise KnowledgeError(
                f"collection {name!r} was indexed by an older version of the chunker/tokenizer; "
                f"re-index it with `bots ingest {name} --rebuild`"
            )

    def _require(self, name: str) -> Any:
        stored = self._stored(name)
        if stored is None:
            raise KnowledgeError(f"collection {name!r} is not indexed yet; run `bots ingest {name}`")
        self._check(name, stored)
        return stored

    # -- ingest --------------------------------------------------------------------------------
    def ingest(self, name: str, *, rebuild: bool = False, progress: Progress | None = None) -> IngestReport:
        """Index new and changed files, drop deleted ones; unchanged files cost a hash each."""
        started = time.perf_counter()
        collection = self.collection(name)
        report = IngestReport(name)
        with self._lock:
            if rebuild:
                self.drop(name)
            stored = self._stored(name)
            if stored is None:
                # load the model before the index exists: a model that cannot load must not leave
                # the collection recorded as indexed (with 0 chunks). Only in-process embedders have
                # check(); a service is asked for its model name (below) before anything is created.
                try:
                    if check := getattr(self.embedder, "check", None):
                        check()
                except EmbedderError as exc:
                    raise KnowledgeError(f"collection {name!r}: {exc}") from None
                stored = self._chroma_client().create_collection(
                    self._chroma_name(name),
                    embedding_function=None,
                    metadata={
                        "embedding_model": self.embedder.model_name,
                        "pipeline": PIPELINE_VERSION,
                        "hnsw:space": "cosine",
                    },
                )
            self._check(name, stored)
            manifest = self._read_manifest(name)
            settings = collection.settings
            signature = json.dumps(
                [PIPELINE_VERSION, settings.chunk_size, settings.chunk_overlap, settings.boilerplate_repeats]
            ).encode()
            present = set()
            try:
                for path in collection.files():
                    source = path.relative_to(collection.folder).as_posix()
                    present.add(source)
                    self._ingest_file(stored, collection, path, source, signature, manifest, report, progress)
                    if progress:
                        progress("files", 1)
                for source in sorted(set(manifest) - present):
                    ids = stored.get(where={"source": source}, include=[])["ids"]
                    for start in range(0, len(ids), CHROMA_BATCH):
                        stored.delete(ids=ids[start : start + CHROMA_BATCH])
                    del manifest[source]
                    report.removed.append(source)
                    report.chunks_removed += len(ids)
            except EmbedderError as exc:  # indexed before, but the model cannot load now
                raise KnowledgeError(f"collection {name!r}: {exc}") from None
            finally:  # whatever happened, the manifest and the keyword index follow what is stored
                self._write_manifest(name, manifest)
                changed = report.added or report.changed or report.removed or report.chunks_removed
                if changed and self.chroma_url:  # the other workers' search folders are stale now
                    stored = self._new_revision(stored)
                if changed or not self._keyword_path(name).is_dir():
                    self._rebuild_keyword_index(name, stored, manifest)
        report.seconds = time.perf_counter() - started
        return report

    def _ingest_file(
        self,
        stored: Any,
        collection: Collection,
        path: Path,
        source: str,
        signature: bytes,
        manifest: dict[str, dict[str, Any]],
        report: IngestReport,
        progress: Progress | None = None,
    ) -> None:
        from bots.knowledge.chunking import chunk_document
        from bots.knowledge.loaders import MAX_FILE_BYTES, LoadError, load

        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise LoadError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256")
            digest.update(signature)
            file_hash = digest.hexdigest()
        except (OSError, LoadError) as exc:
            report.errors.append(str(exc))
            report.skipped[source] = "unreadable"
            return
        previous = manifest.get(source)
        if previous and previous["hash"] == file_hash:
            if previous.get("empty"):  # still empty: say so on every run, it is not "unchanged" content
                report.skipped[source] = "empty"
            else:
                report.unchanged += 1
            return
        settings = collection.settings
        try:
            document = load(path, boilerplate_repeats=settings.boilerplate_repeats)
        except LoadError as exc:
            report.errors.append(str(exc))  # an old version, if any, stays searchable
            report.skipped[source] = "unreadable"
            return
        report.boilerplate_lines += document.boilerplate_lines
        chunks = chunk_document(document, source, settings.chunk_size, settings.chunk_overlap)
        embed_started = time.perf_counter()
        vectors = self.embedder.embed([index_text(chunk) for chunk in chunks]) if chunks else []
        report.embed_seconds += time.perf_counter() - embed_started
        ids = [f"{source}#{i}:{c.content_hash[:12]}" for i, c in enumerate(chunks)]
        for start in range(0, len(chunks), CHROMA_BATCH):  # new chunks first, then drop the old
            batch = slice(start, start + CHROMA_BATCH)
            stored.upsert(
                ids=ids[batch],
                embeddings=vectors[batch],
                documents=[c.text for c in chunks[batch]],
                metadatas=[_metadata(c, collection.name) for c in chunks[batch]],
            )
        fresh = set(ids)
        stale = [i for i in stored.get(where={"source": source}, include=[])["ids"] if i not in fresh]
        for start in range(0, len(stale), CHROMA_BATCH):
            stored.delete(ids=stale[start : start + CHROMA_BATCH])
        report.chunks_removed += len(stale)
        # A file without text (0 bytes, only whitespace, a PDF without a text layer) indexes nothing;
        # it is recorded so that a re-run need not load it again, but reported as skipped, not added.
        # Chunks of an older, non-empty version were dropped just above.
        empty = not document.text.strip()
        if empty:
            report.skipped[source] = "empty"
        else:
            (report.changed if previous else report.added).append(source)
        manifest[source] = {"hash": file_hash, "chunks": len(chunks)} | ({"empty": True} if empty else {})
        report.chunks_added += len(chunks)
        if progress:
            progress("chunks", len(chunks))

    def drop(self, name: str) -> None:
        """Forget a collection's index (files are untouched)."""
        with self._lock:
            if self._stored(name) is not None:
                self._chroma_client().delete_collection(self._chroma_name(name))
            shutil.rmtree(self._keyword_path(name), ignore_errors=True)
            self._manifest_path(name).unlink(missing_ok=True)
            self._snapshots.pop(name, None)

    # -- manifest: which files are indexed, by content hash --------------------------------------
    def _manifest_path(self, name: str) -> Path:
        return self.index_dir / "manifest" / f"{name}.json"

    def _read_manifest(self, name: str) -> dict[str, dict[str, Any]]:
        path = self._manifest_path(name)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def _write_manifest(self, name: str, manifest: dict[str, dict[str, Any]]) -> None:
        path = self._manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(manifest, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)

    # -- keyword index -------------------------------------------------------------------------
    def _keyword_path(self, name: str) -> Path:
        return self.index_dir / "keyword" / name

    def _new_revision(self, stored: Any) -> Any:
        """Mark the server's collection as changed (a fresh ``revision`` in its metadata)."""
        meta = {k: v for k, v in (stored.metadata or {}).items() if not k.startswith("hnsw:")}
        stored.modify(metadata=meta | {"revision": uuid.uuid4().hex})  # the distance stays as created
        return self._chroma_client().get_collection(stored.name, embedding_function=None)

    def _rebuild_keyword_index(
        self, name: str, stored: Any, manifest: dict[str, dict[str, Any]] | None
    ) -> None:
        """Write the collection's search folder (snapshot.py) from what chromadb holds. With the
        ``manifest`` (the ingesting side), chunks of files it does not list are deleted first;
        without it (a worker reading a Chroma server), the folder takes what the server holds."""
        exact = stored.count() <= EXACT_LIMIT
        include = ["metadatas", "documents"] + (["embeddings"] if exact else [])
        rows = list(_all_rows(stored, include))
        if manifest is not None:
            orphans = [row["id"] for row in rows if row["metadata"]["source"] not in manifest]
            for start in range(0, len(orphans), CHROMA_BATCH):
                # chunks of a file whose ingest was interrupted before it was recorded
                stored.delete(ids=orphans[start : start + CHROMA_BATCH])
        kept = [row for row in rows if manifest is None or row["metadata"]["source"] in manifest]
        vectors = None
        if exact and kept:
            vectors = np.asarray([row["embedding"] for row in kept], dtype=np.float32)
        stamp = stored.metadata or {}
        write_snapshot(
            self._keyword_path(name),
            [row["id"] for row in kept],
            [row["metadata"] for row in kept],
            [row["document"] for row in kept],
            vectors,
            {
                "embedding_model": stamp.get("embedding_model"),
                "pipeline": stamp.get("pipeline"),
                "revision": stamp.get("revision"),
            },
            self.cache_dir,
        )
        self._snapshots[name] = Snapshot(self._keyword_path(name))
        try:  # questions are then cut without loading jieba's whole dictionary
            prepare_query_dictionary(self.cache_dir)
        except OSError as exc:
            log.debug("jieba's dictionary could not be cached in %s: %s", self.cache_dir, exc)

    def _snapshot(self, name: str, needs_model: bool) -> Snapshot:
        """The collection's search folder (reloaded when another process has rebuilt it), checked
        against the pipeline and, when ``needs_model``, the embedding model. An index from before
        the folder existed is checked in chromadb and its folder written."""
        with self._lock:
            path = self._keyword_path(name)
            cached = self._snapshots.get(name)
            if cached is None or cached.stamp != Snapshot.stamp_of(path):
                fresh = Snapshot(path) if Snapshot.exists(path) else None
                if fresh is not None and fresh.current:
                    self._snapshots[name] = fresh
                else:  # none yet (an index from before it existed), or built with other BM25 settings
                    stored = self._require(name)
                    self._rebuild_keyword_index(name, stored, self._manifest_here(name))
            if self.chroma_url:
                self._follow_server(name)
            snapshot = self._snapshots[name]
        meta = snapshot.meta
        if meta.get("pipeline") != PIPELINE_VERSION:
            raise KnowledgeError(
                f"collection {name!r} was indexed by an older version of the chunker/tokenizer; "
                f"re-index it with `bots ingest {name} --rebuild`"
            )
        if needs_model and meta.get("embedding_model") != self.embedder.model_name:
            raise KnowledgeError(
                f"collection {name!r} was indexed with the embedding model {meta.get('embedding_model')!r}, "
                f"but the configured model is {self.embedder.model_name!r}; re-index it with "
                f"`bots ingest {name} --rebuild`"
            )
        return snapshot

    def _manifest_here(self, name: str) -> dict[str, dict[str, Any]] | None:
        """The manifest, where this side ingests (always on disk; with a server, if it has one)."""
        if self.chroma_url and not self._manifest_path(name).is_file():
            return None  # a worker: it never deletes what an ingest elsewhere wrote
        return self._read_manifest(name)

    def _follow_server(self, name: str) -> None:
        """Rebuild the search folder when the server's collection changed since it was built
        (asked at most every ``revision_check_s``)."""
        now = time.monotonic()
        if now - self._revision_checked.get(name, -math.inf) < self.revision_check_s:
            return
        self._revision_checked[name] = now  # a server that does not answer is asked again later
        try:
            stored = self._require(name)
        except ChromaUnreachable as exc:
            log.warning("collection %s: searching the search folder as built (%s)", name, exc)
            return
        revision = (stored.metadata or {}).get("revision")
        if revision != self._snapshots[name].meta.get("revision"):
            log.info("collection %s: changed on the Chroma server; rebuilding its search folder", name)
            self._rebuild_keyword_index(name, stored, self._manifest_here(name))

    # -- search --------------------------------------------------------------------------------
    def search(
        self,
        names: list[str],
        query: str,
        k: int = 5,
        method: Method = "fused",
        on_error: Callable[[str, KnowledgeError], None] | None = None,
    ) -> list[Hit]:
        """The best ``k`` chunks of the named collections (never of any other collection).

        Rankings are merged across collections first (BM25 scores, cosine similarities) and
        fused once. With ``on_error``, a collection that cannot be searched is reported there
        and the others are still searched; without it, the error is raised.
        """
        plan = self.plan(query, method)
        found = self.rankings(names, query, max(SEARCH_POOL, k), plan, on_error)
        best = top_keys(found, plan, k)
        keyword_scores = {(n, i): s for s, n, i in found.keyword}
        similarities = {(n, i): s for s, n, i in found.dense + found.other}
        hits = []
        for (name, chunk_id), score in best:
            row = found.collections[name].chunk(chunk_id)
            if row is not None:
                text, meta = row
                hits.append(_hit(name, chunk_id, text, meta, score, keyword_scores, similarities))
        return hits

    def plan(self, query: str, method: Method) -> Plan:
        """The rankings fused for this query, and how."""
        if method == "dense":
            return Plan(keyword=0.0, dense=1.0)
        if method == "keyword":
            return Plan()
        w = self.weights
        return Plan(1.0, w.dense_weight(query), w.entities, w.cross_slots, w.translated, w.cross_first)

    def rankings(
        self,
        names: list[str],
        query: str,
        pool: int,
        plan: Plan = Plan(1.0, 1.0, 1.0, 1, 1.0),
        on_error: Callable[[str, KnowledgeError], None] | None = None,
    ) -> Rankings:
        """The keyword, dense and cross-lingual rankings (``pool`` deep) that ``plan`` uses.

        The model is loaded only when the plan has a dense or cross-lingual part; chromadb is
        opened only for a collection too large for the exact scan whose dense ranking is needed.
        """
        found = Rankings()
        cross = plan.cross_slots > 0
        needs_vectors = plan.dense > 0 or cross
        cache = self.cache_dir if self.index_dir.is_dir() else None
        translating = cross and plan.translated > 0
        # jieba's words, cut once: with CJK bigrams the keyword search's tokens, alone the words translated
        cut = query_tokenize(query, cache, bigrams=False) if plan.keyword > 0 or translating else []
        tokens = cut + cjk_bigrams(query) if plan.keyword > 0 else []
        words = cut if translating else []
        entity_tokens = (
            query_tokenize(" ".join(entities(query)), cache) if cross and plan.entities > 0 else []
        )
        query_in_cjk = is_cjk_query(query)
        query_vector = None
        for name in names:
            try:
                snapshot = found.collections[name] = self._snapshot(name, needs_vectors)
            except KnowledgeError as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
                continue
            if tokens:
                found.keyword += [(s, name, i) for i, s in snapshot.keyword(tokens, pool)]
            if entity_tokens:  # deeper, then only the chunks in the other language
                named = snapshot.keyword(entity_tokens, pool * 5)
                found.named += [(s, name, i) for i, s in named if snapshot.written_in_cjk(i) != query_in_cjk]
            if translated := snapshot.translate(words, into_cjk=not query_in_cjk):
                ranked = snapshot.keyword(translated, pool * 5)
                found.translated += [
                    (s, name, i) for i, s in ranked if snapshot.written_in_cjk(i) != query_in_cjk
                ]
            if not needs_vectors or not snapshot.count:
                continue
            if query_vector is None:
                query_vector = query_vectors(self.embedder, [query])[0]
            if snapshot.exact:
                similarities = snapshot.similarities(query_vector)
                if plan.dense > 0 or cross:  # cross: the dense ranking of all chunks decides cross_first
                    found.dense += [(s, name, i) for i, s in snapshot.dense(similarities, pool)]
                if cross:
                    other = snapshot.dense(similarities, pool, in_cjk=not query_in_cjk)
                    found.other += [(s, name, i) for i, s in other]
                continue
            depth = min(pool * 2 if cross else pool, snapshot.count)  # deeper: the other language ranks low
            try:  # a large collection: chromadb's HNSW index
                stored = self._require(name)
                with self._server_answers():
                    result = stored.query(
                        query_embeddings=[query_vector.tolist()], n_results=depth, include=["distances"]
                    )
            except KnowledgeError as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
                continue
            ranked = list(zip(result["ids"][0], result["distances"][0], strict=True))
            if plan.dense > 0 or cross:
                found.dense += [(1.0 - d, name, i) for i, d in ranked[:pool]]
            if cross:
                found.other += [
                    (1.0 - d, name, i) for i, d in ranked if snapshot.written_in_cjk(i) != query_in_cjk
                ]
        for ranking in (found.keyword, found.dense, found.named, found.translated, found.other):
            ranking.sort(reverse=True)
            del ranking[pool:]
        return found

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
            info |= {
                "indexed_files": len(self._read_manifest(name)),
                "chunks": stored.count(),
                "embedding_model": (stored.metadata or {}).get("embedding_model"),
            }
        return info


def _hit(
    name: str,
    chunk_id: str,
    text: str,
    meta: dict[str, Any],
    score: float,
    keyword_scores: dict[tuple[str, str], float],
    similarities: dict[tuple[str, str], float],
) -> Hit:
    return Hit(
        id=chunk_id,
        text=text,
        collection=name,
        source=meta["source"],
        title=meta["title"],
        start_line=meta["start_line"],
        end_line=meta["end_line"],
        page=meta.get("page") or None,
        part=meta.get("part", ""),
        score=score,
        keyword_score=keyword_scores.get((name, chunk_id), 0.0),
        dense_similarity=similarities.get((name, chunk_id), 0.0),
    )


def index_text(chunk: Chunk) -> str:
    """What is embedded: the title gives short chunks their context."""
    return f"{chunk.title}\n{chunk.text}" if chunk.title and chunk.title not in chunk.text else chunk.text


def _all_metadatas(stored: Any, page: int = 5000) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (id, metadata), a page at a time (one large get exceeds SQLite's variable limit)."""
    for row in _all_rows(stored, ["metadatas"], page):
        yield row["id"], row["metadata"]


def _all_rows(stored: Any, include: list[str], page: int = 5000) -> Iterator[dict[str, Any]]:
    """Every chunk as {"id", "metadata", "document", "embedding"} (what ``include`` asks for), a
    page at a time."""
    offset = 0
    while True:
        rows = stored.get(include=include, limit=page, offset=offset)
        columns = {field[:-1]: rows[field] for field in include}
        for i, chunk_id in enumerate(rows["ids"]):
            yield {"id": chunk_id} | {name: values[i] for name, values in columns.items()}
        if len(rows["ids"]) < page:
            return
        offset += page


def _metadata(chunk: Chunk, collection: str) -> dict[str, Any]:
    return {
        "collection": collection,
        "source": chunk.source,
        "title": chunk.title,
        "start_line": chunk.start_line,
        "end_line": chunk.end_line,
        "page": chunk.page or 0,
        "part": chunk.part,
        "content_hash": chunk.content_hash,
        "tokens": " ".join(tokenize(index_text(chunk))),
    }
