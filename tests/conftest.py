from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
# prepared data every data_dir shares (the CC-CEDICT glosses): made once, for every test and the
# hosts they start, and kept out of the developer's own ~/.cache
os.environ.setdefault("BOTS_CACHE_DIR", str(ROOT / ".pytest_cache" / "bots-cache"))
SHARED_CARDS = ROOT.parent / "shared" / "cards"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def shared_cards() -> Path:
    if not SHARED_CARDS.is_dir():
        pytest.skip(f"published card fixtures not found at {SHARED_CARDS}")
    return SHARED_CARDS


@pytest.fixture(scope="session")
def embedder():
    """The real bundled sentence-transformers model, loaded once per test session."""
    from bots.knowledge.embeddings import SentenceTransformerEmbedder

    model = SentenceTransformerEmbedder()
    model.embed(["warm up"])
    return model


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on both engines: SQLite in tmp_path, and a fresh PostgreSQL database
    (the test kit's throwaway cluster; skipped without PostgreSQL, failed in CI)."""
    if request.param == "sqlite":
        from bots.core.storage import sqlite_url

        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def harness(request: pytest.FixtureRequest, tmp_path: Path):
    """The test kit's harness; a test that uses ``database_url`` (``usefixtures``) gets hosts on
    that engine, so it runs on SQLite and PostgreSQL."""
    from bots.testing.harness import HarnessFactory

    url = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else None
    factory = HarnessFactory(tmp_path, url)
    try:
        yield factory
    finally:
        await factory.close()
