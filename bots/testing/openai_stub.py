"""A small OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks.

It answers ``POST /v1/chat/completions`` (plain JSON, or server-sent events with ``"stream": true``)
after a latency that varies per request, with English prose that passes the quality gate
(:func:`bots.core.gate.check`). The answer depends only on the last user message, so a question
asked again (a replay after a crash) gets the same words::

    async with OpenAIStub(latency=(0.1, 0.3), seed=1) as llm:
        config = LLMConfig(provider="openai", model="stub", base_url=llm.base_url)
        ...
        assert llm.count == 1

``latency`` is a ``(low, high)`` range drawn from a seeded random generator, or a callable that gets
the request's number (0, 1, ...) and body and returns seconds. :attr:`~OpenAIStub.requests` records
every request (its ``Authorization`` header and JSON body), :attr:`~OpenAIStub.answers` every answer
(with the user message it answered); :attr:`~OpenAIStub.fail` answers the
next N requests with 503. ``answer_chars`` makes each answer at least that long (several sentences),
for replies that must be split into parts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
Latency = tuple[float, float] | Callable[[int, JSON], float]

_SUBJECTS = [
    "The old keeper", "A patient sailor", "The ferry captain", "My neighbour", "The harbour master",
    "A curious child", "The village baker", "An elderly fisherman", "The painter", "A quiet stranger",
]  # fmt: skip
_VERBS = [
    "watched", "mended", "painted", "carried", "greeted", "followed", "counted", "cleaned",
    "remembered", "described", "measured", "guarded", "visited", "noticed", "repaired", "polished",
]  # fmt: skip
_OBJECTS = [
    "the brass lamp", "a torn sail", "the narrow pier", "the grey gulls", "a wooden ladder",
    "the salty nets", "an empty boat", "the tide tables", "a faded map", "the lighthouse bell",
]  # fmt: skip
_PLACES = [
    "near the harbour", "on the cliff", "by the pier", "beside the orchard", "under the lamp",
    "at the window", "across the bay", "behind the village", "along the shore", "below the tower",
]  # fmt: skip
_TIMES = [
    "at dawn", "before supper", "that winter", "every evening", "long ago", "after the storm",
    "on Sundays", "late at night", "in the spring", "by noon",
]  # fmt: skip


def prose_answer(question: str, *, min_chars: int = 0) -> str:
    """Two or more English sentences chosen by a hash of ``question`` (the same question always gets
    the same answer), at least ``min_chars`` long. Passes the quality gate for English."""
    seed = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    sentences: list[str] = []
    while len(sentences) < 2 or sum(len(s) + 1 for s in sentences) < min_chars:
        sentences.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_PLACES)} {rng.choice(_TIMES)}."
        )
    return " ".join(sentences)


def last_user_text(body: JSON) -> str:
    """The content of the last user message of a chat completions request ("" when none)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


class OpenAIStub:
    """An OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        latency: Latency = (0.1, 0.3),
        seed: int = 0,
        answer: Callable[[str], str] | None = None,
        answer_chars: int = 0,
    ) -> None:
        self.latency = latency
        self.answer = answer or (lambda question: prose_answer(question, min_chars=answer_chars))
        self.requests: list[JSON] = []  # {"auth": Authorization header, "body": the JSON body}
        self.answers: dict[str, str] = {}  # answer text -> the last user message it answered
        self.fail = 0  # the next N requests are answered 503
        self.port = 0
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The value for ``[llm] base_url`` (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        """Requests received so far (failed ones too)."""
        return len(self.requests)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIStub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _delay(self, number: int, body: JSON) -> float:
        if callable(self.latency):
            return float(self.latency(number, body))
        low, high = self.latency
        return self._rng.uniform(low, high)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "the body is not JSON"}}, status=400)
        number = len(self.requests)
        self.requests.append({"auth": request.headers.get("Authorization"), "body": body})
        await asyncio.sleep(self._delay(number, body))
        if self.fail > 0:
            self.fail -= 1
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        asked = last_user_text(body)
        text = self.answer(asked)
        self.answers[text] = asked
        common = {"id": f"chatcmpl-{number}", "created": int(time.time()), "model": body.get("model", "")}
        if body.get("stream"):
            return await self._stream(request, common, text)
        return web.json_response(
            {
                **common,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10},
            }
        )

    async def _stream(self, request: web.Request, common: JSON, text: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        words = text.split(" ")
        pieces = [{"role": "assistant", "content": ""}] + [
            {"content": word if i == 0 else " " + word} for i, word in enumerate(words)
        ]
        for delta in pieces:
            chunk = {**common, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}  # fmt: skip
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        last = {**common, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
        await response.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response
