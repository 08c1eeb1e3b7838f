"""The OpenAI-compatible endpoint: the real host serving its web app on 127.0.0.1, driven by the
official ``openai`` client, LangChain's ``ChatOpenAI`` and plain HTTP. The model is the test kit's
FakeLLM: the subject here is the channel, not the model."""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_openai import ChatOpenAI
from sqlalchemy import select

from bots.adapters.openai_compat import ApiKeys, ChatRequest, Conversation, OpenAIChannel, conversation_of
from bots.core.events import Transcript, event_from_dict, event_to_dict
from bots.core.permissions import NOT_ALLOWED
from bots.core.storage import InboxEntry
from bots.plugins import Invocation, Plugin, on_message
from bots.testing.fakes import FakeLLM
from bots.testing.harness import BOT
from bots.web import web_service

ANSWER = "The light turns every ten seconds. Ships count the flashes."


class Witness(Plugin):
    """Sees every message, as any plugin does, and lets it through."""

    name = "witness"
    seen: ClassVar[list[tuple[str, str, str]]] = []

    @on_message(priority=10)
    async def watch(self, inv: Invocation) -> bool:
        Witness.seen.append((inv.event.platform, inv.event.author.canonical, inv.text))
        return False


class Served:
    def __init__(self, harness, service, key: str) -> None:
        self.h, self.service, self.key = harness, service, key
        self.base = f"{service.url}/v1"
        self.clients: list[openai.AsyncOpenAI] = []

    def client(self, key: str | None = None) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.base, api_key=key or self.key, max_retries=0)
        self.clients.append(client)
        return client


@pytest.fixture
async def served(harness):
    made: list[Served] = []

    async def serve(
        *, web: dict | None = None, llm: FakeLLM | None = None, channel: OpenAIChannel | None = None, **config
    ) -> Served:
        Witness.seen = []
        h = await harness(
            adapter=channel or OpenAIChannel("api"),
            llm=llm or FakeLLM(default=ANSWER),
            plugins=["basics", "admin", Witness],
            start=False,
            web={"port": 0, **(web or {})},
            **config,
        )
        service = web_service(h.host, h.config)
        await h.host.start()
        key = await ApiKeys(h.host.db).create("tester")
        made.append(Served(h, service, key))
        return made[-1]

    yield serve
    for s in made:
        for client in s.clients:
            await client.close()


async def test_the_openai_client_gets_the_bots_answer(served):
    s = await served()
    reply = await s.client().chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "How often does the light turn?"}]
    )
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == BOT
    prompt = s.h.llm.last_prompt
    assert "How often does the light turn?" in prompt[-1].content


async def test_streaming_chunks_assemble_the_same_answer(served):
    s = await served()
    stream = await s.client().chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "How often?"}], stream=True
    )
    pieces, finish = [], None
    async for chunk in stream:
        choice = chunk.choices[0]
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
    assert "".join(pieces) == ANSWER
    assert len([p for p in pieces if p]) >= 2  # sentence by sentence, not one lump
    assert finish == "stop"


async def test_langchain_chat_openai_talks_to_the_bot(served):
    s = await served()
    chat = ChatOpenAI(model=BOT, base_url=s.base, api_key=s.key, max_retries=0)
    answer = await chat.ainvoke([HumanMessage("How often does the light turn?")])
    assert answer.content == ANSWER
    streamed = "".join([str(chunk.content) async for chunk in chat.astream("And at night?")])
    assert streamed == ANSWER


async def test_the_requests_earlier_messages_are_the_conversation(served):
    s = await served()
    chat = ChatOpenAI(model=BOT, base_url=s.base, api_key=s.key, max_retries=0)
    await chat.ainvoke(
        [
            HumanMessage("My name is Ada."),
            AIMessage("Welcome, Ada."),
            HumanMessage("What is my name?"),
        ]
    )
    contents = [m.content for m in s.h.llm.last_prompt]
    assert any("My name is Ada." in c for c in contents[:-1])
    assert "Welcome, Ada." in contents
    assert "What is my name?" in contents[-1]
    # a new conversation of the same client does not see Ada (history comes from the request)
    await chat.ainvoke([HumanMessage("Who am I?")])
    assert not any("Ada" in m.content for m in s.h.llm.last_prompt)


class EchoLLM(FakeLLM):
    """Answers with what it was asked (after the speaker tag), a little later."""

    def _next(self, messages):
        self.prompts.append(list(messages))
        return f"You said: {str(messages[-1].content).split('] ', 1)[-1]}."


async def test_concurrent_requests_each_get_their_own_answer(served):
    s = await served(llm=EchoLLM(delay_s=0.05))
    client = s.client()

    async def ask(conversation: int, turn: int) -> tuple[str, str | None]:
        question = f"question {turn} of conversation {conversation}"
        messages = [{"role": "user", "content": f"I am conversation {conversation}"}]
        messages += [{"role": "assistant", "content": "Go on."}, {"role": "user", "content": question}]
        reply = await client.chat.completions.create(model=BOT, messages=messages)
        return question, reply.choices[0].message.content

    answers = await asyncio.gather(*(ask(c, t) for c in range(4) for t in range(3)))
    assert [answer for _, answer in answers] == [f"You said: {question}." for question, _ in answers]


async def test_a_slow_answer_times_out_with_504(served):
    # the answer takes 1 s and the request waits 0.2 s from before the model is asked: always late
    s = await served(llm=FakeLLM(default=ANSWER, delay_s=1), channel=OpenAIChannel("api", timeout_s=0.2))
    with pytest.raises(openai.APIStatusError) as late:
        await s.client().chat.completions.create(model=BOT, messages=[{"role": "user", "content": "hi"}])
    assert late.value.status_code == 504
    stream = await s.client().chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "hello"}], stream=True
    )
    with pytest.raises(openai.APIError, match="did not answer in time"):  # an error event ends it
        _ = [chunk async for chunk in stream]


async def test_a_client_gone_mid_stream_leaves_nothing_behind(served):
    s = await served(llm=FakeLLM(default=ANSWER, delay_s=0.3))
    body = {"model": BOT, "messages": [{"role": "user", "content": "How often?"}], "stream": True}
    headers = {"Authorization": f"Bearer {s.key}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=60) as http,
        http.stream("POST", f"{s.base}/chat/completions", json=body) as response,
    ):
        async for line in response.aiter_lines():
            assert line.startswith("data: ")
            break  # the first chunk (the role), then the client hangs up
    await s.h.host.drain(timeout=60)  # the bot still finishes its turn in that chat ...
    assert (s.h.host.in_flight, s.h.host.order.busy_chats) == (0, 0)
    again = await s.client().chat.completions.create(model=BOT, messages=body["messages"])
    assert again.choices[0].message.content == ANSWER  # ... and the conversation goes on


async def test_models_lists_the_bot(served):
    s = await served()
    models = await s.client().models.list()
    assert [m.id for m in models.data] == [BOT]


async def test_wrong_or_missing_key_is_401(served):
    s = await served()
    with pytest.raises(openai.AuthenticationError) as wrong:
        await s.client("sk-bots-wrong").chat.completions.create(
            model=BOT, messages=[{"role": "user", "content": "hi"}]
        )
    assert wrong.value.status_code == 401
    assert wrong.value.body["code"] == "invalid_api_key"
    async with httpx.AsyncClient() as http:
        bare = await http.post(f"{s.base}/chat/completions", json={"model": BOT, "messages": []})
    assert bare.status_code == 401
    assert set(bare.json()["error"]) == {"message", "type", "code", "param"}
    assert Witness.seen == []  # nothing reached the bot


async def test_unknown_model_is_404_model_not_found(served):
    s = await served()
    with pytest.raises(openai.NotFoundError) as missing:
        await s.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    assert missing.value.body["code"] == "model_not_found"
    assert missing.value.body["param"] == "model"


async def test_paths_and_methods_the_api_lacks_get_openai_shaped_errors(served):
    s = await served()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {s.key}"}) as http:
        missing = await http.post(f"{s.base}/embeddings", json={"model": BOT, "input": "hi"})
        wrong_method = await http.get(f"{s.base}/chat/completions")
        console = await http.get(f"{s.service.url}/console/nowhere")
    assert missing.status_code == 404
    invalid_url = {"message": "Invalid URL (POST /v1/embeddings)", "type": "invalid_request_error"}
    assert missing.json()["error"] == {**invalid_url, "code": None, "param": None}
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert console.status_code == 404 and "error" not in console.json()  # only /v1 speaks OpenAI
    with pytest.raises(openai.NotFoundError, match="Invalid URL"):
        await s.client().embeddings.create(model=BOT, input="hi")


async def test_oversize_malformed_and_invalid_requests(served):
    s = await served(web={"max_body_kb": 4})
    headers = {"Authorization": f"Bearer {s.key}"}
    async with httpx.AsyncClient(headers=headers) as http:
        big = {"model": BOT, "messages": [{"role": "user", "content": "x" * 5000}]}
        too_big = await http.post(f"{s.base}/chat/completions", json=big)
        chunked = await http.post(  # no Content-Length: counted while it is read
            f"{s.base}/chat/completions", content=_kilobytes(6)
        )
        broken = await http.post(f"{s.base}/chat/completions", content=b'{"model": "testbot", "messa')
        nested = await http.post(f"{s.base}/chat/completions", content=b"[" * 3000)
        no_user = await http.post(
            f"{s.base}/chat/completions",
            json={"model": BOT, "messages": [{"role": "assistant", "content": "hello"}]},
        )
        wrong_type = await http.post(f"{s.base}/chat/completions", json={"model": BOT, "messages": "hi"})
    assert (too_big.status_code, too_big.json()["error"]["code"]) == (413, "request_too_large")
    assert chunked.status_code == 413
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert (nested.status_code, nested.json()["error"]["code"]) == (400, "invalid_json")
    assert no_user.status_code == 400 and no_user.json()["error"]["param"] == "messages"
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "messages"
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in (too_big, broken, no_user))
    with pytest.raises(openai.APIStatusError) as sdk:
        await s.client().chat.completions.create(
            model=BOT, messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert sdk.value.status_code == 413
    assert Witness.seen == []


async def test_a_key_over_its_rate_gets_429(served):
    s = await served(web={"key_rate": "2/minute"})
    client = s.client()
    for _ in range(2):
        await client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "hi"}])
    assert limited.value.status_code == 429
    assert limited.value.body["code"] == "rate_limit_exceeded"
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    other = await s.service.app.state.api_keys.create("other")  # limits are per key
    answer = await s.client(other).chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == ANSWER


async def test_plugins_and_the_audit_log_see_api_messages(served):
    s = await served()
    client = s.client()
    await client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "hello there"}])
    refused = await client.chat.completions.create(
        model=BOT, messages=[{"role": "user", "content": "/mute openai:someone"}], user="mallory"
    )
    assert refused.choices[0].message.content == NOT_ALLOWED  # a member, like anyone unknown
    assert [(p, t) for p, _, t in Witness.seen] == [("openai", "hello there")]
    assert Witness.seen[0][1].startswith("openai:tester/c-")
    entries = await s.h.host.audit.recent(5)
    assert [(e.actor, e.command, e.result) for e in entries] == [("openai:tester/mallory", "mute", "refused")]
    pong = await client.chat.completions.create(model=BOT, messages=[{"role": "user", "content": "/ping"}])
    assert pong.choices[0].message.content == "pong"  # commands answer through the API too


async def test_a_revoked_key_is_refused(served):
    s = await served()
    keys = ApiKeys(s.h.host.db, refresh_s=0)
    await keys.revoke("tester")
    s.service.app.state.api_keys.refresh_s = 0
    with pytest.raises(openai.AuthenticationError):
        await s.client().models.list()


async def test_metrics_count_the_hosts_work(served):
    s = await served()
    await s.client().chat.completions.create(model=BOT, messages=[{"role": "user", "content": "hi"}])
    async with httpx.AsyncClient() as http:
        scraped = await http.get(f"{s.service.url}/metrics")
    assert scraped.status_code == 200
    text = scraped.text
    assert f'bots_messages_received_total{{bot="{BOT}",platform="openai"}} 1.0' in text
    assert f'bots_messages_sent_total{{bot="{BOT}",platform="openai"}} 1.0' in text
    assert f'bots_message_handling_seconds_count{{bot="{BOT}"}} 1.0' in text
    assert f'bots_model_calls_total{{bot="{BOT}",outcome="ok"}} 1.0' in text
    assert 'bots_gate_verdicts_total{kind="answer",verdict="passed"} 1.0' in text
    assert "bots_events_in_flight 0.0" in text
    assert "bots_messages_abandoned 0.0" in text


async def _kilobytes(n: int):
    for _ in range(n):
        yield b"x" * 1024


def test_a_transcript_survives_the_inbox_round_trip():
    conversation = Conversation("tester", "and now?", (("human", "first"), ("ai", "answer")), first="first")
    event = OpenAIChannel("api").event(conversation)
    again = event_from_dict(json.loads(json.dumps(event_to_dict(event))))
    assert again.transcript == Transcript((("human", "first"), ("ai", "answer")))
    assert again.channel == event.channel and again.author == event.author


async def test_a_post_into_another_chat_is_not_part_of_the_answer(served):
    s = await served(roles={"operators": ["openai:tester/ops"]})
    reply = await s.client().chat.completions.create(
        model=BOT,
        messages=[{"role": "user", "content": "/say openai:tester/c-elsewhere the fog lifts"}],
        user="ops",
    )
    text = reply.choices[0].message.content
    assert text and text != NOT_ALLOWED
    assert "the fog lifts" not in text  # /say's post went to its own chat, not into this response


def test_a_conversation_is_named_by_its_first_user_message():
    """Front ends (SillyTavern, Open WebUI) open every chat with the character's same greeting:
    conversations that differ after it are different chats, and a conversation keeps its chat."""
    channel, greeting = OpenAIChannel("api"), {"role": "assistant", "content": "Welcome aboard."}

    def chat_of(*said: str) -> str:
        messages = [greeting] + [
            {"role": "user" if n % 2 == 0 else "assistant", "content": text} for n, text in enumerate(said)
        ]
        request = ChatRequest.model_validate({"model": BOT, "messages": messages})
        return channel.event(conversation_of(request, "tester")).channel.id

    assert chat_of("I am Ada.") != chat_of("I am Bob.")
    assert chat_of("I am Ada.", "Hello, Ada.", "And now?") == chat_of("I am Ada.")


async def test_a_request_cut_off_by_a_restart_is_not_answered_into_the_void(harness, tmp_path):
    data = tmp_path / "var"
    asked = Conversation("tester", "Are you there?", (), first="Are you there?")
    slow = FakeLLM(default=ANSWER, delay_s=30)
    first = await harness(data_dir=data, adapter=OpenAIChannel("api"), llm=slow)
    await first.adapter.ask(asked, stream=False)  # accepted; the model is still thinking ...
    first.host.stop_grace_s = 0
    await first.host.stop()  # ... when the process dies, and the client's connection with it
    second = await harness(data_dir=data, adapter=OpenAIChannel("api"), llm=FakeLLM(default=ANSWER))
    await second.drain()
    assert second.llm.prompts == []  # no model call for an answer nobody can receive
    async with second.host.db.session() as session:
        assert list(await session.scalars(select(InboxEntry.state))) == ["done"]
