"""The durable outbox: outgoing messages under an idempotency key, each part marked once sent.

A reply to an inbound message is keyed by that message, so when the message is replayed after a
restart the reply is neither generated nor sent again: parts already sent are skipped, the rest
are sent from the stored text. A message is recorded (every part "pending") before its first part
goes, and each part is marked sent after the platform took it; both writes are queued behind the
sends (group commit), so the reply never waits for the disk. What a crash can still do:
- a reply written but not yet recorded is written again on replay (the model is asked again);
- a part the platform took before its "sent" mark committed is sent again on replay. Each part
  carries an idempotency key (``Outbound.idempotency_key``, the same on every try): platforms that
  dedupe on it (Discord's nonce) post it once; elsewhere (Telegram) it is at least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, select, update

from bots.core.adapter import Adapter
from bots.core.events import ChannelRef, Outbound, SentRef, channel_from_dict, channel_to_dict
from bots.core.groupcommit import GroupCommit, insert_ignoring_duplicates
from bots.core.outbound import part_key, send_part, split_outbound
from bots.core.storage import Database, OutboxEntry, as_utc

log = logging.getLogger("bots.outbox")


@dataclass(frozen=True, slots=True)
class Pending:
    """A message with parts not sent yet, and the chat it goes to."""

    key: str
    channel: str  # the adapter's configured name
    target: ChannelRef


class Outbox:
    def __init__(self, db: Database, writes: GroupCommit, *, keep: timedelta = timedelta(days=3)) -> None:
        self._db = db
        self._writes = writes
        table = OutboxEntry.__table__
        self._insert = writes.prepare(insert_ignoring_duplicates(db, table))
        self._sent = writes.prepare(
            update(table)
            .where(table.c.key == bindparam("b_key"), table.c.part == bindparam("b_part"))
            .values(state="sent", message_id=bindparam("b_message_id"))
        )
        self._failed = writes.prepare(  # the parts from b_part on that were not sent
            update(table)
            .where(
                table.c.key == bindparam("b_key"),
                table.c.part >= bindparam("b_part"),
                table.c.state == "pending",
            )
            .values(state="failed")
        )
        self.keep = keep

    async def recorded(self, key: str) -> bool:
        return bool(await self.recorded_keys([key]))

    async def recorded_keys(self, keys: list[str]) -> set[str]:
        """Those of ``keys`` the outbox holds a message for."""
        if not keys:
            return set()
        async with self._db.session() as session:
            found = await session.scalars(select(OutboxEntry.key).where(OutboxEntry.key.in_(keys)).distinct())
            return set(found)

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
        parts = self._parts(adapter, outbound, key)
        if not parts:  # nothing but whitespace
            return []
        rows = self._rows(bot, adapter.name, key, parts)
        record = self._writes.queue(self._insert, rows, f"outbox {key}: recording it")
        writes = [record.done]
        sent = []
        for index, part in enumerate(parts):
            ref = await self._send(adapter, part, key, index)
            if record.taken:  # its transaction has it: mark the part sent after it
                writes.append(self._mark_sent(key, index, ref.message_id))
            else:  # sent before its record was written: record it as sent (no update after)
                rows[index].update(state="sent", message_id=ref.message_id)
            sent.append(ref)
        if not fresh:
            await asyncio.gather(*writes)
        return sent

    async def record(self, bot: str, adapter: Adapter, outbound: Outbound, key: str) -> bool:
        """Record ``outbound`` under ``key`` (every part "pending", committed) without sending it:
        someone else sends it with :meth:`resume` (a worker hands it to the gateway that holds the
        channel). A key recorded before keeps its rows. False when there is nothing to send."""
        parts = self._parts(adapter, outbound, key)
        if parts:
            await self._writes.write(self._insert, self._rows(bot, adapter.name, key, parts))
        return bool(parts)

    @staticmethod
    def _parts(adapter: Adapter, outbound: Outbound, key: str) -> list[Outbound]:
        return split_outbound(adapter, outbound, key)

    @staticmethod
    def _rows(bot: str, channel: str, key: str, parts: list[Outbound]) -> list[dict[str, object]]:
        now = datetime.now(UTC)
        return [
            {
                "key": key,
                "part": index,
                "bot": bot,
                "channel": channel,
                "target": channel_to_dict(part.target),
                "text": part.text,
                "reply_to": part.reply_to,
                "markup": part.markup,
                "state": "pending",
                "message_id": None,
                "created_at": now,
            }
            for index, part in enumerate(parts)
        ]

    async def _send(self, adapter: Adapter, part: Outbound, key: str, index: int) -> SentRef:
        """Send one part (transient failures retried in place). When it cannot be sent, the rest
        of the message is given up (marked failed): resending it after a restart, out of its
        place in the chat, would be worse than the error logged now."""
        try:
            return await send_part(adapter, part)
        except Exception:
            log.error("outbox %s: part %d could not be sent; the rest of it is given up", key, index)
            self._writes.write_behind(
                self._failed, {"b_key": key, "b_part": index}, f"outbox {key}: giving it up"
            )
            raise

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
            part = Outbound(
                channel_from_dict(entry.target),
                entry.text,
                entry.reply_to,
                entry.markup,
                idempotency_key=part_key(entry.key, entry.part),
            )
            ref = await self._send(adapter_for(entry.channel), part, entry.key, entry.part)
            await self._mark_sent(entry.key, entry.part, ref.message_id)
            sent.append(ref)
        return sent

    async def pending(self, bot: str, within: timedelta) -> list[Pending]:
        """Messages with unsent parts, oldest first; older ones are marked failed and logged."""
        since = datetime.now(UTC) - within
        async with self._db.session() as session, session.begin():
            rows = await session.scalars(
                select(OutboxEntry)
                .where(OutboxEntry.bot == bot, OutboxEntry.state == "pending")
                .order_by(OutboxEntry.created_at, OutboxEntry.part)
            )
            found: dict[str, Pending] = {}
            for entry in rows:
                if as_utc(entry.created_at) < since:
                    entry.state = "failed"
                    log.error("outbox %s part %d: too old to send; given up", entry.key, entry.part)
                elif entry.key not in found:
                    found[entry.key] = Pending(entry.key, entry.channel, channel_from_dict(entry.target))
        return list(found.values())

    async def prune(self) -> int:
        cutoff = datetime.now(UTC) - self.keep
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                delete(OutboxEntry).where(OutboxEntry.state != "pending", OutboxEntry.created_at < cutoff)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _mark_sent(self, key: str, part: int, message_id: str) -> asyncio.Future[bool | None]:
        """Behind the sender's back: the inbox's finish mark, queued later, commits with it or
        after it."""
        return self._writes.write_behind(
            self._sent,
            {"b_key": key, "b_part": part, "b_message_id": message_id},
            f"outbox {key} part {part}: marking it sent",
        )
