"""The durable outbox: outgoing messages under an idempotency key, each part marked once sent.

A reply to an inbound message is keyed by that message, so when the message is replayed after a
restart the reply is neither generated nor sent again: parts already sent are skipped, the rest
are sent from the stored text. A message is recorded in the same commit that marks its first part
sent (one commit for the usual one-part reply), queued behind the send so the reply never waits
for it. The one gap left is a crash between the platform accepting a part and that commit: the
part is sent again on replay (at least once, never lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from bots.core.adapter import Adapter
from bots.core.events import Outbound, SentRef, channel_from_dict, channel_to_dict
from bots.core.groupcommit import GroupCommit, insert_ignoring_duplicates
from bots.core.outbound import split_outbound
from bots.core.storage import Database, OutboxEntry, as_utc

log = logging.getLogger("bots.outbox")


class Outbox:
    def __init__(self, db: Database, writes: GroupCommit, *, keep: timedelta = timedelta(days=3)) -> None:
        self._db = db
        self._writes = writes
        self._insert = insert_ignoring_duplicates(db, OutboxEntry.__table__)
        self.keep = keep

    async def recorded(self, key: str) -> bool:
        async with self._db.session() as session:
            found = await session.scalar(select(OutboxEntry.part).where(OutboxEntry.key == key).limit(1))
            return found is not None

    async def deliver(
        self, bot: str, adapter: Adapter, outbound: Outbound, key: str, *, fresh: bool = False
    ) -> list[SentRef]:
        """Send ``outbound`` once under ``key``: when the key is known, only its unsent parts go.

        ``fresh=True``: the caller knows the key is new (a first attempt), so there is no lookup
        and the records commit behind the sends; otherwise they are committed before returning.
        """
        if not fresh and await self.recorded(key):
            log.info("outbox %s: already recorded; sending what is left of it", key)
            return await self.resume(key, lambda _name: adapter)
        parts = split_outbound(adapter, outbound)
        if not parts:  # nothing but whitespace
            return []
        first = await adapter.send(parts[0])
        rows = [
            {
                "key": key,
                "part": index,
                "bot": bot,
                "channel": adapter.name,
                "target": channel_to_dict(part.target),
                "text": part.text,
                "reply_to": part.reply_to,
                "markup": part.markup,
                "state": "sent" if index == 0 else "pending",
                "message_id": first.message_id if index == 0 else None,
                "created_at": datetime.now(UTC),
            }
            for index, part in enumerate(parts)
        ]
        writes = [self._writes.write_behind(self._insert.values(rows), f"outbox {key}: recording it")]
        sent = [first]
        for index, part in enumerate(parts[1:], start=1):
            ref = await adapter.send(part)
            writes.append(self._mark_sent(key, index, ref.message_id))
            sent.append(ref)
        if not fresh:
            await asyncio.gather(*writes)
        return sent

    async def resume(self, key: str, adapter_for: Callable[[str], Adapter]) -> list[SentRef]:
        """Send the parts under ``key`` that are not sent yet, in order; each is marked sent
        (committed) before the next goes, so two resumers never send one part twice."""
        async with self._db.session() as session:
            pending = list(
                await session.scalars(
                    select(OutboxEntry)
                    .where(OutboxEntry.key == key, OutboxEntry.state == "pending")
                    .order_by(OutboxEntry.part)
                )
            )
        sent = []
        for entry in pending:
            part = Outbound(channel_from_dict(entry.target), entry.text, entry.reply_to, entry.markup)
            ref = await adapter_for(entry.channel).send(part)
            await self._mark_sent(entry.key, entry.part, ref.message_id)
            sent.append(ref)
        return sent

    async def pending_keys(self, bot: str, within: timedelta) -> list[str]:
        """Keys with unsent parts, oldest first; older ones are marked failed and logged."""
        since = datetime.now(UTC) - within
        async with self._db.session() as session, session.begin():
            rows = await session.scalars(
                select(OutboxEntry)
                .where(OutboxEntry.bot == bot, OutboxEntry.state == "pending")
                .order_by(OutboxEntry.created_at, OutboxEntry.part)
            )
            keys: list[str] = []
            for entry in rows:
                if as_utc(entry.created_at) < since:
                    entry.state = "failed"
                    log.warning("outbox %s part %d: too old to send; given up", entry.key, entry.part)
                elif entry.key not in keys:
                    keys.append(entry.key)
        return keys

    async def prune(self) -> int:
        cutoff = datetime.now(UTC) - self.keep
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                delete(OutboxEntry).where(OutboxEntry.state != "pending", OutboxEntry.created_at < cutoff)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _mark_sent(self, key: str, part: int, message_id: str) -> asyncio.Future[int]:
        """Behind the sender's back: the next write (the inbox's finish mark) commits after it."""
        return self._writes.write_behind(
            update(OutboxEntry)
            .where(OutboxEntry.key == key, OutboxEntry.part == part)
            .values(state="sent", message_id=message_id),
            f"outbox {key} part {part}: marking it sent",
        )
