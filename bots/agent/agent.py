"""The agent: answers an addressed message in the persona's voice, with memory and retrieval."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from weakref import WeakValueDictionary

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, BaseMessageChunk
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from bots.agent.character import strip_disclaimers
from bots.agent.citations import check_quotes, quotations, quote_open, sources_note
from bots.agent.guard import LeakGuard
from bots.agent.memory import ConversationMemory, Turn
from bots.agent.persona import Persona
from bots.agent.prompt import build_messages, fact_passages, system_text
from bots.agent.retrieval import NoRetrieval, Passage, Retriever
from bots.agent.tokens import count_message_tokens, estimate_tokens
from bots.core.events import ChannelKind
from bots.core.routing import Invocation

log = logging.getLogger("bots.agent")

# The end of a sentence in a stream: CJK or Latin terminators (with closing quotes), or a newline.
_SENTENCE_END = re.compile(r"(?:[。！？!?…]+[”」』\"')]*|\.(?=\s)|\n)\s*")


def _worth_retrying(exc: BaseException) -> bool:
    """Timeouts, connection errors and 5xx/429 are worth a retry; bad requests are not."""
    if not isinstance(exc, Exception):  # cancellation (the host stopping) is never retried
        return False
    if isinstance(exc, ValueError | TypeError):  # e.g. a prompt longer than the context window
        return False
    status = getattr(exc, "status_code", None)
    return not (isinstance(status, int) and 400 <= status < 500 and status not in (408, 429))


class Agent:
    def __init__(
        self,
        *,
        bot: str,
        persona: Persona,
        llm: BaseChatModel,
        memory: ConversationMemory,
        retriever: Retriever | None = None,
        collections: list[str] | None = None,
        history_tokens: int = 768,
        prompt_tokens: int | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 1,
        protected_ids: list[str] | None = None,
        on_tokens: Callable[[str, int], None] | None = None,
    ) -> None:
        self.bot = bot
        self.persona = persona
        self.llm = llm
        self.memory = memory
        self.retriever = retriever or NoRetrieval()
        self.collections = persona.knowledge if collections is None else collections
        self.history_tokens = history_tokens
        self.prompt_tokens = prompt_tokens  # context window minus room for the answer
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._locks: WeakValueDictionary[str, asyncio.Lock] = WeakValueDictionary()
        self._protected_ids = protected_ids or []
        self.guard = LeakGuard(system_text(persona, []), self._protected_ids)
        self.on_tokens = on_tokens  # (user, tokens): charges daily token quotas

    def use_persona(self, persona: Persona, collections: list[str] | None = None) -> None:
        """Speak as ``persona`` from the next message on (an operator's ``/persona use``)."""
        self.persona = persona
        if collections is not None:
            self.collections = collections
        self.guard = LeakGuard(system_text(persona, []), self._protected_ids)

    def _lock(self, session_id: str) -> asyncio.Lock:
        """One turn at a time per session, so memory stays in order."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def _passages(self, inv: Invocation, history: list[Turn]) -> list[Passage]:
        if not self.collections:
            return []
        query = inv.text
        if estimate_tokens(query) < 6:  # "why?", "and then?": the previous question gives context
            previous = next((t.content for t in reversed(history) if t.role == "human"), "")
            query = f"{previous}\n{query}".strip()
        try:
            return await self.retriever.retrieve(query, self.collections)
        except Exception:
            log.exception("event %s: retrieval failed; answering without passages", inv.event.id)
            return []

    async def _prompt(self, inv: Invocation) -> tuple[list[BaseMessage], list[Passage]]:
        history = await self.memory.recent(inv.event.session_id)
        passages = await self._passages(inv, history)
        messages = build_messages(
            self.persona,
            history,
            inv.text,
            inv.event.author.display,
            group=inv.event.channel.kind is not ChannelKind.DM,
            history_tokens=self.history_tokens,
            prompt_tokens=self.prompt_tokens,
            passages=passages,
        )
        return messages, passages

    async def _checked(self, inv: Invocation, text: str) -> str:
        """Drop canned disclaimers; never echo the system prompt or protected ids; flag or remove
        quotations the corpus does not hold."""
        text = strip_disclaimers(text)
        if self.guard.leaks(text):
            log.warning("event %s: a reply that leaked the system prompt or an id was replaced", inv.event.id)
            return self.persona.refusal_text
        if not self.collections or not quotations(text):
            return text

        async def verify(quote: str) -> bool:
            return await self.retriever.verify_quote(quote, self.collections)

        mode, lang = self.persona.quote_check, self.persona.lang_key
        return await check_quotes(text, verify, mode=mode, lang=lang, exempt=inv.text)

    def _sources(self, answer: str, passages: list[Passage]) -> str:
        facts = fact_passages(passages)
        if not self.persona.citations or not facts:
            return ""
        return sources_note(answer, facts, self.persona.lang_key)

    async def _remember(self, inv: Invocation, answer: str) -> None:
        author = inv.event.author
        await self.memory.add_exchange(
            inv.event.session_id, author.canonical, author.display, inv.text, answer
        )

    async def respond(self, inv: Invocation) -> str:
        async with self._lock(inv.event.session_id):
            try:
                messages, passages = await self._prompt(inv)
                answer = (await self._checked(inv, await self._invoke(messages))).strip()
            except Exception as exc:
                log.error("event %s: no answer: %s: %s", inv.event.id, type(exc).__name__, exc)
                return self.persona.apology_text
            self._charge(inv, messages, answer)
            if not answer:
                log.warning("event %s: the model gave no usable answer", inv.event.id)
                return self.persona.apology_text
            await self._remember(inv, answer)
            return answer + self._sources(answer, passages)

    def _charge(self, inv: Invocation, messages: list[BaseMessage], answer: str) -> None:
        if self.on_tokens is not None:
            spent = count_message_tokens(messages) + estimate_tokens(answer)
            self.on_tokens(inv.event.author.canonical, spent)

    async def _invoke(self, messages: list[BaseMessage]) -> str:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + self.max_retries),
            wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception(_worth_retrying),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with asyncio.timeout(self.timeout_s):
                    result = await self.llm.ainvoke(messages)
        return str(result.content)

    async def stream(self, inv: Invocation) -> AsyncIterator[str]:
        """Yield the answer sentence by sentence, each checked for breaking character.

        The timeout covers waiting for the model only, never the time the consumer takes.
        """
        async with self._lock(inv.event.session_id):
            parts: list[str] = []
            passages: list[Passage] = []
            try:
                messages, passages = await self._prompt(inv)
                deadline = asyncio.get_running_loop().time() + self.timeout_s
                sentences = _sentences(self.llm.astream(messages))
                held = ""  # a quotation is checked whole, so sentences wait for its end
                try:
                    while True:
                        async with asyncio.timeout_at(deadline):
                            sentence = await anext(sentences, None)
                        if sentence is not None:
                            held += sentence
                            if quote_open(held):
                                continue
                        clean = await self._checked(inv, held) if held else ""
                        held = ""
                        if clean.strip():
                            parts.append(clean)
                            yield clean
                        if sentence is None:
                            break
                finally:
                    await sentences.aclose()
            except Exception as exc:
                log.error("event %s: no answer: %s: %s", inv.event.id, type(exc).__name__, exc)
                if not parts:
                    yield self.persona.apology_text
                return
            answer = "".join(parts).strip()
            self._charge(inv, messages, answer)
            if not answer:
                yield self.persona.apology_text
                return
            await self._remember(inv, answer)
            sources = self._sources(answer, passages)
            if sources:
                yield sources


async def _sentences(chunks: AsyncIterator[BaseMessageChunk]) -> AsyncIterator[str]:
    buffer = ""
    async for chunk in chunks:
        buffer += str(chunk.content)
        cut = 0
        for match in _SENTENCE_END.finditer(buffer):
            cut = match.end()
        if cut:
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer
