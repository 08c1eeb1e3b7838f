"""Retrieval quality on our bilingual evaluation set: recall@1, recall@5 and MRR per method.

The corpus and questions live in bench/retrieval_eval/ (written for this project). A hit is
correct when it comes from the answer's file and its line range overlaps the answer's lines.

    .venv/bin/python bench/retrieval_eval.py [--chunk-size 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bots.knowledge.embeddings import SentenceTransformerEmbedder
from bots.knowledge.store import FusionWeights, Hit, KnowledgeBase, Method

HERE = Path(__file__).parent / "retrieval_eval"


@dataclass(frozen=True)
class Variant:
    label: str
    method: Method
    weights: FusionWeights = FusionWeights()  # noqa: RUF009 - frozen, shared safely


VARIANTS = [
    Variant("keyword (BM25, jieba)", "keyword"),
    Variant("dense (MiniLM)", "dense"),
    Variant("RRF, equal weights", "fused", FusionWeights(dense_latin=1.0, dense_cjk=1.0)),
    Variant("RRF, dense 0.5 / 0.5", "fused", FusionWeights(dense_latin=0.5, dense_cjk=0.5)),
    Variant("RRF, dense 3.0 latin / 0 cjk", "fused", FusionWeights(dense_latin=3.0, dense_cjk=0.0)),
    Variant("RRF, dense 2.0 latin / 0 cjk", "fused", FusionWeights(dense_latin=2.0, dense_cjk=0.0)),
    Variant("RRF, dense 1.5 latin / 0 cjk", "fused", FusionWeights(dense_latin=1.5, dense_cjk=0.0)),
    Variant("RRF, dense 1.0 latin / 0 cjk", "fused", FusionWeights(dense_latin=1.0, dense_cjk=0.0)),
    Variant("RRF, dense 0.5 latin / 0 cjk", "fused", FusionWeights(dense_latin=0.5, dense_cjk=0.0)),
    Variant("RRF, dense 0.3 latin / 0 cjk", "fused", FusionWeights(dense_latin=0.3, dense_cjk=0.0)),
    Variant("RRF, dense 0.5 latin / 0.2 cjk", "fused", FusionWeights(dense_latin=0.5, dense_cjk=0.2)),
]


def correct(hit: Hit, question: dict) -> bool:
    start, end = question["lines"]
    return hit.source == question["file"] and hit.start_line <= end and hit.end_line >= start


def evaluate(kb: KnowledgeBase, questions: list[dict], variant: Variant) -> dict[str, dict[str, float]]:
    kb.weights = variant.weights
    ranks: dict[str, list[int | None]] = {"all": [], "zh": [], "en": [], "cross": []}
    for question in questions:
        hits = kb.search(["eval"], question["question"], k=5, method=variant.method)
        rank = next((i for i, hit in enumerate(hits, 1) if correct(hit, question)), None)
        groups = ["all", "cross" if question.get("cross") else question["lang"]]
        for group in groups:
            ranks[group].append(rank)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--chunk-overlap", type=int, default=80)
    args = parser.parse_args()
    questions = [
        json.loads(line) for line in (HERE / "questions.jsonl").read_text().splitlines() if line.strip()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "knowledge"
        shutil.copytree(HERE / "corpus", root / "eval")
        (root / "eval" / "collection.toml").write_text(
            f"chunk_size = {args.chunk_size}\nchunk_overlap = {args.chunk_overlap}\n"
        )
        kb = KnowledgeBase(root, Path(tmp) / "var", SentenceTransformerEmbedder())
        started = time.perf_counter()
        report = kb.ingest("eval")
        took = time.perf_counter() - started
        files, chunks, size = len(report.added), report.chunks_added, args.chunk_size
        print(f"corpus: {files} files, {chunks} chunks of <= {size} chars, ", end="")
        print(f"{report.boilerplate_lines} boilerplate lines dropped, ingested in {took:.1f}s")
        counts = {g: sum(1 for q in questions if (q.get("cross") and g == "cross") or
                         (not q.get("cross") and q["lang"] == g)) for g in ("zh", "en", "cross")}  # fmt: skip
        print(f"questions: {len(questions)} ({', '.join(f'{g} {n}' for g, n in counts.items())})\n")
        header = (
            f"{'method':32s} {'r@1':>6s} {'r@5':>6s} {'MRR':>6s} | zh r@1/r@5 | en r@1/r@5 | cross r@1/r@5"
        )
        print(header)
        print("-" * len(header))
        for variant in VARIANTS:
            result = evaluate(kb, questions, variant)
            a = result["all"]
            cells = [
                f"{result[g]['r@1']:.2f}/{result[g]['r@5']:.2f}" if g in result else "   -   "
                for g in ("zh", "en", "cross")
            ]
            print(f"{variant.label:32s} {a['r@1']:6.2f} {a['r@5']:6.2f} {a['mrr']:6.3f} | {cells[0]:>10s} | "
                  f"{cells[1]:>10s} | {cells[2]:>13s}")  # fmt: skip


if __name__ == "__main__":
    main()
