"""The durable inbox and outbox: accepted messages are answered exactly once across restarts."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import fields
from datetime import timedelta

import pytest
from sqlalchemy import event, select, update

from bots.core import pipeline
from bots.core.events import (
    Attachment,
    ChannelKind,
    ChannelRef,
    Joined,
    Mention,
    MessageEvent,
    Outbound,
    ReplyTo,
    UserRef,
    event_from_dict,
    event_to_dict,
)
from bots.core.storage import InboxEntry, OutboxEntry
from bots.testing import FakeAdapter, FakeLLM
from bots.testing.harness import BOT

pytestmark = pytest.mark.usefixtures("database_url")  # SQLite and PostgreSQL


async def _crash(h) -> None:
    """Stop the host without letting in-flight work finish, as a killed process would."""
    h.host.stop_grace_s = 0
    await h.host.stop()


async def _states(h, table) -> list[str]:
    async with h.host.db.session() as session:
        return list(await session.scalars(select(table.state)))


async def test_a_redelivered_message_is_answered_once(harness):
    h = await harness()
    event = h.adapter.event("hello?")
    await h.push(event)
    await h.push(event)  # the platform delivers it again while the first is in flight
    await h.drain()
    await h.push(event)  # and once more after it was answered
    await h.drain()
    assert [o.text for o in h.adapter.take_sent()] == ["ok"]


async def test_a_message_accepted_before_a_crash_is_answered_after_the_restart(harness, tmp_path):
    data = tmp_path / "var"
    first = await harness(data_dir=data, llm=FakeLLM(default="too late", delay_s=30))
    event = first.adapter.event("are you there?", chat="g1", mention=True)
    await first.push(event)  # accepted: the platform may now forget it
    await _crash(first)
    assert first.adapter.sent == []

    second = await harness(data_dir=data, adapter=FakeAdapter(), llm=FakeLLM(default="here"))
    await second.drain()  # the start replayed the accepted message
    await second.push(event)  # ... and the platform redelivers it too
    await second.drain()
    assert [o.text for o in second.adapter.take_sent()] == ["here"]
    assert second.adapter.sent[0].reply_to == event.message_id
    assert await _states(second, InboxEntry) == ["done"]


async def test_a_half_sent_answer_is_finished_not_regenerated(harness, tmp_path):
    data = tmp_path / "var"
    long_answer = (
        "The fog came in at dusk and stayed. The horn sounded twice every half minute. A trawler passed "
        "the reef at nine, slowly. Its skipper waved from the wheelhouse. I wrote the wind and the sea in "
        "the log. At midnight the lamp's clockwork slowed by one turn. I wound it again by hand. Last words."
    )
    adapter = FakeAdapter(max_length=120)
    first = await harness(data_dir=data, adapter=adapter, llm=FakeLLM(default=long_answer))
    original_send = adapter.send

    async def send_then_die(outbound: Outbound):
        if adapter.sent:
            raise asyncio.CancelledError  # the process dies between the first and second part
        return await original_send(outbound)

    adapter.send = send_then_die  # type: ignore[method-assign]
    event = adapter.event("tell me everything")
    await first.push(event)
    await first.drain()
    await _crash(first)
    parts_sent = [o.text for o in adapter.sent]
    assert len(parts_sent) == 1

    llm = FakeLLM(default="a different answer")
    second = await harness(data_dir=data, adapter=FakeAdapter(max_length=120), llm=llm)
    await second.drain()
    rest = [o.text for o in second.adapter.take_sent()]
    assert rest and "a different answer" not in rest
    assert " ".join(parts_sent + rest).split() == long_answer.split()
    assert llm.prompts == []  # the stored answer was used, the model was not asked again
    assert set(await _states(second, OutboxEntry)) == {"sent"}


async def test_a_message_that_keeps_failing_is_abandoned(harness, tmp_path):
    data = tmp_path / "var"
    event = None
    for _attempt in range(5):  # the inbox's max_attempts
        h = await harness(data_dir=data, adapter=FakeAdapter(), llm=FakeLLM(delay_s=30))
        if event is None:
            event = h.adapter.event("poison")
            await h.push(event)
        await _crash(h)  # each start replays it; each time the process dies again
    last = await harness(data_dir=data, adapter=FakeAdapter())
    await last.drain()
    assert last.adapter.sent == []
    assert await _states(last, InboxEntry) == ["abandoned"]


async def test_stale_messages_are_not_answered_late(harness, tmp_path):
    data = tmp_path / "var"
    first = await harness(data_dir=data, llm=FakeLLM(delay_s=30))
    await first.push("old question")
    await _crash(first)
    second = await harness(data_dir=data, adapter=FakeAdapter(), start=False)
    second.host.inbox.replay_window = timedelta(0)
    await second.host.start()
    await second.drain()
    assert second.adapter.sent == []
    assert await _states(second, InboxEntry) == ["abandoned"]


async def test_send_with_a_key_is_sent_once(harness):
    h = await harness()
    target = ChannelRef("fake", "g1", ChannelKind.GROUP)
    first = await h.host.send(BOT, Outbound(target, "daily digest"), key="digest:g1:2026-11-26")
    again = await h.host.send(BOT, Outbound(target, "daily digest"), key="digest:g1:2026-11-26")
    assert len(first) == 1 and again == []
    assert [o.text for o in h.adapter.take_sent()] == ["daily digest"]


async def test_typing_shows_while_the_model_writes(harness):
    h = await harness(llm=FakeLLM(delay_s=1.0))  # longer than TYPING_AFTER_S (0.15 s)
    await h.ask("slow question")
    assert h.adapter.typing_calls and h.adapter.typing_calls[0].id == "dm-u1"


async def test_an_answer_ready_before_the_typing_delay_sends_no_typing(harness, monkeypatch):
    monkeypatch.setattr(pipeline, "TYPING_AFTER_S", 60.0)  # any answer here is ready sooner
    h = await harness(llm=FakeLLM(delay_s=0.2))
    assert (await h.ask("quick question"))[0].text
    assert h.adapter.typing_calls == []


async def _lose_the_finished_mark(h) -> None:
    """As if the process died after answering but before the "finished" mark reached the disk."""
    async with h.host.db.session() as session, session.begin():
        await session.execute(update(InboxEntry).values(state="accepted"))


async def test_a_redelivery_of_an_unfinished_message_is_a_replay(harness):
    h = await harness(llm=FakeLLM(default="first answer"))
    event = h.adapter.event("hello?")
    await h.push(event)
    await h.drain()
    await _lose_the_finished_mark(h)
    h.llm.default = "second answer"
    await h.push(event)
    await h.drain()
    assert [o.text for o in h.adapter.take_sent()] == ["first answer"]  # not written or sent again


async def test_a_replayed_command_is_not_run_again(harness):
    h = await harness(plugins=["basics", "admin"], roles={"operators": ["fake:op"]})
    command = h.adapter.event("/say fake:g2 the fog is lifting", user="op")
    await h.push(command)
    await h.drain()
    assert [o.text for o in h.adapter.take_sent()] == ["the fog is lifting", "sent to fake:g2"]
    await _lose_the_finished_mark(h)
    await h.push(command)
    await h.drain()
    assert h.adapter.take_sent() == []


async def test_two_long_posts_to_one_chat_do_not_interleave(harness):
    class SlowAdapter(FakeAdapter):
        async def send(self, outbound: Outbound):
            await asyncio.sleep(0.001)  # a network round trip: the other post could slip in here
            return await super().send(outbound)

    h = await harness(adapter=SlowAdapter(max_length=20))
    target = ChannelRef("fake", "g1", ChannelKind.GROUP)
    first, second = ("Alpha one. " * 6).strip(), ("Bravo two. " * 6).strip()
    await asyncio.gather(*(h.host.send(BOT, Outbound(target, text)) for text in (first, second)))
    words = [o.text.split()[0] for o in h.adapter.take_sent()]
    switches = sum(1 for a, b in itertools.pairwise(words) if a != b)
    assert len(words) > 4 and switches == 1  # all of one post, then all of the other


def test_a_stored_event_reads_back_whole():
    author = UserRef("telegram", "1", "Ann", is_bot=True, username="ann")
    chat = ChannelRef("telegram", "-5", ChannelKind.THREAD, "Readers", parent_id="-4")
    segments = (Mention("9", "bot"), ReplyTo("3", "9"), Attachment("image", "u", "n"), Joined("2", "B"))
    event = MessageEvent("telegram", "7", author, chat, "hi", "9", "bot", segments, to_me=True)
    stored = json.loads(json.dumps(event_to_dict(event)))
    assert set(stored["author"]) == {f.name for f in fields(UserRef)}  # a new field is stored too
    assert event_from_dict(stored) == event


@pytest.mark.parametrize("slow", [False, True])
async def test_a_part_sent_before_its_record_is_written_is_recorded_as_sent(harness, monkeypatch, slow):
    """Sent before its record's transaction took it: the record says "sent" (no update after);
    sent after: the update marks it. Either way the outbox ends with the part sent, its id kept."""
    h = await harness()
    writes = h.host.writes
    updates: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("UPDATE OUTBOX"):
            updates.append(statement)

    for engine in (writes._engine, writes._inline_engine):
        if engine is not None:
            event.listen(engine, "before_cursor_execute", seen)
    if slow:
        send = h.adapter.send

        async def slow_send(outbound):
            await writes.flush()  # the record is committed (taken) before the part goes
            return await send(outbound)

        monkeypatch.setattr(h.adapter, "send", slow_send)
    target = ChannelRef("fake", "g1", ChannelKind.GROUP)
    sent = await h.host.outbox.deliver(BOT, h.adapter, Outbound(target, "hello"), "k|1|0", fresh=True)
    await writes.flush()
    async with h.host.db.session() as session:
        stored = (await session.execute(select(OutboxEntry.state, OutboxEntry.message_id))).all()
    assert [tuple(row) for row in stored] == [("sent", sent[0].message_id)]
    assert len(updates) == (1 if slow else 0)
