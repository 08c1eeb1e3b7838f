"""Outbound middleware: split to the channel's limit, then send through the adapter."""

from __future__ import annotations

from bots.core.adapter import Adapter
from bots.core.events import Outbound, SentRef
from bots.core.splitting import split_message


async def deliver(adapter: Adapter, outbound: Outbound) -> list[SentRef]:
    caps = adapter.capabilities
    pieces = split_message(outbound.text, caps.max_length, caps.length_unit)
    sent: list[SentRef] = []
    for index, piece in enumerate(pieces):
        reply_to = outbound.reply_to if index == 0 else None  # thread the first piece only
        part = Outbound(outbound.target, piece, reply_to=reply_to, markup=outbound.markup)
        sent.append(await adapter.send(part))
    return sent
