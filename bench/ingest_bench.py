"""Ingest throughput, re-ingest of an unchanged corpus, and query latency at 100k chunks.

1. Generates a ~10 MB bilingual corpus (sentences of bench/retrieval_eval/corpus reshuffled
   into new documents, each sentence tagged so no two chunks are equal) and ingests it with the
   bundled embedding model: chunks/s.
2. Ingests it again unchanged: the time as a share of the first ingest (target <= 5 %).
3. Grows a collection to 100k chunks (the ingested chunks and vectors, copied with new ids) and
   times fused, keyword and dense queries, the query embedding excluded (computed beforehand):
   p50/p99 (target: fused p99 <= 50 ms).

    .venv/bin/python bench/ingest_bench.py [--size-mb 10] [--chunks 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bots.knowledge.embeddings import SentenceTransformerEmbedder
from bots.knowledge.store import CHROMA_BATCH, KnowledgeBase

SOURCE = Path(__file__).parent / "retrieval_eval"


def sentences() -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((SOURCE / "corpus").glob("*.md")))
    parts = re.split(r"(?<=[。！？.!?])\s*", text)
    return [p.strip() for p in parts if len(p.strip()) > 8 and not p.startswith("#")]


def generate(folder: Path, size_mb: float, seed: int = 5) -> int:
    rng = random.Random(seed)
    pool = sentences()
    folder.mkdir(parents=True)
    written, number = 0, 0
    while written < size_mb * 2**20:
        number += 1
        lines = [f"# Generated note {number}"]
        paragraph: list[str] = []
        for i in range(400):
            paragraph.append(f"{rng.choice(pool)} (#{number}.{i})")
            if len(paragraph) == 4:
                lines += [" ".join(paragraph), ""]
                paragraph = []
        text = "\n".join(lines)
        (folder / f"note-{number:04d}.md").write_text(text, encoding="utf-8")
        written += len(text.encode())
    return number


class PrecomputedQueries:
    """Serves query vectors computed beforehand, so timings exclude the query embedding."""

    def __init__(self, model_name: str, vectors: dict[str, np.ndarray]) -> None:
        self.model_name = model_name
        self.vectors = vectors

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def grow(kb: KnowledgeBase, source: str, target: str, chunks: int) -> None:
    """Copy ``source``'s chunks and vectors (new ids) until ``target`` holds ``chunks``."""
    stored = kb._stored(source)
    rows = {"ids": [], "documents": [], "metadatas": [], "embeddings": []}
    for offset in range(0, stored.count(), 5000):
        page = stored.get(include=["documents", "metadatas", "embeddings"], limit=5000, offset=offset)
        for key in rows:
            rows[key] += list(page[key])
    grown = kb._chroma_client().create_collection(
        kb._chroma_name(target), embedding_function=None, metadata=dict(stored.metadata)
    )
    n, copy = len(rows["ids"]), 0
    while grown.count() < chunks:
        take = min(CHROMA_BATCH, chunks - grown.count())
        picks = [(copy * CHROMA_BATCH + i) % n for i in range(take)]
        grown.add(
            ids=[f"copy{copy}-{i}" for i in range(take)],
            embeddings=[rows["embeddings"][p] for p in picks],
            documents=[rows["documents"][p] for p in picks],
            metadatas=[rows["metadatas"][p] for p in picks],
        )
        copy += 1
    kb._rebuild_keyword_index(target, grown, kb._read_manifest(source))  # same source files


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "knowledge"
        files = generate(root / "generated", args.size_mb)
        (root / "grown").mkdir()
        embedder = SentenceTransformerEmbedder()
        embedder.embed(["warm up"])  # model loading is not ingest time
        kb = KnowledgeBase(root, Path(tmp) / "var", embedder)

        first = kb.ingest("generated")
        print(f"corpus: {args.size_mb:.0f} MB in {files} files -> {first.chunks_added} chunks")
        overall = first.chunks_added / first.seconds
        print(f"first ingest: {first.seconds:.1f}s, {overall:.1f} chunks/s overall, "
              f"{first.chunks_per_second:.1f} chunks/s embedding")  # fmt: skip
        again = kb.ingest("generated")
        print(f"re-ingest unchanged: {again.seconds:.2f}s = {100 * again.seconds / first.seconds:.2f}% "
              f"of the first (target <= 5%)")  # fmt: skip

        started = time.perf_counter()
        grow(kb, "generated", "grown", args.chunks)
        print(
            f"grown collection: {kb._stored('grown').count()} chunks in {time.perf_counter() - started:.0f}s"
        )

        questions = [
            json.loads(line)["question"] for line in (SOURCE / "questions.jsonl").read_text().splitlines()
        ]
        queries = [questions[i % len(questions)] for i in range(args.queries)]
        vectors = dict(zip(questions, embedder.embed(questions), strict=True))
        timed = KnowledgeBase(root, Path(tmp) / "var", PrecomputedQueries(embedder.model_name, vectors))
        timed.search(["grown"], queries[0], k=5)  # load the keyword index once
        for method in ("fused", "keyword", "dense"):
            spent = []
            for query in queries:
                t0 = time.perf_counter()
                timed.search(["grown"], query, k=5, method=method)  # type: ignore[arg-type]
                spent.append(time.perf_counter() - t0)
            p50, p99 = statistics.median(spent) * 1000, pct(spent, 0.99) * 1000
            print(f"query at {args.chunks} chunks, {method:7s}: p50 {p50:6.1f} ms, "
                  f"p99 {p99:6.1f} ms (query embedding excluded)")  # fmt: skip


if __name__ == "__main__":
    main()
