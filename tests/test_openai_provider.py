"""The openai provider against a local OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web

from bots.agent.providers import build_llm
from bots.core.config import ConfigError, LLMConfig, Secrets


@pytest.fixture
async def chat_server():
    state = {"requests": [], "fail": 0}

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        state["requests"].append({"auth": request.headers.get("Authorization"), "body": body})
        if state["fail"]:
            state["fail"] -= 1
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Fog horn twice, long then short."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
        }
        return web.Response(text=json.dumps(answer), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state["base_url"] = f"http://127.0.0.1:{port}/v1"
    yield state
    await runner.cleanup()


async def test_openai_compatible_endpoint_through_the_pipeline(harness, chat_server, monkeypatch):
    monkeypatch.setenv("LOCAL_LLM_KEY", "sk-test-123")
    config = LLMConfig(
        provider="openai", model="qwen-test", base_url=chat_server["base_url"], api_key_env="LOCAL_LLM_KEY"
    )
    llm = build_llm(config, Secrets())
    h = await harness(llm=llm)
    assert [o.text for o in await h.ask("How does the fog horn sound?")] == [
        "Fog horn twice, long then short."
    ]
    [request] = chat_server["requests"]
    assert request["auth"] == "Bearer sk-test-123"
    assert request["body"]["model"] == "qwen-test"
    roles = [m["role"] for m in request["body"]["messages"]]
    assert roles[0] == "system" and roles[-1] == "user"


async def test_openai_server_errors_end_in_an_apology(harness, chat_server):
    chat_server["fail"] = 5
    config = LLMConfig(provider="openai", model="m", base_url=chat_server["base_url"], max_retries=1)
    h = await harness(llm=build_llm(config, Secrets()), llm_settings={"max_retries": 1})
    [reply] = await h.ask("hello?")
    assert reply.text == h.host.bots["testbot"].pipeline.responder.persona.apology_text
    assert len(chat_server["requests"]) == 2  # first try and one retry, no more


def test_openai_provider_config_errors():
    with pytest.raises(ConfigError, match="needs a model name"):
        build_llm(LLMConfig(provider="openai"), Secrets())
    with pytest.raises(ConfigError, match="NO_KEY_HERE"):
        build_llm(LLMConfig(provider="openai", model="m", api_key_env="NO_KEY_HERE"), Secrets())
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        build_llm(LLMConfig(provider="nope"), Secrets())
