"""Bots never talk themselves into a loop: other bots are not answered by default; allowed ones get a
budget of turns per chat that a person renews, kept across restarts; bots' commands need a role."""

from __future__ import annotations

from bots.core.loops import LoopGuard
from bots.testing import FakeLLM

CHAT = "g1"


async def bot_says(h, text: str = "keeper, what about the fog?", *, user: str = "otherbot"):
    return await h.ask(text, chat=CHAT, user=user, mention=True, is_bot=True)


async def test_another_bot_is_not_answered_by_default(harness):
    h = await harness(llm=FakeLLM(default="The fog is thick tonight."))
    assert await bot_says(h) == []
    assert await bot_says(h, "/ping") == []  # nor are its commands run
    assert len(await h.ask("and you, keeper?", chat=CHAT, user="ann", mention=True)) == 1


async def test_an_allowed_bot_gets_the_budget_then_a_cool_down_a_person_renews_the_budget(harness):
    h = await harness(llm=FakeLLM(default="The fog is thick tonight."), bot={"answer_bots": ["otherbot"]})
    answered = [len(await bot_says(h, f"question {i} about the fog")) for i in range(6)]
    assert answered == [1, 1, 1, 0, 0, 0]  # bot_turns defaults to 3
    assert "bot-to-bot loops stopped: 1" in "\n".join(h.host.control.status())
    assert await bot_says(h, "still there?", user="thirdbot") == []  # not on the list
    await h.ask("what a night", chat=CHAT, user="ann", mention=True)  # a person: a new budget...
    assert await bot_says(h, "one more?") == []  # ...but the cool-down still holds


async def test_a_person_renews_the_budget_before_it_is_spent(harness):
    h = await harness(
        llm=FakeLLM(default="The fog is thick tonight."), bot={"answer_bots": True, "bot_turns": 2}
    )
    assert [len(await bot_says(h)) for _ in range(2)] == [1, 1]
    await h.ask("nice chat, you two", chat=CHAT, user="ann", mention=True)
    assert [len(await bot_says(h)) for _ in range(3)] == [1, 1, 0]


async def test_a_restart_mid_loop_does_not_reset_the_budget(harness, tmp_path):
    data = tmp_path / "state"
    first = await harness(data_dir=data, llm=FakeLLM(default="The fog is thick."), bot={"answer_bots": True})
    assert [len(await bot_says(first)) for _ in range(2)] == [1, 1]
    await first.host.stop()
    second = await harness(data_dir=data, llm=FakeLLM(default="The fog is thick."), bot={"answer_bots": True})
    assert [len(await bot_says(second)) for _ in range(2)] == [1, 0]


async def test_a_sibling_persona_of_this_host_counts_as_a_bot_without_the_platform_flag(harness):
    h = await harness(llm=FakeLLM(default="The fog is thick tonight."))
    h.host.own_accounts.add("fake:sibling-bot")  # another bot of this host, on the same platform
    assert await h.ask("keeper, fog?", chat=CHAT, user="sibling-bot", mention=True) == []


async def test_a_bot_with_an_operator_role_may_run_commands(harness):
    h = await harness(roles={"operators": ["fake:opsbot"]})
    [pong] = await bot_says(h, "/ping", user="opsbot")
    assert pong.text == "pong"


async def test_the_guard_counts_per_chat_and_cools_down_on_the_clock():
    now = [1000.0]
    guard = LoopGuard(None, "b", budget=1, cooldown_s=60, clock=lambda: now[0])
    assert await guard.bot_turn("a") and await guard.bot_turn("b")
    assert not await guard.bot_turn("a") and guard.stops == 1
    now[0] += 59
    assert not await guard.bot_turn("a")
    now[0] += 2
    assert await guard.bot_turn("a")  # the cool-down is over: a new budget
