"""Fakes for unit tests: an LLM with queued answers and an adapter you push messages into."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from bots.core.adapter import Capabilities, EventSink
from bots.core.events import (
    ChannelKind,
    ChannelRef,
    Mention,
    MessageEvent,
    Outbound,
    ReplyTo,
    SentRef,
    UserRef,
)


class FakeLLM(BaseChatModel):
    """Answers from a queue (strings, or exceptions to raise), then ``default``; records prompts."""

    responses: list[Any] = Field(default_factory=list)
    default: str = "ok"
    delay_s: float = 0.0
    prompts: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "fake"

    def queue(self, *answers: str | BaseException) -> FakeLLM:
        self.responses.extend(answers)
        return self

    @property
    def last_prompt(self) -> list[BaseMessage]:
        return self.prompts[-1]

    def _next(self, messages: list[BaseMessage]) -> str:
        self.prompts.append(list(messages))
        answer = self.responses.pop(0) if self.responses else self.default
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._next(messages)))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self._generate(messages)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for word in self._next(messages).split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._stream(messages):
            yield chunk


class FakeAdapter:
    """An in-memory channel: ``await push(...)`` a message in, ``await next_sent()`` what came out."""

    platform = "fake"

    def __init__(
        self,
        name: str = "fake",
        *,
        max_length: int | None = None,
        streaming: bool = False,
        self_id: str = "bot",
        self_name: str = "Bot",
    ) -> None:
        self.name = name
        self.capabilities = Capabilities(max_length=max_length, streaming=streaming)
        self.self_id = self_id
        self.self_name = self_name
        self.sent: list[Outbound] = []
        self.typing_calls: list[ChannelRef] = []
        self.fail_sends: list[BaseException] = []  # raised by the next send() calls, in order
        self._outbox: asyncio.Queue[Outbound] = asyncio.Queue()
        self._sink: EventSink | None = None
        self._ids = itertools.count(1)
        # message ids differ between adapter instances, as a platform's do across restarts
        self._run = uuid.uuid4().hex[:6]
        self.started = False

    async def start(self, sink: EventSink) -> None:
        self._sink = sink
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def event(
        self,
        text: str,
        *,
        user: str = "u1",
        user_name: str | None = None,
        chat: str | None = None,
        kind: ChannelKind | None = None,
        mention: bool = False,
        reply_to_bot: bool = False,
        message_id: str | None = None,
        is_bot: bool = False,
    ) -> MessageEvent:
        """Build an event: a DM from ``user`` unless ``chat`` names a group (``is_bot``: the
        platform flags the author as a bot)."""
        if chat is None:
            channel = ChannelRef(self.platform, f"dm-{user}", ChannelKind.DM)
        else:
            channel = ChannelRef(self.platform, chat, kind or ChannelKind.GROUP)
        segments: list[Mention | ReplyTo] = []
        if mention:
            segments.append(Mention(self.self_id, self.self_name))
            text = f"@{self.self_name} {text}"
        if reply_to_bot:
            segments.append(ReplyTo("earlier", author_id=self.self_id))
        return MessageEvent(
            platform=self.platform,
            message_id=message_id or f"m{next(self._ids)}-{self._run}",
            author=UserRef(self.platform, user, name=user_name or user, is_bot=is_bot),
            channel=channel,
            text=text,
            self_id=self.self_id,
            self_name=self.self_name,
            segments=tuple(segments),
        )

    async def push(self, text: str | MessageEvent, **kwargs: Any) -> MessageEvent:
        if self._sink is None:
            raise RuntimeError("the adapter is not started; start the host first")
        event = text if isinstance(text, MessageEvent) else self.event(text, **kwargs)
        await self._sink(event)
        return event

    async def send(self, outbound: Outbound) -> SentRef:
        if not self.started:
            raise RuntimeError(f"channel {self.name} is stopped; cannot send")
        if self.fail_sends:
            raise self.fail_sends.pop(0)
        self.sent.append(outbound)
        self._outbox.put_nowait(outbound)
        return SentRef(self.platform, outbound.target.id, f"s{next(self._ids)}")

    async def typing(self, channel: ChannelRef) -> None:
        self.typing_calls.append(channel)

    async def send_stream(
        self, target: ChannelRef, chunks: AsyncIterator[str], reply_to: str | None = None
    ) -> SentRef:
        text = "".join([chunk async for chunk in chunks])
        return await self.send(Outbound(target, text, reply_to=reply_to))

    async def next_sent(self, timeout: float = 5.0) -> Outbound:
        return await asyncio.wait_for(self._outbox.get(), timeout)

    def take_sent(self) -> list[Outbound]:
        """Everything sent and not yet taken by :meth:`next_sent`."""
        items = []
        while not self._outbox.empty():
            items.append(self._outbox.get_nowait())
        return items
