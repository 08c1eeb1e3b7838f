"""ConversationMemory: cache, batched writes, first-time sessions, eviction and flush on close."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from bots.agent.memory import ConversationMemory, Turn
from bots.core.groupcommit import GroupCommit
from bots.core.storage import Database


async def _db(url: str) -> Database:
    db = Database(url)
    await db.start()
    return db


async def test_turns_survive_close_and_reopen(database_url):
    db = await _db(database_url)
    memory = ConversationMemory(db, "bot")
    await memory.start()
    assert await memory.recent("s1") == []
    await memory.add_exchange("s1", "fake:u1", "Ada", "hello", "hi Ada")
    assert await memory.recent("s1") == [Turn("human", "hello", "Ada"), Turn("ai", "hi Ada", "")]
    await memory.close()  # flushes the batch still waiting for its commit window

    reopened = ConversationMemory(db, "bot")
    await reopened.start()
    assert [t.content for t in await reopened.recent("s1")] == ["hello", "hi Ada"]
    assert await reopened.recent("s2") == []
    assert await ConversationMemory(db, "other-bot").recent("s1") == []  # bots never share memory
    await reopened.close()
    await db.close()


async def test_evicted_session_with_unsaved_turns_is_read_back_whole(database_url):
    db = await _db(database_url)
    memory = ConversationMemory(db, "bot", cached_sessions=1)
    await memory.start()
    for i in range(3):
        await memory.recent("a")
        await memory.add_exchange("a", "u", "U", f"q{i}", f"a{i}")
    await memory.recent("b")  # evicts "a" while its turns may still be waiting for the writer
    turns = await memory.recent("a")
    assert [t.content for t in turns] == ["q0", "a0", "q1", "a1", "q2", "a2"]
    await memory.close()
    await db.close()


async def test_write_through_when_not_started(database_url):
    db = await _db(database_url)
    await ConversationMemory(db, "bot").add_exchange("s", "u", "U", "q", "a")
    assert [t.content for t in await ConversationMemory(db, "bot").recent("s")] == ["q", "a"]
    await db.close()


async def test_concurrent_writes_are_all_saved_in_order(database_url):
    db = await _db(database_url)
    memory = ConversationMemory(db, "bot")  # not started: every call writes through
    await asyncio.gather(*(memory.add_exchange("s", "u", "U", f"q{i}", f"a{i}") for i in range(5)))
    fresh = ConversationMemory(db, "bot")
    assert [t.content for t in await fresh.recent("s")] == [x for i in range(5) for x in (f"q{i}", f"a{i}")]
    await db.close()


async def test_a_failed_commit_is_retried_not_lost(database_url, caplog):
    db = await _db(database_url)
    real_begin = db.engine.begin
    failures = iter([True])

    def flaky_begin():
        if next(failures, False):
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return real_begin()

    memory = ConversationMemory(db, "bot")
    memory._db = SimpleNamespace(engine=SimpleNamespace(begin=flaky_begin, connect=db.engine.connect))
    await memory.add_exchange("s", "u", "U", "q", "a")
    assert "retrying" in caplog.text
    assert [t.content for t in await ConversationMemory(db, "bot").recent("s")] == ["q", "a"]
    await db.close()


async def test_in_a_host_turns_are_written_in_the_group_commit(database_url):
    """With the host's group commit, turns share its transactions (no connection of their own);
    an evicted session with turns still queued there is read back whole; close saves them."""
    db = await _db(database_url)
    writes = GroupCommit(db)
    statements: list[str] = []
    await writes.start()
    assert writes._engine is not None
    event.listen(writes._engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    memory = ConversationMemory(db, "bot", writes=writes, cached_sessions=1)
    await memory.start()
    try:
        for i in range(3):
            await memory.recent("a")
            await memory.add_exchange("a", "u", "U", f"q{i}", f"a{i}")
        await memory.recent("b")  # evicts "a" while its turns may still wait in the group commit
        assert [t.content for t in await memory.recent("a")] == ["q0", "a0", "q1", "a1", "q2", "a2"]
        await memory.add_exchange("b", "u", "U", "last", "answer")
        await memory.close()
        assert any("INSERT INTO chat_turns" in s for s in statements), statements
        fresh = ConversationMemory(db, "bot")
        assert [t.content for t in await fresh.recent("b")] == ["last", "answer"]
    finally:
        await writes.close()
        await db.close()


async def test_in_a_host_turns_the_group_commit_fails_to_write_are_retried(database_url):
    db = await _db(database_url)
    writes = GroupCommit(db)
    await writes.start()
    assert writes._engine is not None
    failures = iter([True])  # a batch of one write that fails: the group commit gives up on it

    def flaky(conn, cursor, statement, *args):
        if "chat_turns" in statement and next(failures, False):
            raise OperationalError(statement, {}, Exception("disk I/O error"))

    event.listen(writes._engine, "before_cursor_execute", flaky)
    memory = ConversationMemory(db, "bot", writes=writes)
    await memory.start()
    try:
        await memory.add_exchange("s", "u", "U", "q", "a")
        await memory.close()
        assert next(failures, "spent") == "spent", "the group commit was not made to fail"
        assert [t.content for t in await ConversationMemory(db, "bot").recent("s")] == ["q", "a"]
    finally:
        await writes.close()
        await db.close()
