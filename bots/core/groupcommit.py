"""Group commit: small writes from many tasks share transactions instead of paying one each.

``await write(stmt)`` returns once the statement is committed (durable); writes that arrive
while a commit is running are committed together by the next one. ``write_behind(stmt)`` queues a
write nobody waits for (bookkeeping after the fact); writes commit in the order they were queued.

A batch runs on one worker thread through the database's blocking driver: one thread hop per
batch instead of several per statement (aiosqlite), which is most of the cost of a small write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine, Executable, Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from bots.core.storage import Database

log = logging.getLogger("bots.storage")
T = TypeVar("T")


@dataclass(slots=True)
class _Write:
    statement: Executable
    done: asyncio.Future[int]


class GroupCommit:
    max_batch = 500

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: asyncio.Queue[_Write] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._engine: Engine | None = None
        self._conn: Connection | None = None  # held by the worker thread
        self._closing = False

    async def start(self) -> None:
        self._closing = False
        if self._task is None:
            self._engine = self._db.sync_engine()
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
            self._conn = await self._in_thread(self._engine.connect)
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._task is not None:
            await self._queue.join()

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        if self._task is None:
            return
        self._closing = True  # nothing new from here on: a write queued after join() would hang
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._conn is not None:
            await self._in_thread(self._conn.close)
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()
        if self._thread is not None:
            self._thread.shutdown(wait=True)

    async def write(self, statement: Executable) -> int:
        """Run ``statement`` in the next shared transaction; returns its row count once committed."""
        return await self.submit(statement)

    def write_behind(self, statement: Executable, what: str) -> asyncio.Future[int]:
        """Queue ``statement`` without waiting; a failure is logged with ``what``."""
        done = self.submit(statement)
        done.add_done_callback(lambda f: f.cancelled() or f.exception() is None or _log_failure(f, what))
        return done

    def submit(self, statement: Executable) -> asyncio.Future[int]:
        if self._task is None or self._closing:
            raise RuntimeError("group commit is not running (the host starts and stops it)")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(statement, done))
        return done

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            counts = await self._execute(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            # one bad statement must not fail its neighbours: retry them one by one
            for write in batch:
                await self._commit([write])
            return
        for write, count in zip(batch, counts, strict=True):
            _settle(write, count=count)

    async def _execute(self, batch: list[_Write]) -> list[int]:
        conn = self._conn
        assert conn is not None

        def run() -> list[int]:
            with conn.begin():
                return [int(conn.execute(w.statement).rowcount or 0) for w in batch]  # type: ignore[attr-defined]

        return await self._in_thread(run)


def _settle(write: _Write, *, count: int = 0, error: Exception | None = None) -> None:
    if write.done.done():  # the caller gave up waiting
        return
    if error is not None:
        write.done.set_exception(error)
    else:
        write.done.set_result(count)


def _log_failure(done: asyncio.Future[int], what: str) -> bool:
    log.error("%s: the database write failed: %s", what, done.exception())
    return True


def insert_ignoring_duplicates(db: Database, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the database's dialect (row count 0 = was there)."""
    dialect = db.engine.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        return insert(table).prefix_with("IGNORE")
    raise ValueError(f"the {dialect} database is not supported; use SQLite, PostgreSQL or MySQL")


def upsert(db: Database, table: Table, keys: list[str], values: dict[str, object]) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` the other columns, in the database's dialect."""
    dialect = db.engine.dialect.name
    changed = {k: v for k, v in values.items() if k not in keys}
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        return module.insert(table).values(values).on_conflict_do_update(index_elements=keys, set_=changed)
    raise ValueError(f"the {dialect} database is not supported here; use SQLite or PostgreSQL")
