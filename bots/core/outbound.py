"""Outbound middleware: split to the channel's limit, then send through the adapter."""

from __future__ import annotations

import logging

from bots.core.adapter import Adapter
from bots.core.events import Outbound, SentRef
from bots.core.retry import with_retries
from bots.core.splitting import split_message

log = logging.getLogger("bots.outbound")
SEND_TRIES = 6


def part_key(key: str, part: int) -> str:
    """The idempotency key of one part: the same every time that part is tried."""
    return f"{key}#{part}"


def split_outbound(adapter: Adapter, outbound: Outbound, key: str | None = None) -> list[Outbound]:
    """The parts a message is sent as; only the first one threads to ``reply_to``. With ``key``
    (the outbox's), each part carries its idempotency key (:func:`part_key`)."""
    caps = adapter.capabilities
    pieces = split_message(outbound.text, caps.max_length, caps.length_unit)
    first, markup = outbound.reply_to, outbound.markup
    return [
        Outbound(
            outbound.target,
            piece,
            first if i == 0 else None,
            markup,
            None if key is None else part_key(key, i),
        )
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

    def again(exc: BaseException) -> bool:
        if not transient(adapter, exc):
            return False
        log.warning("channel %s: sending failed (%s); trying again", adapter.name, type(exc).__name__)
        return True

    return await with_retries(lambda: adapter.send(part), tries=SEND_TRIES, worth_retrying=again)


async def deliver(adapter: Adapter, outbound: Outbound) -> list[SentRef]:
    return [await send_part(adapter, part) for part in split_outbound(adapter, outbound)]
