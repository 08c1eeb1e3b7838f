"""Conversation memory per session, persisted through SQLAlchemy.

Recent turns are served from an in-process cache (one host owns a bot's sessions) and written
behind the reply, so a reply never waits for a disk commit: in a host through its group commit
(the same transactions as the inbox and outbox, no connection of their own competing for SQLite's
write lock; turns it fails to write go to the memory's own writer, which retries them), elsewhere
by a background task in batches. ``close()`` saves everything still pending; the host calls it on
stop. Which sessions have stored history is read once at start, so a first-time user costs no
database read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import LRUCache
from sqlalchemy import insert, select

from bots.core.groupcommit import GroupCommit
from bots.core.storage import ChatTurn, Database

log = logging.getLogger("bots.memory")

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "human" | "ai"
    content: str
    author_name: str = ""


class ConversationMemory:
    batch_window_s = 0.02  # writes arriving within this window share one commit
    save_attempts = 5  # a batch that fails this often is dropped, with an error in the log
    max_known_sessions = 200_000  # above this, first-time sessions are checked in the database

    def __init__(
        self,
        db: Database,
        bot: str,
        *,
        writes: GroupCommit | None = None,
        cached_sessions: int = 5000,
        cached_turns: int = 60,
    ) -> None:
        self._db = db
        self._bot = bot
        self._writes = writes
        self._insert = writes.prepare(insert(ChatTurn.__table__)) if writes is not None else None
        self._cached_turns = cached_turns
        self._cache: LRUCache[str, deque[Turn]] = LRUCache(maxsize=cached_sessions)
        self._pending: list[Row] = []  # not yet handed to a transaction
        self._saving: list[Row] = []  # in the transaction being committed
        self._save_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._known_sessions: set[str] | None = None  # None: unknown, ask the database
        self._writing: dict[str, int] = {}  # sessions -> their writes in the group commit

    async def start(self) -> None:
        query = (
            select(ChatTurn.session_id)
            .where(ChatTurn.bot == self._bot)
            .distinct()
            .limit(self.max_known_sessions + 1)
        )
        async with self._db.engine.connect() as conn:
            known = {row[0] for row in await conn.execute(query)}
        self._known_sessions = known if len(known) <= self.max_known_sessions else None
        if self._writer is None:  # in a host too: it retries what the group commit failed to write
            self._closing = False
            self._writer = asyncio.create_task(self._write_loop(), name=f"memory-writer-{self._bot}")

    async def close(self) -> None:
        """Stop the writer after it has saved everything (never cancel a commit midway)."""
        if self._writer is not None:
            self._closing = True
            self._wakeup.set()
            await self._writer
            self._writer = None
        await self.flush()

    async def recent(self, session_id: str, limit: int = 40) -> list[Turn]:
        """The last ``limit`` turns of the session, oldest first."""
        turns = self._cache.get(session_id)
        if turns is None:
            turns = deque(await self._load(session_id), maxlen=self._cached_turns)
            self._cache[session_id] = turns
        return list(turns)[-limit:]

    async def _load(self, session_id: str) -> list[Turn]:
        if self._writes is not None and session_id in self._writing:
            await self._writes.flush()  # rare: a session left the cache with turns not yet saved
        if any(row["session_id"] == session_id for row in (*self._saving, *self._pending)):
            await self.flush()  # rare: a session left the cache with turns not yet saved
        if self._known_sessions is not None and session_id not in self._known_sessions:
            return []  # a first-time session: nothing stored, no database read
        query = (
            select(ChatTurn.role, ChatTurn.content, ChatTurn.author_name)
            .where(ChatTurn.bot == self._bot, ChatTurn.session_id == session_id)
            .order_by(ChatTurn.id.desc())
            .limit(self._cached_turns)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Turn(*row) for row in reversed(rows)]

    async def add_exchange(
        self, session_id: str, author_id: str, author_name: str, question: str, answer: str
    ) -> None:
        common = {"bot": self._bot, "session_id": session_id, "created_at": datetime.now(UTC)}
        # ids and names cut to the columns' sizes: the same on every engine
        who = {"author_id": author_id[:255], "author_name": author_name[:255]}
        human = {"role": "human", **who, "content": question}
        ai = {"role": "ai", "author_id": "", "author_name": "", "content": answer}
        rows = [{**common, **human}, {**common, **ai}]
        cached = self._cache.get(session_id)
        if cached is not None:
            cached.extend(_turn(row) for row in rows)
        if self._known_sessions is not None:
            self._known_sessions.add(session_id)
        if self._insert is not None and self._writes is not None and self._writes.running:
            what = f"memory of bot {self._bot}: {len(rows)} turn(s), to be retried"
            self._writing[session_id] = self._writing.get(session_id, 0) + 1
            self._writes.write_behind(self._insert, rows, what).add_done_callback(
                lambda done: self._written(session_id, rows, done)
            )
            return
        self._pending.extend(rows)
        if self._writer is None:
            await self.flush()  # not started (scripts, tests): write through
        else:
            self._wakeup.set()

    def _written(self, session_id: str, rows: list[Row], done: asyncio.Future[Any]) -> None:
        left = self._writing.pop(session_id) - 1
        if left:
            self._writing[session_id] = left
        if done.cancelled() or done.exception() is not None:  # the group commit gave up on them
            self._pending.extend(rows)  # saved by the writer, retried as any batch
            self._wakeup.set()

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            if not self._closing:
                await asyncio.sleep(self.batch_window_s)  # let a burst share one commit
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Save every pending turn; one caller at a time, batches in arrival order."""
        if self._writes is not None:
            await self._writes.flush()
        async with self._save_lock:
            attempt = 0
            while self._pending:
                self._saving, self._pending = self._pending, []
                try:
                    async with self._db.engine.begin() as conn:
                        await conn.execute(insert(ChatTurn), self._saving)
                    attempt = 0
                except Exception:
                    attempt += 1
                    if attempt >= self.save_attempts:
                        log.exception("memory of bot %s: %d turn(s) lost", self._bot, len(self._saving))
                        attempt = 0
                    else:
                        log.warning("memory of bot %s: save failed, retrying", self._bot, exc_info=True)
                        self._pending[:0] = self._saving  # keep the order, try again
                        await asyncio.sleep(0.05 * 2**attempt)
                finally:
                    self._saving = []


def _turn(row: Row) -> Turn:
    return Turn(row["role"], row["content"], row["author_name"])
