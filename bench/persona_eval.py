"""Persona fidelity on real writing: a persona built from Wei Li's texts, asked our own questions.

Reads the four documents of ../shared/corpus/ at run time (never copied into the project): the two
by Wei Li (立委) become the persona's collection, the two by Zhang Junlin and Sun Maosong the
contrast set. Then, as `bots persona build` and `bots persona eval` do: draft the persona, ingest
the collection (keyword + dense, the bundled MiniLM), ask bench/persona_eval/questions.jsonl
through the real agent with the configured model (default: the bundled offline SmolLM2), and
print the per-question table, the totals and the style classifier's numbers.

    .venv/bin/python bench/persona_eval.py [--provider local|fake] [--limit N] [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from bots.agent.builder import build_persona, read_documents
from bots.agent.persona import dump_persona
from bots.assembly import build_knowledge
from bots.core.config import AppConfig, Secrets
from bots.evaluation import (
    LEGEND,
    Report,
    agent_answers,
    corpus_segments,
    load_questions,
    run,
    style_summary,
    tables,
)
from bots.knowledge.collection import Collection

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
QUESTIONS = Path(__file__).parent / "persona_eval" / "questions.jsonl"
AUTHOR = {"000_c84f42c56e3adfd5.txt", "003_e742d3d7600005a8.txt"}  # Wei Li (立委)
CONTRAST = {"002_1c65c907ccc9c8c4.txt", "004_f9cce8f02759c119.txt"}  # Zhang Junlin, Sun Maosong
NAME = "Wei Li (立委)"
out = Console()


def lay_out(base: Path) -> AppConfig:
    """knowledge/weili and knowledge/others filled from the shared corpus (copied at run time)."""
    for folder, names in (("weili", AUTHOR), ("others", CONTRAST)):
        target = base / "knowledge" / folder
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            (target / name).write_bytes((CORPUS / name).read_bytes())
    (base / "knowledge" / "weili" / "collection.toml").write_text(f'title = "{NAME}"\n', encoding="utf-8")
    return AppConfig(
        data_dir=base / "var",
        personas_dir=base / "personas",
        knowledge_dir=base / "knowledge",
        plugin_dirs=[],
    )


def draft(cfg: AppConfig):
    started = time.perf_counter()
    made = build_persona(
        read_documents(Collection(cfg.knowledge_dir, "weili")),
        collection="weili",
        name=NAME,
        contrast=read_documents(Collection(cfg.knowledge_dir, "others")),
        contrast_collection="others",
    )
    cfg.personas_dir.mkdir(parents=True, exist_ok=True)
    (cfg.personas_dir / "weili.yaml").write_text(dump_persona(made.persona), encoding="utf-8")
    p = made.persona
    took = time.perf_counter() - started
    out.print(
        f"[bold]persona build[/bold] {took:.1f}s: {made.paragraphs} paragraphs, {len(p.exemplars)} exemplars "
        f"of {made.candidates} candidates -> {cfg.personas_dir / 'weili.yaml'}"
    )
    for rule in p.style:
        out.print(f"  style: {rule}", highlight=False)
    out.print(f"  openings: {p.answer_openings}\n  closings: {p.answer_closings}", highlight=False)
    return p


def ingest(cfg: AppConfig) -> None:
    started = time.perf_counter()
    report = build_knowledge(cfg).ingest("weili")
    out.print(f"[bold]ingest[/bold] weili: {report.chunks_added} chunks added ({report.unchanged} files "
              f"unchanged) in {time.perf_counter() - started:.1f}s")  # fmt: skip


async def ask(cfg: AppConfig, persona, limit: int | None) -> Report:
    questions = load_questions(QUESTIONS)[:limit]
    out.print(f"[bold]eval[/bold]: {len(questions)} questions, llm provider {cfg.llm.provider!r}")

    def progress(result) -> None:
        out.print(f"  {result.question.id}: {result.mode} {result.seconds:.1f}s", highlight=False)

    async with agent_answers(cfg, Secrets(), "weili", persona) as answer:
        frames = [*persona.answer_openings, *persona.answer_closings]
        return Report(await run(questions, answer, exclude=frames, on_result=progress))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", default=None, help="llm.provider [default: local, the bundled model]")
    parser.add_argument("--limit", type=int, default=None, help="ask only the first N questions")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR (the index is kept for reruns)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to FILE")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    missing = sorted(n for n in AUTHOR | CONTRAST if not (CORPUS / n).is_file())
    if missing:
        raise SystemExit(
            f"the shared corpus is not at {CORPUS} (missing {', '.join(missing)}); nothing to run"
        )
    with tempfile.TemporaryDirectory(prefix="persona-eval-") as tmp:
        base = args.keep or Path(tmp)
        cfg = lay_out(base)
        if args.provider:
            cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"provider": args.provider})})
        persona = draft(cfg)
        ingest(cfg)
        started = time.perf_counter()
        report = asyncio.run(ask(cfg, persona, args.limit))
        asked = time.perf_counter() - started
        started = time.perf_counter()
        author = corpus_segments(cfg.knowledge_dir, ["weili"], [NAME])
        report.style = style_summary(report.results, author, corpus_segments(cfg.knowledge_dir, ["others"]))
        out.print(f"questions asked in {asked:.0f}s; style classifier {time.perf_counter() - started:.1f}s")
        for table in tables(report):
            out.print(table)
        out.print(LEGEND, highlight=False)
        if args.json:
            args.json.write_text(json.dumps(report.as_json(), ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
