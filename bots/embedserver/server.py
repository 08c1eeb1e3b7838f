"""``bots embed-server``: load the models, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import uvicorn

from bots.embedserver.app import ServerSettings, create_app
from bots.embedserver.batcher import Encode
from bots.knowledge.embeddings import SentenceTransformerEmbedder, make_embedder

log = logging.getLogger("bots.embedserver")


def serve(
    host: str, port: int, models: str | Sequence[str | None] | None, device: str, **limits: object
) -> None:
    """Serve one or several models; the first is the default (``None``: the bundled MiniLM).

    Every model is one backend behind the same interface (``embed``, and ``embed_query`` where
    queries differ): sentence-transformers models on CUDA in fp16 when present, the packaged
    multilingual models (``multilingual-e5-small``, ``use-multilingual-v3``) on the CPU.
    """
    names = [models] if models is None or isinstance(models, str) else list(models) or [None]
    max_batch = limits.pop("max_batch", None)
    encoders: dict[str, Encode] = {}
    query_encoders: dict[str, Encode] = {}
    resolved_device = "cpu"
    for name in names:
        backend = make_embedder(name, device=device)
        if isinstance(backend, SentenceTransformerEmbedder):
            backend.batch_size = int(max_batch or backend.batch_size)  # one micro-batch, one forward pass
            resolved_device = backend.device
        backend.embed(["warm up"])  # load before accepting traffic
        encoders[backend.model_name] = backend.embed
        if embed_query := getattr(backend, "embed_query", None):
            query_encoders[backend.model_name] = embed_query
    limits["max_batch"] = int(max_batch or (64 if resolved_device.startswith("cuda") else 4))  # type: ignore[arg-type]
    default = next(iter(encoders))
    settings = ServerSettings(model_name=default, device=resolved_device, **limits)  # type: ignore[arg-type]
    app = create_app(settings, encoders, query_encoders=query_encoders)
    # uvicorn stops on SIGINT/SIGTERM after in-flight requests; the app's lifespan then drains the batchers
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
