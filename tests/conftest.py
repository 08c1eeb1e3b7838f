from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
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
