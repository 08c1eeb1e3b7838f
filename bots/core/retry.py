"""Retries with exponential backoff (tenacity), paid for only when the first try fails.

The first try is a plain await: on the hot path (every send, every model call) building
tenacity's machinery would cost more than the call itself, and it is needed only after a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

T = TypeVar("T")
FIRST_WAIT_S = 0.5  # then 1, 2, 4, 8 s (8 s at most)


async def with_retries(
    call: Callable[[], Awaitable[T]], *, tries: int, worth_retrying: Callable[[BaseException], bool]
) -> T:
    """``await call()``; a failure ``worth_retrying`` is tried again, ``tries`` times in all,
    after 0.5, 1, 2... s. Other failures, and the last try's, raise."""
    try:
        return await call()
    except Exception as exc:
        if tries <= 1 or not worth_retrying(exc):
            raise
    await asyncio.sleep(FIRST_WAIT_S)
    retrying = AsyncRetrying(
        stop=stop_after_attempt(tries - 1),
        wait=wait_exponential(multiplier=2 * FIRST_WAIT_S, max=8),
        retry=retry_if_exception(worth_retrying),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity returns or raises")
