"""Replies leave each chat in the order their messages arrived; chats stay concurrent."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from langchain_core.messages import BaseMessage
from sqlalchemy import select

from bots.core.config import Secrets
from bots.core.events import ChannelKind, ChannelRef, Outbound, SentRef
from bots.core.ordering import ChatOrder
from bots.core.storage import InboxEntry
from bots.doctor import _delivery
from bots.plugins.api import Plugin, command
from bots.testing import FakeAdapter, FakeLLM
from bots.testing.harness import BOT

KEY = ("bot", "fake", "fake:g1")


# -- the queue itself ----------------------------------------------------------------------------
async def test_turns_of_one_chat_run_one_at_a_time_in_order_and_chats_run_together():
    order = ChatOrder()
    log: list[str] = []

    async def work(name: str, delay: float) -> None:
        async with turns[name]:
            log.append(f"start {name}")
            await asyncio.sleep(delay)
            log.append(f"end {name}")

    turns = {name: order.turn(KEY) for name in ("a1", "a2", "a3")}
    turns["b1"] = order.turn(("bot", "fake", "fake:g2"))
    await asyncio.gather(work("a1", 0.05), work("a2", 0.0), work("a3", 0.01), work("b1", 0.0))
    chat_a = [entry for entry in log if entry.endswith(("a1", "a2", "a3"))]
    assert chat_a == ["start a1", "end a1", "start a2", "end a2", "start a3", "end a3"]
    assert log.index("end b1") < log.index("end a1")  # the other chat did not wait
    assert order.busy_chats == 0  # nothing left behind once every turn is over


async def test_a_turn_given_up_early_keeps_the_next_one_behind_the_one_before():
    order = ChatOrder()
    first, dropped, third = order.turn(KEY), order.turn(KEY), order.turn(KEY)
    dropped.release()  # a duplicate delivery: its turn is given up before it came
    entered = asyncio.Event()

    async def run_third() -> None:
        async with third:
            entered.set()

    task = asyncio.create_task(run_third())
    await asyncio.sleep(0.05)
    assert not entered.is_set()  # still behind the first
    async with first:
        pass
    await asyncio.wait_for(entered.wait(), 5)  # awaited: the third turn, once the first was over
    await task


async def test_a_cancelled_wait_passes_the_queue_on():
    order = ChatOrder()
    first, second, third = order.turn(KEY), order.turn(KEY), order.turn(KEY)

    async def enter(turn: Any) -> None:
        async with turn:
            pass

    waiting = asyncio.create_task(enter(second))
    await asyncio.sleep(0.01)
    waiting.cancel()
    last = asyncio.create_task(enter(third))
    async with first:
        pass
    await asyncio.wait_for(last, 5)  # awaited: the third turn after the second was cancelled


# -- through the host ----------------------------------------------------------------------------
class SlowLLM(FakeLLM):
    """Answers "answer to <question>" after a delay that varies per question (seeded)."""

    seed: int = 1

    async def _agenerate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        question = str(messages[-1].content)
        await asyncio.sleep(random.Random(f"{self.seed}{question}").uniform(0.0, 0.05))
        self.responses.append(f"Here is the answer to {question.split()[-1]}.")
        return await super()._agenerate(messages, *args, **kwargs)


class JitteryAdapter(FakeAdapter):
    """A platform whose round trips vary: a later send could overtake an earlier one."""

    async def send(self, outbound: Outbound) -> SentRef:
        await asyncio.sleep(random.uniform(0.0, 0.02))
        return await super().send(outbound)


def _inversions(h: Any, chats: list[str]) -> dict[str, list[str]]:
    """Per chat, the questions in the order their answers were sent."""
    answered: dict[str, list[str]] = {chat: [] for chat in chats}
    for outbound in h.adapter.sent:
        answered[outbound.target.id].append(outbound.text.split()[-1].rstrip("."))
    return answered


async def test_replies_keep_each_chats_order_with_varying_latency(harness):
    chats = ["g1", "g2", "g3"]
    h = await harness(llm=SlowLLM(), adapter=JitteryAdapter(), memory={"group_scope": "user"})
    expected: dict[str, list[str]] = {chat: [] for chat in chats}
    for n in range(30):
        chat = chats[n % 3]
        expected[chat].append(f"q{n}")
        # several people in each chat: their sessions (and model calls) run side by side
        await h.push(f"question q{n}", chat=chat, user=f"u{n % 4}", mention=True)
    await h.drain(timeout=60)
    assert _inversions(h, chats) == expected


async def test_a_transient_send_failure_is_retried_in_place(harness, monkeypatch):
    monkeypatch.setattr("bots.core.retry.FIRST_WAIT_S", 0.05)
    h = await harness(llm=SlowLLM())
    h.adapter.fail_sends.append(ConnectionResetError("the connection dropped"))
    for n in range(3):
        await h.push(f"question q{n}", chat="g1", mention=True)
    await h.drain(timeout=30)
    assert [o.text for o in h.adapter.sent] == [f"Here is the answer to q{n}." for n in range(3)]


async def test_a_send_that_cannot_succeed_is_given_up_and_the_chat_goes_on(harness):
    h = await harness(llm=SlowLLM())
    h.adapter.fail_sends.append(ValueError("400: message text is invalid"))  # not worth a retry
    for n in range(2):
        await h.push(f"question q{n}", chat="g1", mention=True)
    await h.drain(timeout=30)
    assert [o.text for o in h.adapter.sent] == ["Here is the answer to q1."]
    assert h.host.bots[BOT].pipeline.errors  # the failure is on the operators' status


class PostTwice(Plugin):
    name = "posttwice"

    @command("twice")
    async def twice(self, inv: Any) -> None:
        # a post to the very chat the command came from, while its turn is held: no deadlock
        await self.ctx.send(inv.event.channel, "posted first")
        await inv.reply("replied second")


async def test_a_post_into_the_chat_being_handled_is_part_of_that_turn(harness):
    h = await harness(plugins=[PostTwice])
    await h.push("/twice", chat="g1")
    await h.push("/twice", chat="g1")
    await h.drain(timeout=30)
    assert [o.text for o in h.adapter.sent] == ["posted first", "replied second"] * 2


async def test_a_scheduled_post_waits_for_the_reply_in_flight(harness):
    h = await harness(llm=FakeLLM(default="The answer, after a while.", delay_s=0.2))
    await h.push("slow question", chat="g1", mention=True)
    target = ChannelRef("fake", "g1", ChannelKind.GROUP)
    await h.host.send(BOT, Outbound(target, "the daily digest"), key="digest:g1")
    await h.drain()
    assert [o.text for o in h.adapter.sent] == ["The answer, after a while.", "the daily digest"]


async def _crash(h: Any) -> None:
    h.host.stop_grace_s = 0
    await h.host.stop()


async def test_replays_keep_their_place_and_only_the_message_being_handled_pays_an_attempt(harness, tmp_path):
    data = tmp_path / "var"
    first = await harness(data_dir=data, llm=FakeLLM(delay_s=30))
    events = [first.adapter.event(f"question q{n}", chat="g1", mention=True) for n in range(3)]
    for event in events:
        await first.push(event)
    await _crash(first)  # q0 was being answered; q1 and q2 waited for their turn
    second = await harness(data_dir=data, adapter=FakeAdapter(), llm=SlowLLM(), start=False)
    await second.host.start()
    late = await second.push("question q3", chat="g1", mention=True)  # arrives after the restart
    await second.drain(timeout=30)
    answers = [o.text.split()[-1].rstrip(".") for o in second.adapter.sent]
    assert answers == ["q0", "q1", "q2", "q3"]
    assert second.adapter.sent[-1].reply_to == late.message_id
    async with second.host.db.session() as session:
        attempts = dict((await session.execute(select(InboxEntry.event_id, InboxEntry.attempts))).all())
    assert attempts[events[0].id] == 1 and attempts[events[1].id] == attempts[events[2].id] == 0


async def test_messages_waiting_behind_a_slow_chat_survive_many_restarts(harness, tmp_path):
    data = tmp_path / "var"
    first = await harness(data_dir=data, llm=FakeLLM(delay_s=30))
    events = [first.adapter.event(f"question q{n}", chat="g1", mention=True) for n in range(3)]
    for event in events:
        await first.push(event)
    await _crash(first)
    for _restart in range(4):  # q0 keeps "killing" the host; the others only wait
        h = await harness(data_dir=data, adapter=FakeAdapter(), llm=FakeLLM(delay_s=30))
        await _crash(h)
    last = await harness(data_dir=data, adapter=FakeAdapter(), llm=SlowLLM())
    await last.drain(timeout=30)
    assert [o.text.split()[-1].rstrip(".") for o in last.adapter.sent] == ["q1", "q2"]
    assert last.host.inbox.abandoned == 1  # abandoned by an earlier start (said at ERROR), counted
    async with last.host.db.session() as session:
        states = dict((await session.execute(select(InboxEntry.event_id, InboxEntry.state))).all())
    assert states == {events[0].id: "abandoned", events[1].id: "done", events[2].id: "done"}
    assert "messages abandoned, never answered (last 3 days): 1" in last.host.control.status()
    [check] = _delivery(last.config, Secrets())  # bots doctor says so too
    assert check.status == "warn" and "1 message(s) abandoned" in check.detail


async def test_doctor_finds_nothing_to_say_about_a_clean_delivery_record(harness):
    h = await harness()
    await h.ask("hello")
    await h.host.stop()
    [check] = _delivery(h.config, Secrets())
    assert check.status == "ok"
