"""Knowledge in client/server mode: collections in a real Chroma server (``chroma run``), ingested
by one side and searched by workers that share no disk with it."""

from __future__ import annotations

import pytest

from bots.core.config import AppConfig, Secrets
from bots.knowledge.factory import build_knowledge
from bots.knowledge.store import FusionWeights, KnowledgeBase, KnowledgeError
from bots.testing.chroma import chroma_server, find_chroma
from bots.testing.servers import require_program

FOG = """# Fog

The fog comes in late spring. First the far rocks disappear, then the near ones.

In fog the horn matters more than the lamp: two blasts every thirty seconds, one long, one short.
"""
LOG = """# The log

Every keeper wrote the log in the same order: time, wind, sea, visibility, the lamp.

We wrote in pencil, because ink runs when the window leaks.
"""


@pytest.fixture
def chroma_url(tmp_path):
    program = require_program("chroma", *([find_chroma()] if find_chroma() else []))
    with chroma_server(tmp_path / "chroma-server", program) as url:
        yield url


def _kb(root, data_dir, embedder, url) -> KnowledgeBase:
    kb = KnowledgeBase(root, data_dir, embedder, FusionWeights(), chroma_url=url)
    kb.revision_check_s = 0  # ask the server at every search (the default asks every 10 s)
    return kb


def test_workers_search_what_another_side_ingested_into_the_server(tmp_path, embedder, chroma_url):
    root = tmp_path / "knowledge"
    (root / "keeper").mkdir(parents=True)
    (root / "keeper" / "fog.md").write_text(FOG, encoding="utf-8")
    (root / "keeper" / "log.md").write_text(LOG, encoding="utf-8")
    ingester = _kb(root, tmp_path / "ingester", embedder, chroma_url)
    report = ingester.ingest("keeper")
    assert sorted(report.added) == ["fog.md", "log.md"] and not report.errors
    assert not (tmp_path / "ingester" / "knowledge" / "chroma").exists()  # nothing on the local disk

    worker = _kb(root, tmp_path / "worker", embedder, chroma_url)  # another machine: its own data_dir
    [hit] = worker.search(["keeper"], "why did they write with a pencil", k=1, method="keyword")
    assert hit.source == "log.md" and "pencil" in hit.text  # BM25, built from the server's texts
    [hit] = worker.search(["keeper"], "graphite since the ink ran", k=1, method="dense")
    assert hit.source == "log.md"
    assert worker.stats("keeper")["chunks"] == ingester.stats("keeper")["chunks"]

    # a change ingested elsewhere reaches the worker's keyword index at its next search
    (root / "keeper" / "log.md").write_text(LOG.replace("pencil", "charcoal"), encoding="utf-8")
    assert ingester.ingest("keeper").changed == ["log.md"]
    [hit] = worker.search(["keeper"], "charcoal", k=1, method="keyword")
    assert "charcoal" in hit.text
    assert worker.search(["keeper"], "pencil", k=1, method="keyword") == []
    # a second worker, started after all that, reads the same
    late = _kb(root, tmp_path / "late", embedder, chroma_url)
    assert late.search(["keeper"], "charcoal", k=1, method="keyword")[0].text == hit.text


def test_a_server_that_is_not_there_is_a_clear_error(tmp_path, embedder):
    from bots.testing.servers import free_port

    (tmp_path / "k" / "notes").mkdir(parents=True)
    (tmp_path / "k" / "notes" / "a.md").write_text("a note", encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    kb = KnowledgeBase(tmp_path / "k", tmp_path / "var", embedder, chroma_url=url)
    with pytest.raises(KnowledgeError, match=r"Chroma server at http://127\.0\.0\.1"):
        kb.ingest("notes")


def test_chroma_url_and_token_come_from_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("BOTS_CHROMA_TOKEN", "chroma-secret")
    config = AppConfig.model_validate(
        {
            "data_dir": tmp_path,
            "knowledge": {"chroma_url": "http://10.0.0.5:8000", "embedding_url": "http://e/v1"},
        }
    )
    secrets = Secrets()
    kb = build_knowledge(config, secrets)
    assert kb.chroma_url == "http://10.0.0.5:8000"
    assert kb._chroma_headers == {"Authorization": "Bearer chroma-secret"}
    assert "chroma-secret" in secrets.handed_out  # redacted from the logs
    with pytest.raises(ValueError, match="chroma_url"):
        AppConfig.model_validate({"knowledge": {"chroma_url": "chroma.example"}})


def test_a_server_that_goes_away_leaves_the_workers_searching_their_folders(tmp_path, embedder, caplog):
    """The Chroma server stops after a worker built its search folder: the worker's revision check
    fails, is logged, and the search answers from the folder (it raised the HTTP client's error,
    which the pipeline took for an unhandled error and the message went unanswered)."""
    program = require_program("chroma", *([find_chroma()] if find_chroma() else []))
    root = tmp_path / "knowledge"
    (root / "keeper").mkdir(parents=True)
    (root / "keeper" / "log.md").write_text(LOG, encoding="utf-8")
    with chroma_server(tmp_path / "chroma-server", program) as url:
        assert not _kb(root, tmp_path / "ingester", embedder, url).ingest("keeper").errors
        worker = _kb(root, tmp_path / "worker", embedder, url)
        assert worker.search(["keeper"], "pencil", k=1, method="keyword")
    [hit] = worker.search(["keeper"], "why did they write with a pencil", k=1, method="keyword")
    assert "pencil" in hit.text
    assert f"Chroma server at {url}" in caplog.text
