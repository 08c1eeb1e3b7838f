"""Event-loop lag, sampled inside the running host for benchmarks (``BOTS_LOOP_LAG_LOG=path``).

Every 100 ms a task sleeps and measures how much later than asked it woke up: the time the loop
was busy with other work (a blocking call, a long CPU stretch). Once a second it appends one JSON
line to the file, ``{"t": <unix time>, "lag_ms": [...]}``, so the samples survive a SIGKILL and a
reader may keep only those after a warm-up. Off (nothing runs) unless the variable is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bots.core.background import alongside

ENV = "BOTS_LOOP_LAG_LOG"
INTERVAL_S = 0.1
FLUSH_S = 1.0


async def sample_loop_lag(path: Path, interval: float = INTERVAL_S, flush_every: float = FLUSH_S) -> None:
    """Sample until cancelled, appending the lag samples (ms) of each ``flush_every`` seconds."""
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    flushed = loop.time()
    try:
        while True:
            asked = loop.time()
            await asyncio.sleep(interval)
            woke = loop.time()
            samples.append(round(max(0.0, woke - asked - interval) * 1000, 1))
            if woke - flushed >= flush_every:
                _append(path, samples)
                samples, flushed = [], woke
    finally:
        _append(path, samples)


def _append(path: Path, samples: list[float]) -> None:
    if samples:
        with path.open("a", encoding="utf-8") as out:  # a few hundred bytes a second
            out.write(json.dumps({"t": time.time(), "lag_ms": samples}) + "\n")


@contextlib.asynccontextmanager
async def loop_lag_from_env() -> AsyncIterator[None]:
    """``async with loop_lag_from_env():`` samples while the body runs when ``BOTS_LOOP_LAG_LOG`` is set."""
    target = os.environ.get(ENV)
    if not target:
        yield
        return
    async with alongside(sample_loop_lag(Path(target)), name="loop-lag"):
        yield
