"""A task that runs beside a block of code and is cancelled when the block ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def alongside(work: Coroutine[Any, Any, None], name: str | None = None) -> AsyncIterator[None]:
    """``async with alongside(coro):`` runs ``coro`` as a task while the body runs, then stops it."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
