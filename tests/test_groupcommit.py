"""Group commit: prepared statements run once per batch, exact per-row answers, order kept."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, event, select, update
from sqlalchemy.exc import OperationalError, StatementError

from bots.core.groupcommit import GroupCommit, insert_ignoring_duplicates, upsert
from bots.core.storage import Database, InboxEntry, QuotaUsage


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await database.start()
    yield database
    await database.close()


def _row(event_id: str, payload: Any = None) -> dict[str, Any]:
    return {
        "bot": "b",
        "event_id": event_id,
        "channel": "c",
        "payload": payload or {},
        "state": "accepted",
        "attempts": 0,
        "received_at": datetime.now(UTC),
    }


def _statements(writes: GroupCommit) -> list[str]:
    """Every statement the writer's connections run (the thread's and the loop's), as they run it."""
    seen: list[str] = []
    for engine in (writes._engine, writes._inline_engine):
        if engine is not None:
            event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


async def test_a_batch_runs_each_statement_once_and_answers_each_row_exactly(db):
    writes = GroupCommit(db)
    table = InboxEntry.__table__
    insert = writes.prepare(insert_ignoring_duplicates(db, table), key=("bot", "event_id"))
    done = writes.prepare(update(table).where(table.c.event_id == bindparam("b_event")).values(state="done"))
    await writes.start()
    try:
        await writes.write(insert, _row("old"))
        seen = _statements(writes)
        # queued together: one batch; "new" twice (the second is a duplicate within the batch),
        # "old" again, and the "done" marks queued before and after the inserts they follow
        futures = [
            writes.submit(done, {"b_event": "old"}),
            writes.submit(insert, _row("new")),
            writes.submit(insert, _row("old")),
            writes.submit(insert, _row("new")),
            writes.submit(insert, _row("other")),
            writes.submit(done, {"b_event": "new"}),
        ]
        results = await asyncio.gather(*futures)
    finally:
        await writes.close()
    assert results == [None, True, False, False, True, None]
    writes_run = [s.lstrip().upper() for s in seen if s.lstrip().upper().startswith(("INSERT", "UPDATE"))]
    # the batch's repeats undo the plain insert (in its savepoint): the exact path answers per row
    assert [s.split()[0] for s in writes_run] == ["INSERT", "INSERT", "UPDATE"]
    assert "RETURNING" not in writes_run[0] and "RETURNING" in writes_run[1]
    async with db.session() as session:
        states = dict((await session.execute(select(InboxEntry.event_id, InboxEntry.state))).all())
    assert states == {"old": "done", "new": "done", "other": "accepted"}


async def test_a_batch_of_new_rows_is_one_plain_insert(db):
    """Every row new (the common case): one executemany, no RETURNING, each write told True."""
    writes = GroupCommit(db)
    insert = writes.prepare(insert_ignoring_duplicates(db, InboxEntry.__table__), key=("bot", "event_id"))
    await writes.start()
    try:
        await writes.write(insert, _row("first"))
        seen = _statements(writes)
        results = await asyncio.gather(*(writes.submit(insert, _row(f"e{n}")) for n in range(20)))
        inserts = [s.upper() for s in seen if s.lstrip().upper().startswith("INSERT")]
        assert results == [True] * 20
        assert len(inserts) == 1 and "RETURNING" not in inserts[0]
        again = await writes.write(insert, [_row("e3"), _row("e21")])
        assert again is False  # one of its rows was there: the write is not new
        mark = len(seen)
        assert await writes.write(insert, _row("lone")) is True
        assert len(seen) == mark + 1  # one row: one plain insert, no savepoint
        assert await writes.write(insert, _row("lone")) is False
    finally:
        await writes.close()
    async with db.session() as session:
        stored = set((await session.execute(select(InboxEntry.event_id))).scalars())
    assert stored == {"first", "lone", "e21", *(f"e{n}" for n in range(20))}


async def test_a_bad_row_fails_alone(db):
    writes = GroupCommit(db)
    insert = writes.prepare(insert_ignoring_duplicates(db, InboxEntry.__table__), key=("bot", "event_id"))
    await writes.start()
    try:
        good = writes.submit(insert, _row("good"))
        bad = writes.submit(insert, _row("bad", payload={"x": object()}))  # not JSON
        assert await good is True
        with pytest.raises((StatementError, TypeError)):  # psycopg serializes JSON itself: TypeError
            await bad
    finally:
        await writes.close()


async def test_upserts_of_one_row_in_a_batch_keep_the_last(db):
    writes = GroupCommit(db)
    keys = ["bot", "day", "user"]
    statement = writes.prepare(upsert(db, QuotaUsage.__table__, keys), merge_by=keys)
    await writes.start()
    try:
        row = {"bot": "b", "day": "2026-01-01", "user": "u"}
        await asyncio.gather(
            *(writes.submit(statement, row | {"messages": n, "tokens": 10 * n}) for n in (1, 2, 3))
        )
    finally:
        await writes.close()
    async with db.session() as session:
        stored = (await session.execute(select(QuotaUsage.messages, QuotaUsage.tokens))).all()
    assert [tuple(r) for r in stored] == [(3, 30)]


async def test_the_writer_checkpoints_the_sqlite_wal_when_writes_pause(tmp_path):
    """Each pause after a commit checkpoints the WAL, so the next commit starts it over: the file
    (which keeps its largest size) does not grow, where 40 more commits would add ~200 pages
    before SQLite's own checkpoint (at 10,000 pages)."""
    db = Database.in_data_dir(tmp_path)
    await db.start()
    writes = GroupCommit(db)
    writes.checkpoint_after_s = 0.0
    insert = writes.prepare(insert_ignoring_duplicates(db, InboxEntry.__table__), key=("bot", "event_id"))
    wal = tmp_path / "bots.db-wal"
    checkpointed = asyncio.Event()
    checkpoint = writes._checkpoint

    async def observed() -> None:
        await checkpoint()
        checkpointed.set()

    writes._checkpoint = observed  # type: ignore[method-assign]
    await writes.start()
    try:
        for n in range(41):
            checkpointed.clear()
            await writes.write(insert, _row(f"e{n}", payload={"text": "x" * 3000}))
            async with asyncio.timeout(30):  # generous: the checkpoint runs on the writer thread
                await checkpointed.wait()
            if n == 0:
                first = wal.stat().st_size
        assert wal.stat().st_size <= first, f"the WAL grew from {first} to {wal.stat().st_size} bytes"
    finally:
        await writes.close()
        await db.close()
    assert writes.checkpoints == 41


async def test_a_write_waits_off_the_loop_while_another_connection_holds_the_sqlite_lock(tmp_path):
    """Small batches commit on the loop's thread, but never wait there for the write lock: held by
    another connection (as an aiosqlite transaction that needs this loop to finish would hold
    it), the batch goes to the writer thread and the loop keeps running meanwhile."""
    db = Database.in_data_dir(tmp_path)
    await db.start()
    writes = GroupCommit(db)
    insert = writes.prepare(insert_ignoring_duplicates(db, InboxEntry.__table__), key=("bot", "event_id"))
    await writes.start()
    other = sqlite3.connect(tmp_path / "bots.db", isolation_level=None)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    clock = asyncio.create_task(ticker())
    try:
        assert await writes.write(insert, _row("first")) is True
        assert writes.inline_commits == 1  # alone on the database: committed on the loop's thread
        other.execute("BEGIN IMMEDIATE")  # the write lock, held until released below
        asyncio.get_running_loop().call_later(0.5, other.execute, "COMMIT")
        before = ticks
        async with asyncio.timeout(30):  # generous; the writer thread waits up to busy_timeout (5 s)
            assert await writes.write(insert, _row("second")) is True
        assert ticks - before >= 10, "the loop stood still while the lock was held"
        assert writes.inline_commits == 1  # the second went through the writer thread
        async with db.session() as session:
            stored = (await session.execute(select(InboxEntry.event_id))).scalars().all()
        assert sorted(stored) == ["first", "second"]
    finally:
        clock.cancel()
        other.close()
        await writes.close()
        await db.close()


async def test_writes_that_never_pause_are_checkpointed_by_the_writer_not_on_the_loop(tmp_path):
    """The loop's connection never runs SQLite's automatic checkpoint (an fsync on the loop);
    the writer thread checkpoints after every ``inline_checkpoint_every`` of its commits."""
    db = Database.in_data_dir(tmp_path)
    await db.start()
    writes = GroupCommit(db)
    writes.checkpoint_after_s = 3600.0  # no pause long enough: only the count can trigger one
    writes.inline_checkpoint_every = 5
    insert = writes.prepare(insert_ignoring_duplicates(db, InboxEntry.__table__), key=("bot", "event_id"))
    await writes.start()
    try:
        assert writes._inline is not None
        assert writes._inline.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        writes._inline.rollback()
        for n in range(12):  # the runner checkpoints after the 5th and 10th, before the next write
            await writes.write(insert, _row(f"e{n}"))
        assert (writes.inline_commits, writes.checkpoints) == (12, 2)
    finally:
        await writes.close()
        await db.close()


async def test_a_database_that_cannot_be_opened_leaves_no_writer_thread(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing-folder' / 'bots.db'}")  # no such folder
    writes = GroupCommit(db)
    threads = {t.name for t in threading.enumerate()}
    with pytest.raises(OperationalError):
        await writes.start()
    assert not writes.running
    leftover = {t.name for t in threading.enumerate()} - threads
    assert not [name for name in leftover if name.startswith("group-commit")], leftover
