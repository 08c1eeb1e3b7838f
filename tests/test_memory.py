"""ConversationMemory: cache, batched writes, first-time sessions, eviction and flush on close."""

from __future__ import annotations

from bots.agent.memory import ConversationMemory, Turn
from bots.core.storage import Database


async def _db(tmp_path) -> Database:
    db = Database.in_data_dir(tmp_path)
    await db.start()
    return db


async def test_turns_survive_close_and_reopen(tmp_path):
    db = await _db(tmp_path)
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


async def test_evicted_session_with_unsaved_turns_is_read_back_whole(tmp_path):
    db = await _db(tmp_path)
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


async def test_write_through_when_not_started(tmp_path):
    db = await _db(tmp_path)
    await ConversationMemory(db, "bot").add_exchange("s", "u", "U", "q", "a")
    assert [t.content for t in await ConversationMemory(db, "bot").recent("s")] == ["q", "a"]
    await db.close()
