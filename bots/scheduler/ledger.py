"""The posting ledger: one row per (job, scheduled period), claimed before anything is written.

Whoever inserts the row first owns the period: a restart, a retry or a second host sharing the
database finds the row and leaves the period alone. A period left claimed is taken over at the
next start; on PostgreSQL, where several hosts may share the database, the host running a period
holds a lock on it (:meth:`Ledger.hold`, a session lock the server drops when that host dies), so
another host takes over only a period whose runner is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select, text, update

from bots.core.groupcommit import GroupCommit, insert_ignoring_duplicates
from bots.core.storage import Database, LedgerEntry, as_utc

log = logging.getLogger("bots.scheduler")


def period_key(run_time: datetime) -> str:
    """The period a run is for: its scheduled time in UTC, to the second."""
    return as_utc(run_time).replace(microsecond=0).isoformat()


class Ledger:
    def __init__(self, db: Database, writes: GroupCommit) -> None:
        self._db = db
        self._writes = writes
        table = LedgerEntry.__table__
        self._insert = writes.prepare(insert_ignoring_duplicates(db, table), key=("job_id", "period"))
        self._mark = writes.prepare(
            update(table)
            .where(table.c.job_id == bindparam("b_job"), table.c.period == bindparam("b_period"))
            .values(state=bindparam("b_state"), detail=bindparam("b_detail"), updated_at=bindparam("b_at"))
        )

    async def claim(self, job_id: str, period: str, bot: str, state: str = "claimed") -> bool:
        """True for the one caller that records the period first."""
        row = {"job_id": job_id, "period": period, "bot": bot, "state": state, "detail": ""}
        return bool(await self._writes.write(self._insert, row | {"updated_at": datetime.now(UTC)}))

    @contextlib.asynccontextmanager
    async def hold(self, job_id: str, period: str) -> AsyncIterator[bool]:
        """Whether this host may run the period now: False while another host runs it. On
        PostgreSQL a session advisory lock on the period, held until the block ends (or the
        connection dies with its host); on SQLite (one host per file) always True."""
        if self._db.dialect != "postgresql":
            yield True
            return
        key = _lock_key(job_id, period)
        async with self._db.engine.connect() as conn:
            held = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}))
            await conn.commit()
            try:
                yield held
            finally:
                if held:
                    try:
                        await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                        await conn.commit()
                    except Exception as exc:  # never back to the pool holding the lock
                        log.warning(
                            "post ledger: releasing the lock of %s %s failed (%s)", job_id, period, exc
                        )
                        await conn.invalidate()

    async def mark(self, job_id: str, period: str, state: str, detail: str = "") -> None:
        row = {"b_job": job_id, "b_period": period, "b_state": state, "b_detail": detail[:500]}
        await self._writes.write(self._mark, row | {"b_at": datetime.now(UTC)})

    async def state(self, job_id: str, period: str) -> str | None:
        async with self._db.session() as session:
            entry = await session.get(LedgerEntry, (job_id, period))
            return None if entry is None else entry.state

    async def recent(self, job_id: str | None = None, limit: int = 20) -> list[LedgerEntry]:
        query = select(LedgerEntry).order_by(LedgerEntry.updated_at.desc()).limit(limit)
        if job_id is not None:
            query = query.where(LedgerEntry.job_id == job_id)
        async with self._db.session() as session:
            return list(await session.scalars(query))

    async def unfinished(self, within: timedelta) -> list[LedgerEntry]:
        """Periods claimed by a run that never finished them (the host died mid-post)."""
        since = datetime.now(UTC) - within
        async with self._db.session() as session:
            rows = await session.scalars(select(LedgerEntry).where(LedgerEntry.state == "claimed"))
            return [row for row in rows if as_utc(row.updated_at) >= since]


def _lock_key(job_id: str, period: str) -> int:
    """The period's advisory lock: a signed 64-bit number from its job and time."""
    digest = hashlib.blake2b(f"post_ledger:{job_id}:{period}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
