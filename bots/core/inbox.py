"""The durable inbox: an inbound message is recorded before it is processed.

Adapters acknowledge a platform (advance the Telegram offset, answer a webhook 200) only after
:meth:`Inbox.accept` returned, so a message is never lost between the platform and the bot. A
redelivered message that was already accepted is dropped; one accepted by an earlier run that
stopped before finishing it is replayed at the next start.

An attempt is charged only to a message an earlier run was *handling* when it stopped (the host
says which: per chat, the one whose turn it was and whose reply was not written yet), never to the
messages waiting behind it; one that was handled that way ``max_attempts`` times (it may be what
kills the process) is abandoned, loudly. Messages older than ``replay_window`` are abandoned too:
answering a day-old question out of the blue helps no one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Select, bindparam, delete, func, select, update

from bots.core.events import MessageEvent, event_from_dict, event_to_dict
from bots.core.groupcommit import GroupCommit, insert_ignoring_duplicates
from bots.core.storage import Database, InboxEntry, as_utc

log = logging.getLogger("bots.inbox")
Accepted = Literal["new", "again"]


@dataclass(frozen=True, slots=True)
class Unfinished:
    channel: str  # the adapter's configured name
    event: MessageEvent
    attempt: int


def count_abandoned_since(since: datetime) -> Select[tuple[int]]:
    """How many messages that arrived after ``since`` were abandoned (all bots)."""
    return (
        select(func.count())
        .select_from(InboxEntry)
        .where(InboxEntry.state == "abandoned", InboxEntry.received_at >= since)
    )


class Inbox:
    def __init__(
        self,
        db: Database,
        writes: GroupCommit,
        *,
        replay_window: timedelta = timedelta(hours=6),
        max_attempts: int = 5,  # a crash loop of a few restarts, not a kill storm's victims
        keep: timedelta = timedelta(days=3),
    ) -> None:
        self._db = db
        self._writes = writes
        table = InboxEntry.__table__
        self._insert = writes.prepare(insert_ignoring_duplicates(db, table), key=("bot", "event_id"))
        self._done = writes.prepare(
            update(table)
            .where(table.c.bot == bindparam("b_bot"), table.c.event_id == bindparam("b_event"))
            .values(state="done")
        )
        self.replay_window = replay_window  # older unfinished messages are stale: not answered late
        self.max_attempts = max_attempts
        self.keep = keep  # how long finished entries stay to catch redeliveries
        self._in_flight: set[tuple[str, str]] = set()  # (bot, event id) handled by this process
        self.abandoned = 0  # messages given up on within ``keep`` (each logged at ERROR)

    async def accept(self, bot: str, channel: str, event: MessageEvent) -> Accepted | None:
        """Record ``event`` durably. None for a duplicate (done, or in flight here); "again" when
        an earlier run accepted it and never finished (handle it as a replay); else "new"."""
        key = (bot, event.id)
        if key in self._in_flight:
            return None
        self._in_flight.add(key)  # claimed before the await: a concurrent redelivery is a duplicate
        try:
            row = {
                "bot": bot,
                "event_id": event.id,
                "channel": channel,
                "payload": event_to_dict(event),
                "state": "accepted",
                "attempts": 0,
                "received_at": datetime.now(UTC),
            }
            inserted = await self._writes.write(self._insert, row)
            if inserted:
                return "new"
            if await self._take_over(bot, event.id):
                return "again"
        except BaseException:
            self._in_flight.discard(key)
            raise
        self._in_flight.discard(key)
        return None

    async def _take_over(self, bot: str, event_id: str) -> bool:
        """A known message came again. Handle it only when an earlier run left it unfinished."""
        async with self._db.session() as session, session.begin():
            entry = await session.get(InboxEntry, (bot, event_id))
            if entry is None or entry.state != "accepted":
                return False
            log.info("event %s: redelivered after an unfinished attempt; handling it again", event_id)
            return True

    def finish(self, bot: str, event: MessageEvent) -> asyncio.Future[bool | None]:
        """Mark it done, behind the caller's back (await the result to wait for the commit); until
        that commits, a redelivery still counts as in flight. Lost in a crash, the mark costs a
        replay that finds its replies sent."""
        key = (bot, event.id)
        done = self._writes.write_behind(
            self._done, {"b_bot": bot, "b_event": event.id}, f"event {event.id}: marking it finished"
        )
        done.add_done_callback(lambda _f: self._in_flight.discard(key))
        return done

    def release(self, bot: str, event: MessageEvent) -> None:
        """This process no longer handles ``event``: another one took it over (a gateway published
        it for the workers). A redelivery is then an accept like any other."""
        self._in_flight.discard((bot, event.id))

    async def unfinished(self, bot: str) -> list[Unfinished]:
        """Messages an earlier run accepted and did not finish, oldest first, claimed for replay;
        those older than the replay window are abandoned instead."""
        since = datetime.now(UTC) - self.replay_window
        claimed: list[Unfinished] = []
        async with self._db.session() as session, session.begin():
            rows = await session.scalars(
                select(InboxEntry)
                .where(InboxEntry.bot == bot, InboxEntry.state == "accepted")
                .order_by(InboxEntry.received_at)
            )
            for entry in rows:
                if (bot, entry.event_id) in self._in_flight:
                    continue
                if as_utc(entry.received_at) < since:
                    self._abandon(entry, f"older than the replay window ({self.replay_window})")
                    continue
                try:
                    event = event_from_dict(entry.payload)
                except (KeyError, TypeError, ValueError):
                    self._abandon(entry, "its stored payload is unreadable")
                    continue
                self._in_flight.add((bot, entry.event_id))
                claimed.append(Unfinished(entry.channel, event, entry.attempts))
        return claimed

    async def charge(self, bot: str, event_ids: list[str]) -> set[str]:
        """One attempt more for each message an earlier run was handling when it stopped; those
        at their last attempt are abandoned (returned, and no longer claimed)."""
        if not event_ids:
            return set()
        abandoned: set[str] = set()
        async with self._db.session() as session, session.begin():
            rows = await session.scalars(
                select(InboxEntry).where(InboxEntry.bot == bot, InboxEntry.event_id.in_(event_ids))
            )
            for entry in rows:
                entry.attempts += 1
                if entry.attempts >= self.max_attempts:
                    self._abandon(entry, f"the host stopped {entry.attempts} times while handling it")
                    self._in_flight.discard((bot, entry.event_id))
                    abandoned.add(entry.event_id)
        return abandoned

    def _abandon(self, entry: InboxEntry, why: str) -> None:
        entry.state = "abandoned"
        self.abandoned += 1
        log.error("event %s of bot %s: abandoned, not answered: %s", entry.event_id, entry.bot, why)

    async def count_abandoned(self) -> int:
        """Messages abandoned (never answered) within ``keep``, all bots; the count goes on from
        there as this process abandons more."""
        async with self._db.session() as session:
            found = await session.scalar(count_abandoned_since(datetime.now(UTC) - self.keep))
        self.abandoned = int(found or 0)
        return self.abandoned

    async def prune(self) -> int:
        """Forget finished entries past the redelivery horizon."""
        cutoff = datetime.now(UTC) - self.keep
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                delete(InboxEntry).where(InboxEntry.state != "accepted", InboxEntry.received_at < cutoff)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
