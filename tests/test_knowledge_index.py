"""The index: real chromadb and the real bundled embedding model on small corpora written here."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from bots.knowledge.store import FusionWeights, KnowledgeBase, KnowledgeError

FOG = """# 雾中的灯

石屿的雾多在春末。雾来的时候，先是远处的礁石不见了。

雾天最要紧的不是灯，而是雾号。我们的雾号每三十秒响两声，一长一短。

雾天值班，我把热水壶放在炉子上，每小时出门看一次能见度。
"""
LOG = """# Keeping the log

Every keeper wrote the log in the same order: time, wind, sea, visibility, the lamp.

We wrote in pencil, because ink runs when the window leaks.

A good entry can be read by a stranger at three in the morning.
"""


@pytest.fixture
def kb(tmp_path, embedder):
    root = tmp_path / "knowledge"
    (root / "keeper").mkdir(parents=True)
    (root / "keeper" / "fog.md").write_text(FOG, encoding="utf-8")
    (root / "keeper" / "log.md").write_text(LOG, encoding="utf-8")
    (root / "keeper" / "collection.toml").write_text('title = "Keeper notes"\nchunk_size = 120\n')
    return KnowledgeBase(root, tmp_path / "var", embedder, FusionWeights())


def test_ingest_then_search_in_both_languages(kb):
    report = kb.ingest("keeper")
    assert sorted(report.added) == ["fog.md", "log.md"] and report.chunks_added >= 4 and not report.errors
    [hit] = kb.search(["keeper"], "雾号怎么响？", k=1)
    assert hit.source == "fog.md" and "一长一短" in hit.text
    assert FOG.splitlines()[hit.start_line - 1] in hit.text  # the line numbers point at the text
    [hit] = kb.search(["keeper"], "why did they write with a pencil", k=1)
    assert hit.source == "log.md" and "pencil" in hit.text
    dense = kb.search(["keeper"], "graphite instead of ink because of leaking windows", k=1, method="dense")
    assert dense[0].source == "log.md"  # no shared keyword: the embedding model found it
    assert kb.search(["keeper"], "燈塔的霧號", k=1, method="keyword")[0].source == "fog.md"  # 繁體 query


def test_reingest_is_idempotent_and_follows_changes_and_deletions(kb):
    kb.ingest("keeper")
    again = kb.ingest("keeper")
    assert again.unchanged == 2 and again.chunks_added == 0 and not again.added
    folder = kb.root / "keeper"
    (folder / "log.md").write_text(LOG.replace("pencil", "charcoal"), encoding="utf-8")
    changed = kb.ingest("keeper")
    assert changed.changed == ["log.md"] and changed.unchanged == 1
    assert "charcoal" in kb.search(["keeper"], "charcoal", k=1)[0].text
    assert all("pencil" not in hit.text for hit in kb.search(["keeper"], "pencil", k=5))
    (folder / "fog.md").unlink()
    removed = kb.ingest("keeper")
    assert removed.removed == ["fog.md"] and removed.chunks_removed > 0
    assert all(hit.source != "fog.md" for hit in kb.search(["keeper"], "雾号", k=5))
    assert kb.stats("keeper")["indexed_files"] == 1


def test_bad_files_are_reported_and_skipped(kb):
    folder = kb.root / "keeper"
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (folder / "noise.txt").write_bytes(bytes(range(256)) * 20)
    report = kb.ingest("keeper")
    assert sorted(report.added) == ["fog.md", "log.md"]
    assert len(report.errors) == 2 and any("broken.pdf" in e for e in report.errors)


def test_a_different_embedding_model_is_refused(kb, embedder):
    kb.ingest("keeper")

    class OtherModel:
        model_name = "some-other-model"

        def embed(self, texts):
            return embedder.embed(texts)

    other = KnowledgeBase(kb.root, kb.index_dir.parent, OtherModel())
    with pytest.raises(KnowledgeError, match=r"bots ingest keeper --rebuild"):
        other.search(["keeper"], "fog", k=1)
    with pytest.raises(KnowledgeError, match="some-other-model"):
        other.ingest("keeper")
    rebuilt = other.ingest("keeper", rebuild=True)
    assert rebuilt.chunks_added > 0 and other.search(["keeper"], "fog", k=1)


def test_search_needs_an_index(kb):
    with pytest.raises(KnowledgeError, match="bots ingest keeper"):
        kb.search(["keeper"], "fog")


def test_cli_ingest_and_json_search(kb, tmp_path, monkeypatch):
    from bots.cli import app

    config = tmp_path / "bots.toml"
    config.write_text(f'data_dir = "{kb.index_dir.parent}"\nknowledge_dir = "{kb.root}"\n')
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "keeper", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "2 added" in result.output
    result = runner.invoke(app, ["search", "keeper", "雾号", "--k", "2", "--json", "--config", str(config)])
    hits = json.loads(result.stdout)
    assert hits[0]["source"] == "fog.md" and {"start_line", "end_line", "score", "text"} <= set(hits[0])
    listed = runner.invoke(app, ["knowledge", "list", "--config", str(config)])
    assert "keeper" in listed.output


def test_settings_change_rechunks_and_empty_files_are_reported_skipped(kb):
    (kb.root / "keeper" / "empty.md").write_text("", encoding="utf-8")
    first = kb.ingest("keeper")
    assert first.skipped["empty.md"] == "empty" and "empty.md" not in first.added
    second = kb.ingest("keeper")
    assert second.unchanged == 2 and second.skipped == {"empty.md": "empty"}  # said again, not "added"
    (kb.root / "keeper" / "collection.toml").write_text('title = "Keeper notes"\nchunk_size = 200\n')
    again = kb.ingest("keeper")
    assert sorted(again.changed) == ["fog.md", "log.md"]
    (kb.root / "keeper" / "collection.toml").write_text('title = "Renamed"\nchunk_size = 200\n')
    assert kb.ingest("keeper").unchanged == 2  # a new title is no reason to re-embed


def test_an_interrupted_ingest_leaves_no_duplicates_or_orphans(kb, embedder):
    class FailsOnce:
        model_name = embedder.model_name
        calls = 0

        def embed(self, texts):
            FailsOnce.calls += 1
            if FailsOnce.calls == 2:
                raise RuntimeError("power cut")
            return embedder.embed(texts)

    broken = KnowledgeBase(kb.root, kb.index_dir.parent, FailsOnce())
    with pytest.raises(RuntimeError):
        broken.ingest("keeper")
    report = kb.ingest("keeper")
    assert len(report.added) == 1 and report.unchanged == 1
    stored = kb._stored("keeper")
    texts = stored.get(include=["documents"])["documents"]
    assert len(texts) == len(set(texts)) == kb.stats("keeper")["chunks"]


def test_an_index_from_an_older_pipeline_is_refused(kb, embedder):
    kb.ingest("keeper")
    folder = kb.index_dir / "keyword" / "keeper"
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "pipeline": "0"}))
    reader = KnowledgeBase(kb.root, kb.index_dir.parent, embedder)
    with pytest.raises(KnowledgeError, match=r"older version.*--rebuild"):
        reader.search(["keeper"], "fog", method="keyword")
    # an index from before the search folder had meta.json: checked in chromadb
    stored = kb._stored("keeper")
    old = {k: v for k, v in stored.metadata.items() if not k.startswith("hnsw:")}
    stored.modify(metadata={**old, "pipeline": "0"})
    (folder / "meta.json").unlink()
    reader = KnowledgeBase(kb.root, kb.index_dir.parent, embedder)
    with pytest.raises(KnowledgeError, match=r"older version.*--rebuild"):
        reader.search(["keeper"], "fog")


def test_a_search_folder_with_other_bm25_settings_is_rebuilt(kb):
    from bots.knowledge.snapshot import BM25_PARAMS

    kb.ingest("keeper")
    meta_file = kb.index_dir / "keyword" / "keeper" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["bm25"] == BM25_PARAMS
    meta_file.write_text(json.dumps({**meta, "bm25": {"k1": 1.5, "b": 0.75}}))  # an older build
    reader = KnowledgeBase(kb.root, kb.index_dir.parent, kb.embedder)
    assert reader.search(["keeper"], "雾号", k=1, method="keyword")[0].source == "fog.md"
    assert json.loads(meta_file.read_text())["bm25"] == BM25_PARAMS


def test_an_index_without_its_search_folder_gets_one_from_chromadb(kb):
    kb.ingest("keeper")
    expected = [(h.id, h.start_line, h.text) for h in kb.search(["keeper"], "雾号 pencil", k=3)]
    shutil.rmtree(kb.index_dir / "keyword" / "keeper")  # as an index written before it existed
    reader = KnowledgeBase(kb.root, kb.index_dir.parent, kb.embedder)
    assert [(h.id, h.start_line, h.text) for h in reader.search(["keeper"], "雾号 pencil", k=3)] == expected


def test_a_running_reader_follows_a_reingest_by_another_process(kb, embedder):
    kb.ingest("keeper")
    reader = KnowledgeBase(kb.root, kb.index_dir.parent, embedder)
    assert reader.search(["keeper"], "pencil", k=1)[0].source == "log.md"
    (kb.root / "keeper" / "log.md").write_text(LOG.replace("pencil", "charcoal"), encoding="utf-8")
    kb.ingest("keeper")  # "another process": a second instance on the same files
    hits = reader.search(["keeper"], "charcoal pencil", k=3, method="keyword")
    assert hits and all("pencil" not in hit.text for hit in hits)


def test_several_collections_are_ranked_together(tmp_path, embedder):
    root = tmp_path / "knowledge"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    (root / "a" / "tea.md").write_text(
        "# 茶馆\n\n潮声茶馆每天早上七点开门，卖红茶和绿茶。\n", encoding="utf-8"
    )
    (root / "b" / "horn.md").write_text(
        "# 雾号\n\n雾号每三十秒响两声，一长一短，提醒船只让开暗礁。\n", encoding="utf-8"
    )
    base = KnowledgeBase(root, tmp_path / "var", embedder)
    base.ingest("a")
    base.ingest("b")
    assert base.search(["a", "b"], "雾号多久响一次", k=2)[0].collection == "b"
    assert base.search(["b", "a"], "茶馆几点开门", k=2)[0].collection == "a"
