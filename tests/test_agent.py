"""Agent core: memory across restarts, sessions, token budget, provider failures, character."""

from __future__ import annotations

import asyncio
import logging

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from bots.agent.character import strip_disclaimers
from bots.agent.persona import ExampleDialogue, Persona
from bots.agent.tokens import count_message_tokens, estimate_tokens
from bots.core.events import Outbound
from bots.testing import FakeAdapter, FakeLLM
from bots.testing.harness import TEST_PERSONA


def _texts(messages) -> list[str]:
    return [str(m.content) for m in messages]


async def test_memory_survives_a_host_restart(harness, tmp_path):
    data_dir = tmp_path / "state"
    first = await harness(data_dir=data_dir, llm=FakeLLM(default="Nice to meet you, Ada."))
    await first.ask("My name is Ada.")
    await first.host.stop()

    second = await harness(data_dir=data_dir, llm=FakeLLM(default="You are Ada."))
    await second.ask("What is my name?")
    prompt = second.llm.last_prompt
    assert _texts(prompt[-3:]) == ["My name is Ada.", "Nice to meet you, Ada.", "What is my name?"]
    assert isinstance(prompt[-2], AIMessage)


async def test_group_memory_is_shared_and_names_speakers(harness):
    h = await harness(llm=FakeLLM(default="noted"))
    await h.ask("I like tea", chat="g1", user="alice", mention=True)
    await h.ask("I like coffee", chat="g1", user="bob", mention=True)
    texts = _texts(h.llm.last_prompt)
    assert "[alice] I like tea" in texts and texts[-1] == "[bob] I like coffee"
    await h.ask("hello", user="alice")  # a DM is its own session
    assert "[alice] I like tea" not in _texts(h.llm.last_prompt)


async def test_group_memory_per_member_when_configured(harness):
    h = await harness(memory={"group_scope": "user"})
    await h.ask("secret plan A", chat="g1", user="alice", mention=True)
    await h.ask("hi", chat="g1", user="bob", mention=True)
    assert not any("secret plan A" in t for t in _texts(h.llm.last_prompt))


async def test_history_is_trimmed_to_the_token_budget(harness):
    answer = "a reply that says something about each of these twelve messages in turn"
    h = await harness(memory={"history_tokens": 120}, llm=FakeLLM(default=answer))
    for i in range(12):
        await h.ask(f"message {i} " + "word " * 20)
    prompt = h.llm.last_prompt
    history = prompt[1:-1]  # between the system prompt and the new message
    assert 0 < count_message_tokens(history) <= 120
    assert isinstance(history[0], HumanMessage)  # never starts mid-exchange
    assert history[-1].content.startswith("a reply") and "message 10" in history[-2].content


def test_token_estimate_counts_cjk_characters():
    assert estimate_tokens("石屿的雾多在春末") == 12
    assert estimate_tokens("the fog comes in") == 4


async def test_provider_failure_gives_an_in_character_apology(harness, caplog):
    persona = TEST_PERSONA.model_copy(update={"apology": "The lamp flickers; ask me again."})
    llm = FakeLLM().queue(RuntimeError("upstream 500"), RuntimeError("upstream 500 again"))
    h = await harness(persona=persona, llm=llm)
    caplog.set_level(logging.ERROR)
    replies = await h.ask("hello?")
    assert [o.text for o in replies] == ["The lamp flickers; ask me again."]
    assert "no answer: RuntimeError: upstream 500" in caplog.text
    assert len(llm.prompts) == 2  # one retry (llm.max_retries = 1)
    assert [o.text for o in await h.ask("still there?")] == ["ok"]  # the host carries on
    # a failed turn is not remembered as if it had been answered
    assert "hello?" not in _texts(llm.last_prompt)


async def test_a_retry_recovers_from_one_failure(harness):
    llm = FakeLLM().queue(ConnectionError("reset"), "recovered")
    h = await harness(llm=llm)
    assert [o.text for o in await h.ask("hi")] == ["recovered"]


async def test_provider_timeout(harness):
    h = await harness(llm=FakeLLM(delay_s=1.0), llm_settings={"timeout_s": 0.05, "max_retries": 0})
    assert [o.text for o in await h.ask("hi")] == [TEST_PERSONA.apology_text]


async def test_streaming_provider_failure_apologises(harness):
    from bots.testing import FakeAdapter

    failing = FakeLLM().queue(RuntimeError("down"), RuntimeError("still down"))  # the retry fails too
    h = await harness(adapter=FakeAdapter(streaming=True), llm=failing)
    assert [o.text for o in await h.ask("hi")] == [TEST_PERSONA.apology_text]


async def test_prompt_holds_persona_style_examples_and_rules(harness):
    persona = Persona(
        name="Old Wen",
        system_prompt="You are Old Wen, a lighthouse keeper.",
        style=["Short sentences."],
        examples=[ExampleDialogue(user="Who are you?", persona="I kept the light.")],
    )
    h = await harness(persona=persona)
    await h.ask("hello")
    system, *rest = h.llm.last_prompt
    assert isinstance(system, SystemMessage)
    assert "You are Old Wen" in system.content and "- Short sentences." in system.content
    assert "Never call yourself an AI" in system.content
    assert _texts(rest) == ["Who are you?", "I kept the light.", "hello"]


async def test_the_fixed_prompt_is_built_once_per_persona_version(harness):
    persona = Persona(
        name="Old Wen",
        system_prompt="You are Old Wen.",
        examples=[ExampleDialogue(user="Who are you?", persona="I kept the light.")],
    )
    h = await harness(persona=persona)
    await h.ask("hello")
    await h.ask("again", user="other")
    await h.ask("and again", user="other")
    await h.ask("once more", user="other")
    first, second, third, fourth = h.llm.prompts
    assert first[0] is second[0] and first[1] is second[1] and first[2] is second[2]  # not rebuilt
    assert _texts(third[3:5]) == _texts(fourth[3:5]) == ["again", "ok"]
    assert third[3] is fourth[3] and third[4] is fourth[4]  # remembered turns neither
    h.host.bots["testbot"].pipeline.responder.use_persona(persona.model_copy(update={"name": "Young Wen"}))
    await h.ask("and now?")
    assert "Young Wen" in h.llm.last_prompt[0].content and h.llm.last_prompt[0] is not first[0]


def test_disclaimers_are_removed_in_english_and_chinese():
    assert strip_disclaimers("As an AI language model, I cannot feel. The sea is calm.") == "The sea is calm."
    assert strip_disclaimers("I'm just an AI! But the light is on.") == "But the light is on."
    assert strip_disclaimers("作为一个人工智能，我没有感情。海上起雾了。") == "海上起雾了。"
    assert strip_disclaimers("我是一个AI语言模型。") == ""
    untouched = "The AI of the harbour office sent a fax. I am an old keeper."
    assert strip_disclaimers(untouched) == untouched


async def test_only_disclaimer_falls_back_to_the_apology(harness):
    h = await harness(llm=FakeLLM(default="As an AI language model I cannot answer that."))
    assert [o.text for o in await h.ask("hi")] == [TEST_PERSONA.apology_text]


async def test_bad_requests_are_not_retried(harness):
    llm = FakeLLM().queue(ValueError("Requested tokens exceed context window"), "never reached")
    h = await harness(llm=llm, llm_settings={"max_retries": 3})
    assert [o.text for o in await h.ask("hi")] == [TEST_PERSONA.apology_text]
    assert len(llm.prompts) == 1


async def test_long_input_and_history_fit_the_context_window(harness):
    h = await harness(
        llm_settings={"context_tokens": 600, "max_tokens": 100}, memory={"history_tokens": 5000}
    )
    for _ in range(3):
        await h.ask("风" * 300)
    await h.ask("石屿的雾" * 500)
    assert count_message_tokens(h.llm.last_prompt) <= 500
    assert h.llm.last_prompt[-1].content.startswith("石屿的雾")


class SlowConsumer(FakeAdapter):
    """A streaming channel that takes its time with every sentence (like message edits)."""

    async def send_stream(self, target, chunks, reply_to=None):
        parts = []
        async for chunk in chunks:
            parts.append(chunk)
            await asyncio.sleep(0.1)  # longer, in total, than the model timeout below
        return await self.send(Outbound(target, "".join(parts), reply_to=reply_to))


async def test_stream_timeout_counts_model_time_only(harness):
    slow = SlowConsumer(streaming=True)
    h = await harness(
        adapter=slow, llm=FakeLLM(default="One. Two. Three. Four."), llm_settings={"timeout_s": 0.25}
    )
    assert [o.text for o in await h.ask("count for me")] == ["One. Two. Three. Four."]
    replies = await asyncio.wait_for(h.ask("again"), 5)  # the session lock was released
    assert len(replies) == 1
