"""Conversation memory per session, persisted through SQLAlchemy.

Recent turns are served from an in-process cache (one host owns a bot's sessions) and written
by a background task in batches (group commit), so a reply never waits for a disk commit.
``close()`` flushes everything still pending; the host calls it on stop. The ids of sessions
with stored history are read once at start, so a first-time user costs no database read.
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

from bots.core.storage import ChatTurn, Database

log = logging.getLogger("bots.memory")


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "human" | "ai"
    content: str
    author_name: str = ""


class ConversationMemory:
    batch_window_s = 0.02  # writes arriving within this window share one commit

    def __init__(
        self, db: Database, bot: str, *, cached_sessions: int = 5000, cached_turns: int = 60
    ) -> None:
        self._db = db
        self._bot = bot
        self._cached_turns = cached_turns
        self._cache: LRUCache[str, deque[Turn]] = LRUCache(maxsize=cached_sessions)
        self._pending: list[dict[str, Any]] = []  # waiting for the writer
        self._writing: list[dict[str, Any]] = []  # in the transaction being committed
        self._wakeup = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._stored_sessions: set[str] | None = None  # None: not known, ask the database

    async def start(self) -> None:
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(select(ChatTurn.session_id).where(ChatTurn.bot == self._bot).distinct())
            self._stored_sessions = {row[0] for row in rows}
        if self._writer is None:
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
        if any(row["session_id"] == session_id for row in (*self._writing, *self._pending)):
            await self.flush()  # rare: a session evicted from the cache with turns unsaved
        if self._stored_sessions is not None and session_id not in self._stored_sessions:
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
        rows = [
            {
                **common,
                "role": "human",
                "author_id": author_id,
                "author_name": author_name,
                "content": question,
            },
            {**common, "role": "ai", "author_id": "", "author_name": "", "content": answer},
        ]
        cached = self._cache.get(session_id)
        if cached is not None:
            cached.extend(_turn(row) for row in rows)
        self._pending.extend(rows)
        if self._stored_sessions is not None:
            self._stored_sessions.add(session_id)
        if self._writer is None:
            await self.flush()  # not started (scripts, tests): write through
        else:
            self._wakeup.set()

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wakeup.wait()
            if not self._closing:
                await asyncio.sleep(self.batch_window_s)  # let a burst share one commit
            self._wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            self._writing, self._pending = self._pending, []
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(insert(ChatTurn), self._writing)
            except Exception:
                log.exception(
                    "memory of bot %s: %d turn(s) could not be saved", self._bot, len(self._writing)
                )
            finally:
                self._writing = []


def _turn(row: dict[str, Any]) -> Turn:
    return Turn(row["role"], row["content"], row["author_name"])
