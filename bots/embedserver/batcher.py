"""Dynamic micro-batching: texts from many requests are encoded together, each caller gets
exactly its own vectors back, in order."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Encode = Callable[[list[str]], np.ndarray]


class QueueFull(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """New work arrived after close() began."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[np.ndarray]
    vectors: list[np.ndarray | None] = field(default_factory=list)
    remaining: int = 0


@dataclass(frozen=True)
class BatchStats:
    size: int
    seconds: float
    queue_depth: int


class MicroBatcher:
    """Collects texts for up to ``max_wait_ms`` (or until a batch is full), sorts a batch by
    length to cut padding, and encodes it on one worker thread while the next batch gathers.

    The queue is bounded (``max_queue`` texts): beyond it :class:`QueueFull` is raised, so
    memory never grows without limit; callers answer 429 with Retry-After.
    """

    def __init__(
        self,
        encode: Encode,
        *,
        max_batch: int = 64,
        max_batch_chars: int = 64 * 2000,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._encode = encode
        self.max_batch = max_batch
        self.max_batch_chars = max_batch_chars
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._items: deque[tuple[_Job, int]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._closing = False
        self._items_per_s = 50.0  # refined from every batch; used for Retry-After

    @property
    def queue_depth(self) -> int:
        return len(self._items)

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def close(self) -> None:
        """Refuse new work, finish everything queued or in flight, then stop."""
        self._closing = True
        self._arrived.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        self._executor.shutdown(wait=True)

    async def embed(self, texts: list[str]) -> np.ndarray:
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if len(self._items) + len(texts) > self.max_queue:
            raise QueueFull(max(1.0, (len(self._items) + len(texts)) / self._items_per_s))
        job = _Job(texts, asyncio.get_running_loop().create_future(), [None] * len(texts), len(texts))
        self._items.extend((job, i) for i in range(len(texts)))
        self._arrived.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._items:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._gather()
            batch = self._take()
            if batch:
                await self._encode_batch(batch)

    async def _gather(self) -> None:
        """Wait up to max_wait for a fuller batch, unless it is full already (or closing)."""
        deadline = time.monotonic() + self.max_wait_s
        while len(self._items) < self.max_batch and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _take(self) -> list[tuple[_Job, int]]:
        batch: list[tuple[_Job, int]] = []
        chars = 0
        while self._items and len(batch) < self.max_batch:
            job, index = self._items[0]
            if job.future.done():  # the caller went away: skip its work
                self._items.popleft()
                continue
            size = len(job.texts[index])
            if batch and chars + size > self.max_batch_chars:
                break
            batch.append(self._items.popleft())
            chars += size
        return batch

    async def _encode_batch(self, batch: list[tuple[_Job, int]]) -> None:
        batch.sort(key=lambda item: len(item[0].texts[item[1]]))  # similar lengths pad less
        texts = [job.texts[index] for job, index in batch]
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            vectors = await loop.run_in_executor(self._executor, self._encode, texts)
        except Exception as exc:
            for job, _ in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        self._items_per_s = 0.8 * self._items_per_s + 0.2 * (len(batch) / max(seconds, 1e-6))
        if self._on_batch:
            self._on_batch(BatchStats(len(batch), seconds, len(self._items)))
        for (job, index), vector in zip(batch, vectors, strict=True):
            job.vectors[index] = vector
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(np.stack(job.vectors))  # type: ignore[arg-type]
