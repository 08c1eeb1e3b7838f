"""Search speed: a cold ``bots search`` (fresh processes), warm in-process queries, queries at 100k
chunks with the default model, and ingest speed of the three models measured in the same run.

    .venv/bin/python bench/search_bench.py [--parts cold,warm,scale,ingest] [--runs 5]
        [--chunks 100000] [--sample 96]

- cold: the real documents in ../shared/corpus/ (the own set when absent) ingested into a temp
  folder with the default model, then ``bots search`` in a fresh process, ``--runs`` times for
  each of keyword / fused and a Chinese / English question: median and max wall time.
- warm: ``KnowledgeBase.search`` in one process over the evaluation questions, the query
  embedding included: p50 / p99 per method.
- scale: the ingested chunks copied to ``--chunks`` (ids new, each copy's text tagged, each copy's
  vector the original's plus Gaussian noise, renormalised, cosine ~0.9 to it: stand-ins for real
  vectors, which take hours to embed on 2 cores), stored in chromadb as ingest stores them; then
  fused / keyword / dense queries with the real model, query embedding included and excluded.
- ingest: the same ``--sample`` chunks of the real documents embedded by USE, MiniLM and e5
  (models loaded first, not timed): chunks/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bots.knowledge.embeddings import make_embedder, query_vectors
from bots.knowledge.store import CHROMA_BATCH, KnowledgeBase, _all_rows

HERE = Path(__file__).parent / "retrieval_eval"
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
QUESTIONS = {"zh": "鲁迅为什么弃医从文？", "en": "Why did Lu Xun give up medicine for literature?"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prepare(tmp: Path) -> tuple[Path, KnowledgeBase, list[str]]:
    """The corpus ingested as collection ``docs`` with the default model (fast-start caches too)."""
    corpus = SHARED.resolve() if SHARED.is_dir() else HERE / "corpus"
    questions_file = HERE / ("shared_questions.jsonl" if SHARED.is_dir() else "questions.jsonl")
    folder = tmp / "knowledge" / "docs"
    folder.mkdir(parents=True)
    for path in corpus.iterdir():
        if path.suffix in {".md", ".txt"} and path.name != "README.md":
            shutil.copy(path, folder / path.name)
    config = tmp / "bots.toml"
    config.write_text(f'data_dir = "{tmp / "var"}"\nknowledge_dir = "{tmp / "knowledge"}"\n')
    embedder = make_embedder(None, cache_dir=tmp / "var" / "knowledge" / "cache")
    kb = KnowledgeBase(tmp / "knowledge", tmp / "var", embedder)
    report = kb.ingest("docs")
    print(f"corpus {corpus.name}: {report.chunks_added} chunks, ingest {report.seconds:.1f}s "
          f"({report.chunks_per_second:.1f} chunks/s embedding, {embedder.model_name})")  # fmt: skip
    questions = [json.loads(line)["question"] for line in questions_file.read_text().splitlines() if line]
    return config, kb, questions


def cold(config: Path, runs: int, before: Path | None) -> None:
    """Fresh processes, this code and (``before``: a copy of an older ``bots`` package, e.g. from
    ``git archive``) the older code on the same index, taking turns so both see the same load."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ncold `bots search` (fresh process each, {runs} runs, {os.cpu_count()} CPUs, load {load}):")
    versions = {"now": None, "before": before} if before else {"now": None}
    for method in ("keyword", "fused"):
        for lang, question in QUESTIONS.items():
            seconds: dict[str, list[float]] = {label: [] for label in versions}
            for _ in range(runs):
                for label, code in versions.items():
                    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
                    if code:
                        env["PYTHONPATH"] = str(code)
                    started = time.perf_counter()
                    done = subprocess.run(
                        [sys.executable, "-m", "bots", "search", "docs", question, "--method", method,
                         "--config", str(config)],
                        capture_output=True, text=True, env=env, check=False, cwd=code,
                    )  # fmt: skip
                    seconds[label].append(time.perf_counter() - started)
                    assert done.returncode == 0, done.stderr
            cells = ", ".join(
                f"{label} median {statistics.median(s):.2f}s (max {max(s):.2f}s)"
                for label, s in seconds.items()
            )
            print(f"  {method:7s} {lang}: {cells}")


def warm(kb: KnowledgeBase, questions: list[str], rounds: int = 3) -> None:
    print(f"\nwarm in-process search ({len(questions)} questions x {rounds}, query embedding included):")
    kb.search(["docs"], questions[0])  # loads once
    for method in ("keyword", "fused", "dense"):
        spent = []
        for _ in range(rounds):
            for question in questions:
                started = time.perf_counter()
                kb.search(["docs"], question, k=5, method=method)  # type: ignore[arg-type]
                spent.append(time.perf_counter() - started)
        print(f"  {method:7s}: p50 {statistics.median(spent) * 1000:6.1f} ms, "
              f"p99 {pct(spent, 0.99) * 1000:6.1f} ms")  # fmt: skip


class Precomputed:
    """The real embedder, but query vectors computed beforehand (timings without the embedding)."""

    def __init__(self, inner, questions: list[str]) -> None:
        self.model_name = inner.model_name
        self.vectors = dict(zip(questions, query_vectors(inner, questions), strict=True))

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])


def scale(kb: KnowledgeBase, questions: list[str], chunks: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    stored = kb._stored("docs")
    rows = list(_all_rows(stored, ["documents", "metadatas", "embeddings"]))
    base = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
    started = time.perf_counter()
    grown = kb._chroma_client().create_collection(
        kb._chroma_name("grown"), embedding_function=None, metadata=dict(stored.metadata)
    )
    (kb.root / "grown").mkdir(exist_ok=True)
    added = 0
    while added < chunks:
        take = min(CHROMA_BATCH, chunks - added)
        picks = [(added + i) % len(rows) for i in range(take)]
        noise = rng.normal(scale=0.02, size=(take, base.shape[1])).astype(np.float32)
        vectors = base[picks] + noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        metadatas = []
        for i, p in enumerate(picks):
            meta = dict(rows[p]["metadata"])
            meta["tokens"] += f" copy{added + i}"
            metadatas.append(meta)
        grown.add(
            ids=[f"copy{added + i}" for i in range(take)],
            embeddings=vectors.tolist(),
            documents=[f"{rows[p]['document']} (copy {added + i})" for i, p in enumerate(picks)],
            metadatas=metadatas,
        )
        added += take
    stored_s = time.perf_counter() - started
    started = time.perf_counter()
    kb._rebuild_keyword_index("grown", grown, kb._read_manifest("docs"))
    print(f"\n{chunks} chunks: stored in chromadb in {stored_s:.0f}s, search folder written in "
          f"{time.perf_counter() - started:.1f}s")  # fmt: skip
    cosine = float(np.mean(np.sum(vectors * base[picks], axis=1)))
    print(f"  stand-in vectors: mean cosine {cosine:.3f} to the real vector they copy")
    timed = KnowledgeBase(kb.root, kb.index_dir.parent, Precomputed(kb.embedder, questions))
    for label, knowledge in (("query embedding included", kb), ("query embedding excluded", timed)):
        knowledge.search(["grown"], questions[0])
        for method in ("fused", "keyword", "dense"):
            spent = []
            for question in questions * 2:
                t0 = time.perf_counter()
                knowledge.search(["grown"], question, k=5, method=method)  # type: ignore[arg-type]
                spent.append(time.perf_counter() - t0)
            print(f"  {method:7s} ({label}): p50 {statistics.median(spent) * 1000:6.1f} ms, "
                  f"p99 {pct(spent, 0.99) * 1000:6.1f} ms")  # fmt: skip


def ingest_speed(kb: KnowledgeBase, sample: int) -> None:
    rows = list(_all_rows(kb._stored("docs"), ["documents"]))
    step = max(1, len(rows) // sample)
    texts = [row["document"] for row in rows[::step]][:sample]
    mean = np.mean([len(t) for t in texts])
    print(f"\nembedding {len(texts)} chunks of the real documents (mean {mean:.0f} characters):")
    for model in ("use", "minilm", "e5"):
        embedder = make_embedder(model)
        embedder.embed(["warm up"])
        started = time.perf_counter()
        embedder.embed(texts)
        seconds = time.perf_counter() - started
        print(f"  {embedder.model_name:24s} {len(texts) / seconds:6.1f} chunks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--parts", default="cold,warm,scale,ingest")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=96)
    parser.add_argument("--before", type=Path, help="an older bots package to time beside (cold)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as folder:
        config, kb, questions = prepare(Path(folder))
        if "cold" in parts:
            cold(config, args.runs, args.before)
        if "warm" in parts:
            warm(kb, questions)
        if "scale" in parts:
            scale(kb, questions, args.chunks)
        if "ingest" in parts:
            ingest_speed(kb, args.sample)


if __name__ == "__main__":
    main()
