"""The embedding service, real server on 127.0.0.1 with the bundled model, and its client."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn

from bots.embedserver.app import ServerSettings, create_app
from bots.embedserver.batcher import MicroBatcher, QueueFull
from bots.knowledge.embeddings import BUNDLED_MODEL, HttpEmbedder, make_embedder
from bots.knowledge.store import KnowledgeBase

TEXTS = [
    "The north light flashes white twice every ten seconds.",
    "石屿的雾多在春末。",
    "fog",
    "A keeper's worst fear was not a storm but falling asleep at the lamp on a long night.",
]


@contextmanager
def running_server(embedder, **overrides):
    settings = ServerSettings(model_name=BUNDLED_MODEL, **overrides)
    with running_app(create_app(settings, embedder.embed)) as url:
        yield url


@contextmanager
def running_app(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="module")
def service(embedder):
    with running_server(embedder, api_key="test-key", max_inputs=64, max_chars=200, oversize="reject") as url:
        yield url


def _post(url: str, body, key: str | None = "test-key") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=30)


def test_vectors_equal_in_process_vectors(service, embedder):
    response = _post(service, {"input": TEXTS, "model": BUNDLED_MODEL})
    assert response.status_code == 200
    payload = response.json()
    assert payload["model"] == BUNDLED_MODEL and [row["index"] for row in payload["data"]] == [0, 1, 2, 3]
    served = np.array([row["embedding"] for row in payload["data"]], dtype=np.float32)
    local = embedder.embed(TEXTS)
    cosine = (served * local).sum(axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1))
    assert cosine.min() > 0.999
    one = _post(service, {"input": TEXTS[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(one["data"][0]["embedding"]), dtype="<f4")
    assert np.dot(decoded, local[0]) > 0.999


async def test_concurrent_mixed_requests_get_their_own_vectors_in_order(service, embedder):
    requests = [TEXTS[i % 4 :] + TEXTS[: i % 4] for i in range(12)] + [[TEXTS[i % 4]] for i in range(12)]
    async with httpx.AsyncClient(headers={"Authorization": "Bearer test-key"}, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post(f"{service}/v1/embeddings", json={"input": texts}) for texts in requests)
        )
    reference = {text: vector for text, vector in zip(TEXTS, embedder.embed(TEXTS), strict=True)}
    for texts, response in zip(requests, responses, strict=True):
        rows = response.json()["data"]
        assert len(rows) == len(texts)
        for text, row in zip(texts, rows, strict=True):
            assert np.dot(np.array(row["embedding"], dtype=np.float32), reference[text]) > 0.999


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input": []}, 400, "input is empty"),
        ({"input": ["ok", "  "]}, 400, "input[1] is empty"),
        ({"input": 42}, 400, "input"),
        ({"input": [1, 2, 3]}, 400, "input"),
        ({"nothing": "here"}, 400, "input"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": ["t"] * 65}, 413, "too many inputs"),
        ({"input": "x" * 201}, 413, "at most 200"),
    ],
)
def test_bad_input_gets_a_4xx_json_error(service, body, status, message):
    response = _post(service, body)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]


def test_unknown_model_is_404_model_not_found_and_aliases_pick_the_served_model(service):
    response = _post(service, {"input": "x", "model": "text-embedding-3-large"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and "text-embedding-3-large" in error["message"]
    assert _post(service, {"input": "x", "model": "minilm"}).json()["model"] == BUNDLED_MODEL


def test_over_long_input_is_rejected_by_default_and_cut_only_when_asked(embedder):
    assert ServerSettings(model_name=BUNDLED_MODEL).oversize == "reject"
    with running_server(embedder, max_chars=50) as url:
        response = _post(url, {"input": ["short", "y" * 1_000_000]}, key=None)
        assert response.status_code == 413
        assert "input[1] has 1000000 characters" in response.json()["error"]["message"]
    with running_server(embedder, max_chars=50, oversize="truncate") as url:
        rows = _post(url, {"input": ["y" * 51, "y" * 50]}, key=None).json()["data"]
        assert np.allclose(rows[0]["embedding"], rows[1]["embedding"], atol=1e-5)


def test_several_models_served_the_request_picks_one(embedder):
    packaged = make_embedder("use")
    settings = ServerSettings(model_name=BUNDLED_MODEL)
    app = create_app(settings, {BUNDLED_MODEL: embedder.embed, packaged.model_name: packaged.embed})
    with running_app(app) as url:
        default = _post(url, {"input": TEXTS[1]}, key=None).json()
        chosen = _post(url, {"input": TEXTS[1], "model": "use-multilingual-v3"}, key=None).json()
        listed = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert default["model"] == BUNDLED_MODEL and len(default["data"][0]["embedding"]) == 384
    assert chosen["model"] == "use-multilingual-v3" and len(chosen["data"][0]["embedding"]) == 512
    assert np.dot(chosen["data"][0]["embedding"], packaged.embed([TEXTS[1]])[0]) > 0.999
    assert listed == [BUNDLED_MODEL, "use-multilingual-v3"]


def test_malformed_json_body(service):
    response = httpx.post(
        f"{service}/v1/embeddings", content=b"{not json", timeout=10,
        headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400 and "error" in response.json()


def test_auth_health_models_and_metrics(service):
    assert _post(service, {"input": "x"}, key=None).status_code == 401
    assert _post(service, {"input": "x"}, key="wrong").status_code == 401
    health = httpx.get(f"{service}/health").json()
    assert health["status"] == "ok" and health["model"] == BUNDLED_MODEL
    assert httpx.get(f"{service}/metrics").status_code == 401
    models = httpx.get(f"{service}/v1/models", headers={"Authorization": "Bearer test-key"}).json()
    assert models["data"][0]["id"] == BUNDLED_MODEL
    metrics = httpx.get(f"{service}/metrics", headers={"Authorization": "Bearer test-key"}).text
    for name in (
        "embed_queue_depth",
        "embed_batch_size_bucket",
        "embed_request_seconds_bucket",
        "embed_items_total",
    ):
        assert name in metrics


async def test_an_overfilled_queue_answers_429_with_retry_after(embedder):
    gate = threading.Event()

    def slow_encode(texts):
        gate.wait(10)  # hold the first batch until the queue has been overfilled
        return embedder.embed(texts)

    class Slow:
        embed = staticmethod(slow_encode)

    with running_server(Slow, max_queue=4, max_batch=2, max_wait_ms=0) as url:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.create_task(client.post(f"{url}/v1/embeddings", json={"input": TEXTS[:2]}))
            await asyncio.sleep(0.3)  # the first batch is now inside the encoder
            queued = asyncio.create_task(client.post(f"{url}/v1/embeddings", json={"input": TEXTS}))
            await asyncio.sleep(0.3)
            refused = await client.post(f"{url}/v1/embeddings", json={"input": TEXTS[:1]})
            gate.set()
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert (await first).status_code == 200 and (await queued).status_code == 200


async def test_shutdown_finishes_work_in_flight(embedder):
    batches = []

    def encode(texts):
        time.sleep(0.2)
        batches.append(len(texts))
        return embedder.embed(texts)

    batcher = MicroBatcher(encode, max_batch=2, max_wait_ms=0)
    await batcher.start()
    pending = [asyncio.create_task(batcher.embed([text])) for text in TEXTS]
    await asyncio.sleep(0.05)
    await batcher.close()  # returns only after every queued text was encoded
    assert all(task.done() and task.result().shape == (1, 384) for task in pending)
    with pytest.raises(Exception, match="shutting down"):
        await batcher.embed(["late"])


async def test_batcher_unit_queue_bound():
    release = threading.Event()
    batcher = MicroBatcher(
        lambda texts: (release.wait(5), np.ones((len(texts), 2)))[1], max_queue=3, max_wait_ms=0
    )
    await batcher.start()
    first = asyncio.create_task(batcher.embed(["a"]))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.embed(["b", "c", "d"]))
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await batcher.embed(["e"])
    release.set()
    assert (await first).shape == (1, 2) and (await second).shape == (3, 2)
    await batcher.close()


def test_client_ingest_and_search_match_in_process(tmp_path, embedder, service):
    root = tmp_path / "knowledge"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "light.md").write_text(
        "# Light\n\nThe north light flashes white twice every ten seconds.\n\n"
        "The south light shows one red flash every six seconds.\n\n石屿的雾多在春末，雾号一长一短。\n",
        encoding="utf-8",
    )
    (root / "notes" / "collection.toml").write_text("chunk_size = 100\nchunk_overlap = 0\n")
    local = KnowledgeBase(root, tmp_path / "local", embedder)
    remote_embedder = HttpEmbedder(service, api_key="test-key", batch_size=2)
    remote = KnowledgeBase(root, tmp_path / "remote", remote_embedder)
    assert remote_embedder.model_name == BUNDLED_MODEL  # reported by the server
    local.ingest("notes")
    assert remote.ingest("notes").chunks_added == local.stats("notes")["chunks"]
    for query in ("which light is red?", "how often does the north light flash", "雾号"):
        assert [h.id for h in remote.search(["notes"], query, k=3)] == [
            h.id for h in local.search(["notes"], query, k=3)
        ]
    remote_embedder.close()


def test_client_retries_after_429(embedder):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"message": "busy"}})
        vectors = embedder.embed(["x"])
        return httpx.Response(
            200, json={"model": "m", "data": [{"index": 0, "embedding": vectors[0].tolist()}]}
        )

    client = HttpEmbedder("http://127.0.0.1:9/v1")
    client._client = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.embed(["x"]).shape == (1, 384) and len(calls) == 2
    assert str(calls[0].url) == "http://127.0.0.1:9/v1/embeddings"


def test_client_queries_ask_for_the_query_encoding_through_the_service(embedder):
    """embed_query sends input_type "query": a server serving a prefixed model (e5) encodes it with
    the query prefix, passages without it."""

    def as_query(texts: list[str]) -> np.ndarray:
        return embedder.embed([f"query: {text}" for text in texts])

    app = create_app(
        ServerSettings(model_name=BUNDLED_MODEL), embedder.embed, query_encoders={BUNDLED_MODEL: as_query}
    )
    with running_app(app) as url:
        client = HttpEmbedder(url)
        queries, passages = client.embed_query(TEXTS), client.embed(TEXTS)
        client.close()
    assert np.allclose(queries, as_query(TEXTS), atol=1e-5)
    assert np.allclose(passages, embedder.embed(TEXTS), atol=1e-5)
    assert not np.allclose(queries, passages, atol=1e-3)


def test_client_drops_input_type_for_a_server_that_refuses_it(embedder):
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if "input_type" in body:  # as OpenAI answers an unknown argument
            return httpx.Response(
                400, json={"error": {"message": "Unrecognized request argument supplied: input_type"}}
            )
        vectors = embedder.embed(body["input"])
        return httpx.Response(
            200, json={"model": "m", "data": [{"index": 0, "embedding": vectors[0].tolist()}]}
        )

    client = HttpEmbedder("http://127.0.0.1:9/v1")
    client._client = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.embed_query(["x"]).shape == (1, 384)
    assert client.embed_query(["y"]).shape == (1, 384)
    assert [b.get("input_type") for b in bodies] == ["query", None, None]
