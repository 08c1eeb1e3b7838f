"""The embedding service against in-process encoding: same model, same machine, one run.

1. Baseline: raw in-process ``model.encode`` throughput on a fixed set of texts, in batches of
   the size the service uses on that device (64 on CUDA, 4 on a CPU).
2. Service at saturation: 4 clients sending 256 texts a request; target >= 0.9x the baseline.
3. 32 concurrent clients sending one text a request, repeatedly: service throughput against
   encoding each request separately in-process; target >= 4x. p50/p99 request latency there.

Clients ask for base64 vectors, as OpenAI's own client does (JSON float lists cost more to
write and parse than the encoding itself on a CPU).

The service runs as its own process (``python -m bots.embedserver``) on 127.0.0.1.

    .venv/bin/python bench/embed_bench.py [--device cpu|cuda] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CORPUS = Path(__file__).parent / "retrieval_eval" / "corpus"


def texts(count: int, seed: int = 3) -> list[str]:
    """Chunk-like texts (60 to 500 characters) cut from the evaluation corpus."""
    source = " ".join(p.read_text(encoding="utf-8").replace("\n", " ") for p in sorted(CORPUS.glob("*.md")))
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start, size = rng.randrange(len(source) - 600), rng.randrange(60, 500)
        out.append(source[start : start + size])
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def saturate(
    url: str, corpus: list[str], clients: int, per_request: int, seconds: float
) -> tuple[int, float]:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=120) as http:
            i = offset
            while time.perf_counter() < deadline:
                batch = [corpus[(i + j) % len(corpus)] for j in range(per_request)]
                response = await http.post(url, json={"input": batch, "encoding_format": "base64"})
                response.raise_for_status()
                done += per_request
                i += per_request

    started = time.perf_counter()
    await asyncio.gather(*(client(k * 997) for k in range(clients)))
    return done, time.perf_counter() - started


async def single_text_load(
    url: str, corpus: list[str], clients: int, seconds: float
) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            i = offset
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                body = {"input": corpus[i % len(corpus)], "encoding_format": "base64"}
                response = await http.post(url, json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return len(latencies), time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    from bots.knowledge.embeddings import SentenceTransformerEmbedder

    corpus = texts(args.texts)
    embedder = SentenceTransformerEmbedder(args.model, device=args.device)  # the service's batch size
    embedder.embed(corpus[:64])  # load and warm up
    batch = embedder.batch_size
    t0 = time.perf_counter()
    embedder.embed(corpus)
    baseline = len(corpus) / (time.perf_counter() - t0)
    singles, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(args.seconds, 10):
        embedder.embed([corpus[singles % len(corpus)]])
        singles += 1
    one_by_one = singles / (time.perf_counter() - t0)
    del embedder

    port = free_port()
    command = [sys.executable, "-m", "bots.embedserver", "--port", str(port), "--device", args.device]
    if args.model:
        command += ["--model", args.model]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - not a pipe: a full pipe would stall the server
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if server.poll() is not None:
                log.seek(0)
                raise SystemExit(f"the service exited:\n{log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        url = f"{base}/v1/embeddings"
        asyncio.run(saturate(url, corpus, 2, 64, 2))  # warm up the service
        done, took = asyncio.run(saturate(url, corpus, 4, 256, args.seconds))
        saturated = done / took
        count, took, latencies = asyncio.run(single_text_load(url, corpus, 32, args.seconds))
        concurrent = count / took
    finally:
        server.terminate()
        server.wait(timeout=30)

    model = args.model or "bundled all-MiniLM-L6-v2"
    p50, p99 = statistics.median(latencies) * 1000, pct(latencies, 0.99) * 1000
    lines = [
        f"device: {args.device}; model: {model}; {len(corpus)} texts of 60-500 chars",
        f"baseline in-process encode, batches of {batch:<3d}:   {baseline:8.1f} texts/s",
        f"service at saturation (4 clients x 256 texts): {saturated:8.1f} texts/s"
        f" = {saturated / baseline:.2f}x baseline (target >= 0.9x)",
        f"in-process, one request (one text) at a time:  {one_by_one:8.1f} texts/s",
        f"service, 32 clients x 1 text, repeatedly:      {concurrent:8.1f} texts/s"
        f" = {concurrent / one_by_one:.2f}x one-at-a-time (target >= 4x)",
        f"latency of a one-text request under that load: p50 {p50:.1f} ms, p99 {p99:.1f} ms",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
