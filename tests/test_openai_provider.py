"""The openai provider against a local OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from bots.agent.providers import build_llm
from bots.core.config import ConfigError, LLMConfig, Secrets
from bots.core.gate import check
from bots.testing.openai_stub import OpenAIStub, prose_answer

ANSWER = "Fog horn twice, long then short."


@pytest.fixture
async def chat_server():
    async with OpenAIStub(latency=(0.0, 0.0), answer=lambda _question: ANSWER) as server:
        yield server


async def test_openai_compatible_endpoint_through_the_pipeline(harness, chat_server, monkeypatch):
    monkeypatch.setenv("LOCAL_LLM_KEY", "sk-test-123")
    config = LLMConfig(
        provider="openai", model="qwen-test", base_url=chat_server.base_url, api_key_env="LOCAL_LLM_KEY"
    )
    llm = build_llm(config, Secrets())
    h = await harness(llm=llm)
    assert [o.text for o in await h.ask("How does the fog horn sound?")] == [ANSWER]
    [request] = chat_server.requests
    assert request["auth"] == "Bearer sk-test-123"
    assert request["body"]["model"] == "qwen-test"
    roles = [m["role"] for m in request["body"]["messages"]]
    assert roles[0] == "system" and roles[-1] == "user"


async def test_openai_server_errors_end_in_an_apology(harness, chat_server):
    chat_server.fail = 5
    config = LLMConfig(provider="openai", model="m", base_url=chat_server.base_url, max_retries=1)
    h = await harness(llm=build_llm(config, Secrets()), llm_settings={"max_retries": 1})
    [reply] = await h.ask("hello?")
    assert reply.text == h.host.bots["testbot"].pipeline.responder.persona.apology_text
    assert chat_server.count == 2  # first try and one retry, no more


def test_openai_provider_config_errors():
    with pytest.raises(ConfigError, match="needs a model name"):
        build_llm(LLMConfig(provider="openai"), Secrets())
    with pytest.raises(ConfigError, match="NO_KEY_HERE"):
        build_llm(LLMConfig(provider="openai", model="m", api_key_env="NO_KEY_HERE"), Secrets())
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        build_llm(LLMConfig(provider="nope"), Secrets())


async def test_the_stub_streams_the_same_answer():
    async with OpenAIStub(latency=(0.0, 0.01), seed=3) as server:
        llm = build_llm(LLMConfig(provider="openai", model="m", base_url=server.base_url), Secrets())
        whole = (await llm.ainvoke([HumanMessage("How tall is the tower?")])).content
        pieces = [chunk.content async for chunk in llm.astream([HumanMessage("How tall is the tower?")])]
    assert len(pieces) > 3 and "".join(pieces) == whole  # answers depend on the question only
    assert [r["body"].get("stream", False) for r in server.requests] == [False, True]


def test_the_stubs_answers_pass_the_quality_gate():
    for n in range(50):
        assert check(prose_answer(f"What about the lamp, visit {n}?"), language="en").ok
    long = prose_answer("Tell me everything.", min_chars=5000)
    assert len(long) >= 5000 and check(long, language="en", max_chars=10_000).ok
