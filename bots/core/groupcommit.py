"""Group commit: small writes from many tasks share transactions instead of paying one each.

Writes use statements prepared once (:meth:`GroupCommit.prepare`) and carry only their rows of
parameters, so a write costs no statement building: each statement is compiled once per database
and set of columns, and its rows reach the driver as values converted by their column types.
``await write(prepared, row)`` returns once the row is committed (durable); writes that arrive
while a commit is running are committed together by the next one. ``write_behind(...)`` queues a
write nobody waits for (bookkeeping after the fact).

A batch runs in one transaction through the database's blocking driver, one commit per batch.
On SQLite a small batch that someone waits for (a hand-over) runs right on the event loop's
thread, on a connection that never waits for the write lock and never checkpoints: a commit
there (no fsync in WAL mode) costs less than the two thread hops it saves, and under load those
hops' scheduling was the tail of the hand-over. The rest runs on the worker thread, in parallel
with the loop: large batches, bookkeeping nobody waits for, and any batch while another
connection holds the lock (an aiosqlite transaction that needs the loop to finish); it waits
for the lock up to ``busy_timeout``.
PostgreSQL batches always go to the thread (a network round trip must not block the loop).
Inside a batch, each prepared statement runs once for all its rows (executemany), the statements
in the order they were prepared, each one's rows in the order they were queued. Keyed inserts
learn which rows were new from one plain executemany when all were (its row count), else from
RETURNING per row (a savepoint undoes the first try). Everything in a batch commits at once, so
order matters only within a table: modules prepare a table's inserts before its updates, and a
row's insert then runs before them.

On SQLite the writer also checkpoints the WAL, once writes have paused for ``checkpoint_after_s``:
a checkpoint (an fsync) then runs between writes instead of inside the commit of a hand-over
someone waits for, and the WAL restarts small. For writes that never pause, the writer thread
checkpoints after ``inline_checkpoint_every`` commits on the loop's connection, and SQLite's
automatic checkpoint stays on the writer's own connection (``WAL_AUTOCHECKPOINT_PAGES`` in
storage).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.dml import Insert, UpdateBase

from bots.core.storage import Database

log = logging.getLogger("bots.storage")
T = TypeVar("T")
Row = dict[str, Any]


@dataclass(frozen=True, eq=False)
class Prepared:
    """A write statement built once; each write feeds it rows of parameters."""

    statement: UpdateBase
    rank: int  # its place in a batch: statements run in the order they were prepared
    # an insert that ignores duplicates: the key columns it returns, so each write learns
    # whether its rows were new (exact per row, also within one batch)
    key: tuple[str, ...] = ()
    # an upsert: rows of one batch with equal values in these columns are one row, the last wins
    merge_by: tuple[str, ...] = ()
    # ... except these columns, which add up (an upsert that adds to a stored count)
    add_up: tuple[str, ...] = ()
    returning: UpdateBase | None = field(default=None, repr=False)
    # per (database, row columns): the statement as compiled for the driver (None: not possible)
    compiled: dict[tuple[str, frozenset[str]], _DriverStatement | None] = field(
        default_factory=dict, repr=False
    )


@dataclass(slots=True)
class QueuedWrite:
    """A write in the queue. Until ``taken`` (into a transaction) its rows are still the
    queuer's to change, on the event loop's thread: a reply part sent before its record was
    committed is recorded as sent, with no update after it."""

    prepared: Prepared
    rows: Sequence[Row]
    done: asyncio.Future[bool | None]
    what: str  # for the log when a write nobody waits for fails; "" when someone waits
    taken: bool = False


class GroupCommit:
    max_batch = 500
    # writes nobody waits for wait this long for company: a write someone waits for (the next
    # message's hand-over) then shares their commit instead of queueing behind it
    behind_s = 0.001
    # SQLite: checkpoint the WAL once no write has come for this long after a commit
    checkpoint_after_s = 0.05
    # SQLite: a batch someone waits for, of up to this many rows, commits on the event loop's
    # thread; larger ones and bookkeeping nobody waits for commit on the writer thread, in
    # parallel with the loop's work (sqlite3 releases the GIL while it writes)
    inline_max_rows = 8
    # SQLite: the loop's connection never checkpoints (an fsync on the loop); after this many of
    # its commits without a pause the writer thread checkpoints between batches instead
    inline_checkpoint_every = 2000

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ranks = itertools.count()
        self._queued: list[QueuedWrite] = []
        self._wakeup: asyncio.Future[None] | None = None  # set while the runner waits for writes
        self._waited = 0  # writes queued that someone waits for
        self._idle = False  # the runner waits for the first write
        self._submitted = 0  # writes queued so far
        self._settled = 0  # writes committed (or failed) so far
        self._flushes: list[tuple[int, asyncio.Future[None]]] = []  # (writes to wait for, waiter)
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._engine: Engine | None = None
        self._conn: Connection | None = None  # held by the worker thread
        self._inline_engine: Engine | None = None
        self._inline: Connection | None = None  # SQLite: the loop thread's, never waits for the lock
        self.inline_commits = 0  # batches committed on the loop's thread
        self._inline_unchecked = 0  # ... since the last checkpoint
        self._closing = False
        self._checkpoint_due = False  # commits since the last checkpoint (SQLite)
        self.checkpoints = 0  # checkpoints the writer ran

    def prepare(
        self,
        statement: UpdateBase,
        *,
        key: Sequence[str] = (),
        merge_by: Sequence[str] = (),
        add_up: Sequence[str] = (),
    ) -> Prepared:
        """A statement for writes (prepare a table's inserts before its updates).

        ``key``: for an insert ignoring duplicates, the columns that identify a row; the write's
        result is then whether its rows were new. ``merge_by``: for an upsert, the columns that
        identify a row; only the last of a batch's rows for one row is written, with the
        ``add_up`` columns summed over them (see :func:`upsert_adding`).
        """
        returning = None
        if key:
            assert isinstance(statement, Insert), "a key is for inserts"
            returning = statement.returning(*(statement.table.c[name] for name in key))  # type: ignore[union-attr]
        return Prepared(statement, next(self._ranks), tuple(key), tuple(merge_by), tuple(add_up), returning)

    @property
    def running(self) -> bool:
        """Started and not closing: writes are taken."""
        return self._task is not None and not self._closing

    async def start(self) -> None:
        self._closing = False
        if self._task is None:
            self._engine = self._db.sync_engine()
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
            try:
                self._conn = await self._in_thread(self._engine.connect)
                if self._db.dialect == "sqlite":  # an engine of its own: a reconnect keeps the settings
                    self._inline_engine = self._db.sync_engine()
                    event.listen(self._inline_engine, "connect", _never_waits)
                    self._inline = self._inline_engine.connect()
            except BaseException:
                await self._release()  # a database that cannot be opened leaves no thread behind
                raise
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._task is not None and self._settled < self._submitted:
            waiter = asyncio.get_running_loop().create_future()
            self._flushes.append((self._submitted, waiter))
            self._wake()
            await waiter

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        if self._task is None:
            return
        self._closing = True  # nothing new from here on
        await self.flush()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._release()

    async def _release(self) -> None:
        """Close the connections, engines and the writer thread (each even when another fails)."""
        try:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await self._in_thread(conn.close)
        finally:
            if self._inline is not None:
                inline, self._inline = self._inline, None
                inline.close()
            for engine in (self._inline_engine, self._engine):
                if engine is not None:
                    engine.dispose()
            self._inline_engine = self._engine = None
            if self._thread is not None:
                thread, self._thread = self._thread, None
                thread.shutdown(wait=True)

    async def write(self, prepared: Prepared, rows: Row | Sequence[Row]) -> bool | None:
        """Write ``rows`` in the next shared transaction; returns once committed: with a keyed
        insert, whether every row was new; else None."""
        return await self.submit(prepared, rows)

    def write_behind(
        self, prepared: Prepared, rows: Row | Sequence[Row], what: str
    ) -> asyncio.Future[bool | None]:
        """Queue a write without waiting; a failure is logged with ``what``."""
        return self.queue(prepared, rows, what).done

    def submit(
        self, prepared: Prepared, rows: Row | Sequence[Row], what: str = ""
    ) -> asyncio.Future[bool | None]:
        return self.queue(prepared, rows, what).done

    def queue(self, prepared: Prepared, rows: Row | Sequence[Row], what: str = "") -> QueuedWrite:
        """Queue a write (``what``: nobody waits for it; a failure is logged with it)."""
        if not self.running:
            raise RuntimeError("group commit is not running (the host starts and stops it)")
        done: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        write = QueuedWrite(prepared, [rows] if isinstance(rows, dict) else rows, done, what)
        self._queued.append(write)
        self._submitted += 1
        if not what:
            self._waited += 1
        if not what or self._idle:
            self._wake()
        return write

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _nap(self, seconds: float | None = None) -> None:
        """Wait for :meth:`_wake` (or ``seconds``)."""
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, self._wake)
        try:
            await self._wakeup
        finally:
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        while True:
            if not self._queued:
                self._idle = True
                try:
                    if self._checkpoint_due:
                        await self._nap(self.checkpoint_after_s)  # any write wakes it
                        if not self._queued:
                            await self._checkpoint()
                    else:
                        await self._nap()  # any write wakes it
                finally:
                    self._idle = False
                if not self._queued:
                    continue
            if not self._waited and not self._flushes:  # nobody waits yet: let more writes come
                await self._nap(self.behind_s)  # a write someone waits for (or a flush) ends it
            batch, self._queued = self._queued[: self.max_batch], self._queued[self.max_batch :]
            for write in batch:
                write.taken = True
                if not write.what:
                    self._waited -= 1
            try:
                await self._commit(batch)
            finally:
                self._checkpoint_due = self._db.dialect == "sqlite"
                self._settled += len(batch)
                while self._flushes and self._flushes[0][0] <= self._settled:
                    _, waiter = self._flushes.pop(0)
                    if not waiter.done():
                        waiter.set_result(None)
            if self._inline_unchecked >= self.inline_checkpoint_every:  # writes that never pause
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Copy the WAL into the database file (PASSIVE: it waits for no reader or writer)."""
        self._checkpoint_due = False
        self._inline_unchecked = 0
        conn = self._conn
        assert conn is not None
        try:
            await self._in_thread(lambda: _checkpoint(conn))
            self.checkpoints += 1
        except Exception as exc:  # the next pause tries again; SQLite's own checkpoint remains
            log.warning("WAL checkpoint failed: %s", exc)

    async def _commit(self, batch: list[QueuedWrite]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            results = self._execute_inline(batch)
            if results is None:
                results = await self._in_thread(lambda: _execute(conn, batch))
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
                return
            # one bad write must not fail its neighbours: retry them one by one
            for write in batch:
                await self._commit([write])
            return
        for write, result in zip(batch, results, strict=True):
            _settle(write, result)

    def _execute_inline(self, batch: list[QueuedWrite]) -> list[bool | None] | None:
        """Run a small SQLite batch someone waits for on this thread; None when it goes to the
        worker thread (nobody waits, too large, or another connection holds the write lock:
        nothing was written then)."""
        if self._inline is None or all(write.what for write in batch):
            return None
        if sum(len(write.rows) for write in batch) > self.inline_max_rows:
            return None
        try:
            results = _execute(self._inline, batch)
        except OperationalError as exc:
            if _lock_taken(exc):
                return None
            raise
        self.inline_commits += 1
        self._inline_unchecked += 1
        return results


def _never_waits(dbapi_conn: Any, _record: Any) -> None:
    """The loop's connection: "busy" at once when another holds the lock (the writer thread then
    waits), and no automatic checkpoint (an fsync on the loop; the writer thread checkpoints)."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _lock_taken(exc: OperationalError) -> bool:
    """SQLite said another connection holds the lock (busy or locked), nothing else."""
    code = getattr(exc.orig, "sqlite_errorcode", None)  # extended: BUSY_SNAPSHOT is 517 = 5 + 2 << 8
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _execute(conn: Connection, batch: list[QueuedWrite]) -> list[bool | None]:
    """Run ``batch`` in one transaction on ``conn``; each write's result."""
    groups: dict[Prepared, list[int]] = {}
    for index, write in enumerate(batch):
        groups.setdefault(write.prepared, []).append(index)
    results: list[bool | None] = [None] * len(batch)
    with conn.begin():
        for prepared in sorted(groups, key=lambda p: p.rank):
            writes = [batch[index] for index in groups[prepared]]
            if prepared.key:
                for index, new in zip(groups[prepared], _insert_keyed(conn, prepared, writes), strict=True):
                    results[index] = new
                continue
            rows = [row for write in writes for row in write.rows]
            if prepared.merge_by:
                rows = _merged(rows, prepared.merge_by, prepared.add_up)
            if rows:
                _execute_many(conn, prepared, rows)
    return results


_FROM_ROW = object()  # a parameter the rows give (the others the statement carries itself)


@dataclass(frozen=True, slots=True)
class _DriverStatement:
    """A prepared statement compiled once for one database and one set of row columns: its SQL
    and how a row becomes the driver's parameters (each value through its column type's
    conversion, as SQLAlchemy would)."""

    sql: str
    names: tuple[str, ...]  # its parameters, in the SQL's order where the driver's are positional
    values: tuple[Any, ...]  # per parameter: its converted value, or _FROM_ROW
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]  # (parameter index, conversion)
    positional: bool

    def parameters(self, row: Row) -> tuple[Any, ...] | dict[str, Any]:
        values = [
            row[name] if value is _FROM_ROW else value
            for name, value in zip(self.names, self.values, strict=True)
        ]
        for index, convert in self.conversions:
            values[index] = convert(values[index])
        return tuple(values) if self.positional else dict(zip(self.names, values, strict=True))

    def execute(self, conn: Connection, rows: list[Row]) -> int:
        """Run it once for all ``rows`` (executemany); the rows it changed."""
        return conn.exec_driver_sql(self.sql, [self.parameters(row) for row in rows]).rowcount


def _driver_statement(dialect: Any, prepared: Prepared, columns: frozenset[str]) -> _DriverStatement | None:
    """``prepared`` compiled for ``dialect`` with rows of ``columns``; None when it needs what
    only SQLAlchemy's per-row path does (Python-side defaults, expanding or escaped names)."""
    compiled = prepared.statement.compile(dialect=dialect, column_keys=list(columns))
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.escaped_bind_names
        or compiled.literal_execute_params
        or compiled.post_compile_params
    ):
        return None
    carried = compiled.construct_params(_check=False)  # the statement's own values; None for rows'
    names = tuple(compiled.positiontup) if dialect.positional else tuple(carried)
    values: list[Any] = []
    conversions: list[tuple[int, Callable[[Any], Any]]] = []
    for index, name in enumerate(names):
        bind = compiled.binds[name]
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if name in columns:
            values.append(_FROM_ROW)
            if convert is not None:
                conversions.append((index, convert))
        elif bind.required:
            return None  # a parameter no row gives: let SQLAlchemy say so
        else:
            value = carried[name]
            values.append(convert(value) if convert is not None else value)
    return _DriverStatement(compiled.string, names, tuple(values), tuple(conversions), dialect.positional)


def _driver(conn: Connection, prepared: Prepared, rows: list[Row]) -> _DriverStatement | None:
    """``prepared`` as compiled for this database and these rows (all with the same columns);
    None when SQLAlchemy's own path must run it."""
    columns = frozenset(rows[0])
    key = (conn.dialect.name, columns)
    if key not in prepared.compiled:
        prepared.compiled[key] = _driver_statement(conn.dialect, prepared, columns)
    driver = prepared.compiled[key]
    if driver is None or any(row.keys() != columns for row in rows):
        return None
    return driver


def _execute_many(conn: Connection, prepared: Prepared, rows: list[Row]) -> None:
    """Run ``prepared`` once for all ``rows`` (executemany). The statement is compiled once per
    database and set of columns and the rows go to the driver as converted values: SQLAlchemy's
    own path builds every row's parameters anew, a tenth to a fifth of a row's CPU time."""
    driver = _driver(conn, prepared, rows)
    if driver is None:
        conn.execute(prepared.statement, rows)
    else:
        driver.execute(conn, rows)


def _all_inserted(conn: Connection, prepared: Prepared, rows: list[Row]) -> bool:
    """Insert ``rows`` (ignoring duplicates) in a savepoint; True, and kept, when every row was
    new; else nothing of them is kept and the caller must learn which were new row by row.

    The common case (every message new) then costs one executemany instead of the RETURNING
    path's statement per batch of values and row-by-row results."""
    driver = _driver(conn, prepared, rows)
    if driver is None:
        return False
    if len(rows) == 1:  # one row (a hand-over one at a time): not inserted means nothing changed
        return driver.execute(conn, rows) == 1
    savepoint = conn.begin_nested()
    try:
        inserted = driver.execute(conn, rows)
    except BaseException:
        savepoint.rollback()
        raise
    if inserted == len(rows):
        savepoint.commit()
        return True
    savepoint.rollback()  # a repeat among them (or a driver that does not count): exact path
    return False


def _checkpoint(conn: Connection) -> None:
    with conn.begin():
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def _merged(rows: list[Row], by: tuple[str, ...], add_up: tuple[str, ...]) -> list[Row]:
    """One row per value of the ``by`` columns: the last one, its ``add_up`` columns summed."""
    merged: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        key = tuple(row[c] for c in by)
        earlier = merged.get(key)
        merged[key] = {**row, **{c: earlier[c] + row[c] for c in add_up}} if earlier and add_up else row
    return list(merged.values())


def _insert_keyed(conn: Connection, prepared: Prepared, writes: list[QueuedWrite]) -> list[bool]:
    """Insert the writes' rows; per write, whether every row of it was new."""

    def key(row: Row) -> tuple[Any, ...]:
        return tuple(row[c] for c in prepared.key)

    rows = [row for write in writes for row in write.rows]
    if not rows or _all_inserted(conn, prepared, rows):
        return [True] * len(writes)
    if prepared.returning is not None and conn.dialect.insert_executemany_returning:
        new = {tuple(found) for found in conn.execute(prepared.returning, rows)}
        results = []
        for write in writes:
            fresh = True
            for row in write.rows:  # the first row with a key was inserted; a repeat was not
                fresh = key(row) in new and fresh
                new.discard(key(row))
            results.append(fresh)
        return results
    # a driver without RETURNING for many rows: one statement per row, its row count
    return [all(conn.execute(prepared.statement, row).rowcount for row in write.rows) for write in writes]


def _settle(write: QueuedWrite, result: bool | None = None, *, error: Exception | None = None) -> None:
    if write.done.done():  # the caller gave up waiting
        return
    if error is None:
        write.done.set_result(result)
        return
    write.done.set_exception(error)
    if write.what:  # nobody may look: say it, and mark the exception seen
        log.error("%s: the database write failed: %s", write.what, error)
        write.done.exception()


def insert_ignoring_duplicates(db: Database, table: Table) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the database's dialect (row count 0 = was there)."""
    return db.insert(table).on_conflict_do_nothing()


def upsert(db: Database, table: Table, keys: list[str]) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` the other columns to the row's values, in the
    database's dialect; a statement for :meth:`GroupCommit.prepare` (``merge_by=keys``)."""
    statement = db.insert(table)
    changed = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    return statement.on_conflict_do_update(index_elements=keys, set_=changed)


def upsert_adding(db: Database, table: Table, keys: list[str], add: list[str]) -> Insert:
    """``INSERT ... ON CONFLICT (keys) DO UPDATE`` adding the row's ``add`` columns to the stored
    ones (counts that several processes add to); prepare it with ``merge_by=keys, add_up=add``."""
    statement = db.insert(table)
    changed = {name: table.c[name] + statement.excluded[name] for name in add}
    return statement.on_conflict_do_update(index_elements=keys, set_=changed)
