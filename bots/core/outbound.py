"""Outbound middleware: split to the channel's limit, then send through the adapter."""

from __future__ import annotations

from bots.core.adapter import Adapter
from bots.core.events import Outbound, SentRef
from bots.core.splitting import split_message


def split_outbound(adapter: Adapter, outbound: Outbound) -> list[Outbound]:
    """The parts a message is sent as; only the first one threads to ``reply_to``."""
    caps = adapter.capabilities
    pieces = split_message(outbound.text, caps.max_length, caps.length_unit)
    first = outbound.reply_to
    return [
        Outbound(outbound.target, piece, reply_to=first if i == 0 else None, markup=outbound.markup)
        for i, piece in enumerate(pieces)
    ]


async def deliver(adapter: Adapter, outbound: Outbound) -> list[SentRef]:
    return [await adapter.send(part) for part in split_outbound(adapter, outbound)]
