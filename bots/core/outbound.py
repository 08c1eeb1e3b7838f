"""Outbound middleware: split to the channel's limit, then send through the adapter."""

from __future__ import annotations

import asyncio
import logging

from bots.core.adapter import Adapter
from bots.core.events import Outbound, SentRef
from bots.core.splitting import split_message

log = logging.getLogger("bots.outbound")
SEND_TRIES = 6


def backoff(tries: int) -> float:
    """Seconds to wait after ``tries`` failed tries: 0.5, 1, 2, 4, 8 s (15 s in all for six)."""
    return min(0.5 * 2 ** (tries - 1), 8.0)


SEND_BACKOFF = backoff


def split_outbound(adapter: Adapter, outbound: Outbound) -> list[Outbound]:
    """The parts a message is sent as; only the first one threads to ``reply_to``."""
    caps = adapter.capabilities
    pieces = split_message(outbound.text, caps.max_length, caps.length_unit)
    first = outbound.reply_to
    return [
        Outbound(outbound.target, piece, reply_to=first if i == 0 else None, markup=outbound.markup)
        for i, piece in enumerate(pieces)
    ]


def transient(adapter: Adapter, exc: BaseException) -> bool:
    """Whether trying the send again may work: the adapter knows its library's errors
    (``transient(exc)``); without that, network errors and timeouts are."""
    check = getattr(adapter, "transient", None)
    return bool(check(exc)) if callable(check) else isinstance(exc, (OSError, TimeoutError))


async def send_part(adapter: Adapter, part: Outbound) -> SentRef:
    """Send one part; a transient failure is retried in place, so the chat's later replies wait
    behind it instead of overtaking it. Other failures, and the last try's, raise."""
    tries = 0
    while True:
        tries += 1
        try:
            return await adapter.send(part)
        except Exception as exc:
            if tries >= SEND_TRIES or not transient(adapter, exc):
                raise
            log.warning("channel %s: sending failed (%s); trying again", adapter.name, type(exc).__name__)
        await asyncio.sleep(SEND_BACKOFF(tries))


async def deliver(adapter: Adapter, outbound: Outbound) -> list[SentRef]:
    return [await send_part(adapter, part) for part in split_outbound(adapter, outbound)]
