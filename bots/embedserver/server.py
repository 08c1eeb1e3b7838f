"""``bots embed-server``: load the model, build the app, serve it with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from bots.embedserver.app import ServerSettings, create_app
from bots.knowledge.embeddings import BUNDLED_MODEL, SentenceTransformerEmbedder

log = logging.getLogger("bots.embedserver")


def serve(host: str, port: int, model: str | None, device: str, **limits: object) -> None:
    max_batch = limits.pop("max_batch", None)
    embedder = SentenceTransformerEmbedder(model, device=device)
    limits["max_batch"] = int(max_batch or embedder.batch_size)  # type: ignore[arg-type]
    embedder.batch_size = int(limits["max_batch"])  # one micro-batch is one forward pass
    embedder.embed(["warm up"])  # load before accepting traffic
    settings = ServerSettings(model_name=model or BUNDLED_MODEL, device=embedder.device, **limits)  # type: ignore[arg-type]
    app = create_app(settings, embedder.embed)
    # uvicorn stops on SIGINT/SIGTERM after in-flight requests; the app's lifespan then drains the batcher
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
