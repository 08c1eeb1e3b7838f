"""Retrieval quality on two bilingual evaluation sets: recall@1, recall@5 and MRR per method,
overall, per question language and cross-lingual, for each embedding model.

- ``own``: bench/retrieval_eval/ (corpus and questions written for this project);
- ``shared``: the real documents in ../shared/corpus/ (read from there at run time, never copied
  into the repository) with bench/retrieval_eval/shared_questions.jsonl (written for this project).

A hit is correct when it comes from the answer's file and its line range overlaps the answer's.

    .venv/bin/python bench/retrieval_eval.py [--set own|shared|both] [--models minilm,e5,use]
        [--chunk-size 500 --chunk-overlap 80] [--grid] [--pool 20] [--parent-size 0]

Each row also gives the two held-out halves: questions in even places of each file (dev) and in
odd places (test), so a choice made on one half can be checked on the other.

``--parent-size N``: sentence windows, measured: chunks of ``--chunk-size`` are ranked, and each
hit stands for the ``N``-character passage of its file that holds it (as a search would return it
for citation); repeated passages count once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bots.knowledge.chunking import chunk_document
from bots.knowledge.embeddings import Embedder, make_embedder, query_vectors
from bots.knowledge.loaders import load
from bots.knowledge.store import FusionWeights, KnowledgeBase, Method, Rankings, _all_metadatas, top_keys
from bots.knowledge.text import is_cjk_query

HERE = Path(__file__).parent / "retrieval_eval"
SHARED_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
GROUPS = ("zh", "en", "cross")


@dataclass(frozen=True)
class Variant:
    label: str
    method: Method
    weights: FusionWeights = field(default_factory=FusionWeights)
    pool: int = 50  # depth of each ranking (search: SEARCH_POOL, before: max(4k, 20))
    zh_cross: bool = True  # False: Chinese questions get no cross-lingual place (no model needed)


def variants(grid: bool) -> list[Variant]:
    chosen = [
        Variant("dense", "dense"),
        Variant("RRF 1.0/1.0 (equal)", "fused", FusionWeights(dense_latin=1.0, dense_cjk=1.0)),
        Variant("RRF 1.0 latin/0 cjk (old)", "fused", FusionWeights(1.0, 0.0, 0.0, 0.0)),
        Variant("RRF default", "fused", FusionWeights()),
        Variant("RRF default, pool 20 (old)", "fused", FusionWeights(), pool=20),
        Variant("RRF default, pool 100", "fused", FusionWeights(), pool=100),
        Variant("RRF default, no cross place zh", "fused", FusionWeights(), zh_cross=False),
        Variant("RRF default, never cross first", "fused", FusionWeights(cross_first=0)),
        Variant("RRF default, cross first dense 1", "fused", FusionWeights(cross_first=1)),
        Variant("RRF default, cross first dense 3", "fused", FusionWeights(cross_first=3)),
    ]
    # the cross-lingual keyword path: the question's words through the collection's term map
    for slots in (1, 2):
        for translated in (0.0, 0.5, 1.0, 2.0) if grid else (0.0, 2.0):
            if (slots, translated) == (1, FusionWeights().translated):
                continue  # the default
            weights = FusionWeights(cross_slots=slots, translated=translated)
            chosen.append(Variant(f"RRF default, cross {slots} dict {translated}", "fused", weights))
    for entities in (0.5, 1.0):  # the question's names beside its translated words
        chosen.append(Variant(f"RRF default, ent {entities}", "fused", FusionWeights(entities=entities)))
    if grid:
        for latin in (0.5, 1.0, 2.0):
            for cjk in (0.0, 0.3, 1.0):
                for entities in (0.0, 0.5, 1.0):
                    for slots in (0, 1, 2):
                        if entities and not slots:
                            continue  # entities rank only the cross-lingual candidates
                        weights = FusionWeights(latin, cjk, entities, slots)  # dict: the default
                        label = f"RRF {latin}/{cjk} cross {slots} ent {entities}"
                        chosen.append(Variant(label, "fused", weights))
    return chosen


class CachedQueries:
    """The embedder with query vectors remembered: every variant asks for the same questions."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.cache: dict[str, np.ndarray] = {}
        self.query_seconds: list[float] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed(texts)

    def embed_query(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.cache]
        for text in missing:
            started = time.perf_counter()
            self.cache[text] = query_vectors(self.inner, [text])[0]
            self.query_seconds.append(time.perf_counter() - started)
        return np.stack([self.cache[t] for t in texts])


Located = dict[str, tuple[str, int, int]]  # chunk id -> (source, start line, end line)


def correct(where: tuple[str, int, int], question: dict) -> bool:
    start, end = question["lines"]
    source, first, last = where
    return source == question["file"] and first <= end and last >= start


def group_of(question: dict) -> str:
    return "cross" if question.get("cross") else question["lang"]


def top_five(rankings: Rankings, plan, located: Located) -> list[tuple[str, int, int]]:
    """The first 5 distinct passages (``located`` maps a chunk to its passage) of the fused ranking,
    its last place kept for the cross-lingual path as search keeps it."""
    for k in range(5, 200):
        top = top_keys(rankings, plan, k)
        places = list(dict.fromkeys(located[chunk] for (_, chunk), _ in top))
        if len(places) >= 5 or len(top) < k:
            return places[:5]
    return places[:5]


def truncated(rankings: Rankings, pool: int) -> Rankings:
    """The rankings as a search ``pool`` deep would have them (each is sorted, best first)."""
    return Rankings(
        rankings.keyword[:pool],
        rankings.dense[:pool],
        rankings.named[:pool],
        rankings.translated[:pool],
        rankings.other[:pool],
    )


def evaluate(
    kb: KnowledgeBase, questions: list[dict], found: list[Rankings], located: Located, variant: Variant
) -> dict[str, dict[str, float]]:
    """Fuse each question's rankings (computed once, ``--pool`` deep) with the variant's weights,
    exactly as KnowledgeBase.search does, and score the top 5."""
    kb.weights = variant.weights
    ranks: dict[str, list[int | None]] = {"all": [], **{g: [] for g in GROUPS}, "dev": [], "test": []}
    for place, (question, rankings) in enumerate(zip(questions, found, strict=True)):
        plan = kb.plan(question["question"], variant.method)
        if not variant.zh_cross and is_cjk_query(question["question"]):
            plan = replace(plan, cross_slots=0)
        top = top_five(truncated(rankings, variant.pool), plan, located)
        rank = next((i for i, where in enumerate(top, 1) if correct(where, question)), None)
        ranks["all"].append(rank)
        ranks[group_of(question)].append(rank)
        ranks["test" if place % 2 else "dev"].append(rank)  # held-out halves: even / odd places
    return {
        group: {
            "n": len(values),
            "r@1": sum(r == 1 for r in values) / len(values),
            "r@5": sum(r is not None for r in values) / len(values),
            "mrr": statistics.fmean(1 / r if r else 0.0 for r in values),
        }
        for group, values in ranks.items()
        if values
    }


def row(label: str, result: dict[str, dict[str, float]]) -> str:
    a = result["all"]
    cells = [
        f"{result[g]['r@1']:.2f}/{result[g]['r@5']:.2f}" if g in result else "   -   "
        for g in (*GROUPS, "dev", "test")
    ]
    return (
        f"{label:34s} {a['r@1']:6.2f} {a['r@5']:6.2f} {a['mrr']:6.3f} | {cells[0]:>10s} | "
        f"{cells[1]:>10s} | {cells[2]:>13s} | {cells[3]:>9s} | {cells[4]:>9s}"
    )


def load_set(name: str) -> tuple[Path, list[dict]] | None:
    if name == "own":
        corpus, questions_file = HERE / "corpus", HERE / "questions.jsonl"
    else:
        corpus, questions_file = SHARED_CORPUS.resolve(), HERE / "shared_questions.jsonl"
        if not corpus.is_dir():
            print(f"set shared skipped: {corpus} not found (the real documents live outside the repo)")
            return None
    lines = questions_file.read_text(encoding="utf-8").splitlines()
    return corpus, [json.loads(line) for line in lines if line.strip()]


def parents(folder: Path, located: Located, size: int, overlap: int) -> Located:
    """Each chunk's ``size``-character passage of the same file: the one its lines overlap most."""
    passages: dict[str, list[tuple[int, int]]] = {}
    for path in folder.iterdir():
        if path.suffix in {".md", ".txt"}:
            chunks = chunk_document(load(path), path.name, size, overlap)
            passages[path.name] = [(c.start_line, c.end_line) for c in chunks]

    def best(where: tuple[str, int, int]) -> tuple[str, int, int]:
        source, first, last = where
        overlap_of = lambda span: min(last, span[1]) - max(first, span[0])  # noqa: E731
        start, end = max(passages[source], key=overlap_of)
        return source, start, end

    return {chunk: best(where) for chunk, where in located.items()}


def run_set(name: str, models: list[str], args: argparse.Namespace) -> None:
    loaded = load_set(name)
    if loaded is None:
        return
    corpus, questions = loaded
    counts = ", ".join(f"{g} {sum(group_of(q) == g for q in questions)}" for g in GROUPS)
    print(f"\n## set {name}: {corpus.name}, {len(questions)} questions ({counts})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "knowledge"
        folder = root / "eval"
        folder.mkdir(parents=True)
        for path in corpus.iterdir():
            if path.suffix in {".md", ".txt"} and path.name != "README.md":
                shutil.copy(path, folder / path.name)
        (folder / "collection.toml").write_text(
            f"chunk_size = {args.chunk_size}\nchunk_overlap = {args.chunk_overlap}\n"
        )
        header = (
            f"{'method':34s} {'r@1':>6s} {'r@5':>6s} {'MRR':>6s} | zh r@1/r@5 | en r@1/r@5 | cross r@1/r@5 |"
            " dev r@1/5 | test r@1/5"
        )
        keyword_done = False
        for model in models:
            embedder = CachedQueries(make_embedder(model))
            kb = KnowledgeBase(root, Path(tmp) / f"var-{model}", embedder)
            started = time.perf_counter()
            report = kb.ingest("eval")
            took = time.perf_counter() - started
            print(
                f"\n### {embedder.model_name}: {report.chunks_added} chunks of <= {args.chunk_size} chars, "
                f"ingest {took:.1f} s ({report.chunks_per_second:.1f} chunks/s while embedding)"
            )
            located: Located = {
                chunk: (meta["source"], meta["start_line"], meta["end_line"])
                for chunk, meta in _all_metadatas(kb._require("eval"))
            }
            if args.parent_size:
                located = parents(folder, located, args.parent_size, args.chunk_overlap)
            searched = time.perf_counter()
            deepest = max(args.pool, *(v.pool for v in variants(args.grid)))
            found = [kb.rankings(["eval"], q["question"], pool=deepest) for q in questions]  # every part
            per_query = (time.perf_counter() - searched) / len(questions) * 1000
            print(header)
            print("-" * len(header))
            if not keyword_done:
                keyword = evaluate(kb, questions, found, located, Variant("keyword", "keyword"))
                print(row("keyword (BM25, jieba)", keyword))
                keyword_done = True
            for variant in variants(args.grid):
                print(row(variant.label, evaluate(kb, questions, found, located, variant)), flush=True)
            print(f"all three rankings: {per_query:.1f} ms per question, query embedding included")
            seconds = sorted(embedder.query_seconds)
            if seconds:
                p50 = statistics.median(seconds) * 1000
                print(f"query embedding: p50 {p50:.1f} ms, max {seconds[-1] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--set", choices=["own", "shared", "both"], default="both")
    parser.add_argument("--models", default="minilm,e5,use", help="comma-separated: minilm, e5, use")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--chunk-overlap", type=int, default=80)
    parser.add_argument("--grid", action="store_true", help="also try a grid of fusion weights")
    parser.add_argument("--pool", type=int, default=50, help="depth of the rankings computed")
    parser.add_argument("--parent-size", type=int, default=0, help="sentence windows: the passage size")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in ("own", "shared") if args.set == "both" else (args.set,):
        run_set(name, models, args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
