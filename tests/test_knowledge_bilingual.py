"""The bilingual term map (CC-CEDICT, per collection) and the cross-lingual keyword path it feeds,
on a small collection written here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bots.knowledge import bilingual
from bots.knowledge.bilingual import TERMS_FILE, derive, gloss_words
from bots.knowledge.store import FusionWeights, KnowledgeBase, Plan, Rankings, top_keys
from bots.knowledge.text import query_tokenize

CAPE = """# 北岬

北岬的灯塔建于一九零七年，雾天时灯塔的雾号每三十秒响两声。

岛上的学校有四十个学生，老师每周三带他们去海边捡贝壳。
"""
HARBOUR = """# The harbour

The ferry leaves the harbour at nine in the morning, and the adult fare is 28 yuan.

The fish market opens at six; from its roof you can see the lighthouse on the north cape.

Repairing a fishing boat costs more every year, and the harbour fee went up in spring.
"""


@pytest.fixture
def kb(tmp_path, embedder):
    root = tmp_path / "knowledge"
    (root / "island").mkdir(parents=True)
    (root / "island" / "cape.md").write_text(CAPE, encoding="utf-8")
    (root / "island" / "harbour.md").write_text(HARBOUR, encoding="utf-8")
    (root / "island" / "collection.toml").write_text("chunk_size = 100\n")
    kb = KnowledgeBase(root, tmp_path / "var", embedder, FusionWeights())
    kb.ingest("island")
    return kb


def words(text: str) -> list[str]:
    return query_tokenize(text, None, bigrams=False)


def test_glosses_lose_notes_references_and_long_descriptions():
    assert gloss_words("(of a boat) to drift") == ["drift"]
    assert gloss_words("lighthouses") == ["lighthous"]  # stemmed as the English search tokens are
    assert gloss_words("CL:座[zuo4]") == gloss_words("variant of 灯塔[deng1 ta3]") == []
    assert gloss_words("a large building where fish are sold early in the morning") == []


def test_the_term_map_keeps_only_what_reaches_the_collection():
    entries = [("灯塔", [["lighthous"], ["beacon"], ["tower", "ship", "light"]]), ("大象", [["eleph"]])]
    assert derive({"lighthous", "light", "灯塔"}, entries) == {
        "zh:灯塔": ["lighthous", "light"],  # English tokens of its text only
        "en:lighthous": ["灯塔"],  # a question's word, through a specific gloss only
        "en:beacon": ["灯塔"],
    }


def test_the_collection_term_map_translates_both_ways(kb):
    snapshot = kb._snapshot("island", needs_model=False)
    assert "lighthous" in snapshot.translate(words("灯塔"), into_cjk=False)
    assert "灯塔" in snapshot.translate(words("lighthouse"), into_cjk=True)
    assert {"ferri", "fare"} <= set(snapshot.translate(words("渡轮票价"), into_cjk=False))
    # restricted to the collection's own words: neither "elephant" nor 大象 is in its text
    assert snapshot.translate(words("大象"), into_cjk=False) == []
    assert snapshot.translate(words("elephant"), into_cjk=True) == []


def sources(kb: KnowledgeBase, question: str, plan: Plan) -> list[str]:
    """The top 2 with the dense part off: the cross place comes from the translated ranking alone."""
    found = kb.rankings(["island"], question, 50, plan)
    found.dense, found.other = [], []
    return [chunk_id.split("#")[0] for (_, chunk_id), _ in top_keys(found, plan, 2)]  # "source#i:hash"


def test_the_translated_path_finds_the_other_language_passage_without_the_dense_ranking(kb):
    plan = Plan(keyword=1.0, dense=0.0, cross_slots=1, translated=2.0)
    question = "When was the lighthouse built?"
    assert "cape.md" in sources(kb, question, plan)
    assert "cape.md" not in sources(kb, question, replace(plan, translated=0.0))
    found = kb.rankings(["island"], question, 50, plan)
    best = found.collections["island"].chunk(found.translated[0][2])
    assert best is not None and "灯塔" in best[0]  # the lighthouse paragraph, not the school one
    assert "harbour.md" in sources(kb, "渡轮的票价是多少？", plan)


def ranked(*chunks: str) -> list[tuple[float, str, str]]:
    return [(1.0 - i / 10, "c", chunk) for i, chunk in enumerate(chunks)]


def test_the_cross_lingual_best_goes_first_only_when_both_paths_agree():
    """English question: same-language keyword hits e1, e2, e3; the other language's z1 is first by
    the translated words. It goes first when the dense ranking of all chunks has it in its first 2
    places, and keeps the last place otherwise."""
    plan = Plan(keyword=1.0, dense=2.0, cross_slots=1, translated=2.0, cross_first=2)
    agree = Rankings(
        keyword=ranked("e1", "e2", "e3"),
        dense=ranked("e2", "z1", "e1"),
        translated=ranked("z1", "z2"),
        other=ranked("z1", "z2"),
    )
    first = lambda found, plan: top_keys(found, plan, 3)[0][0][1]  # noqa: E731
    assert [key[1] for key, _ in top_keys(agree, plan, 3)] == ["z1", "e2", "e1"]
    assert [key[1] for key, _ in top_keys(agree, plan, 1)] == ["z1"]
    assert first(agree, replace(plan, cross_first=0)) == "e2"
    assert first(agree, replace(plan, cross_slots=0)) == "e2"
    assert first(replace(agree, dense=ranked("e2", "e1", "z1")), plan) == "e2"
    assert first(replace(agree, translated=ranked("z2", "z1")), plan) == "e2"


def test_a_damaged_term_map_loses_the_translated_path_not_the_search(kb, caplog):
    snapshot = kb._snapshot("island", needs_model=False)
    (snapshot.path / TERMS_FILE).write_bytes(b"not a database at all" * 100)
    plan = Plan(keyword=1.0, dense=0.0, cross_slots=1, translated=2.0)
    hits = kb.search(["island"], "When was the lighthouse built?", k=2)  # fused, cross place on
    assert hits, "the search still answers"
    assert kb.rankings(["island"], "When was the lighthouse built?", 50, plan).translated == []
    assert "the term map cannot be read" in caplog.text


def test_the_prepared_dictionary_is_kept_once_per_machine(tmp_path, monkeypatch):
    """Prepared once (seconds of stemming), then read from the machine's cache by any data_dir and
    any process; a damaged copy is prepared again."""
    monkeypatch.setenv("BOTS_CACHE_DIR", str(tmp_path / "machine"))
    monkeypatch.setattr(bilingual, "_loaded", {})  # as a new process
    entries = bilingual.dictionary(tmp_path / "data-1" / "cache")
    assert entries and any(word == "灯塔" for word, _ in entries)
    kept = list((tmp_path / "machine").glob("cedict-glosses-*.json"))
    assert len(kept) == 1 and not (tmp_path / "data-1").exists()
    monkeypatch.setattr(bilingual, "_loaded", {})
    monkeypatch.setattr(bilingual, "_prepared", lambda: pytest.fail("prepared again"))
    assert bilingual.dictionary(tmp_path / "data-2" / "cache") == entries
    kept[0].write_text('{"entries": 7}')  # damaged: prepared again, and kept again
    monkeypatch.setattr(bilingual, "_loaded", {})
    monkeypatch.setattr(bilingual, "_prepared", lambda: entries[:10])
    assert bilingual.dictionary(None) == entries[:10]
    assert bilingual._read_prepared(kept[0]) == entries[:10]
