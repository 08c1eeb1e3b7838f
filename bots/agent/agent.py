"""The agent: answers an addressed message in the persona's voice, with memory and retrieval."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from weakref import WeakValueDictionary

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from bots.agent.character import strip_disclaimers
from bots.agent.citations import cited, sources_note, unverified_quotes, without_quotes
from bots.agent.compose import compose, nearest, split_sentences, support
from bots.agent.guard import LeakGuard
from bots.agent.memory import ConversationMemory, Turn
from bots.agent.modelcall import complete
from bots.agent.persona import Persona
from bots.agent.prompt import CHARACTER_RULES, FixedPrompt, build_messages, fact_passages
from bots.agent.reply import Reply
from bots.agent.retrieval import NoRetrieval, Passage, Retriever
from bots.agent.tokens import count_message_tokens, estimate_tokens, token_counter
from bots.core import gate
from bots.core.events import ChannelKind
from bots.core.gate import GateStats, Verdict, language_of_request
from bots.core.metrics import ModelStats
from bots.core.retry import with_retries
from bots.core.routing import Invocation

log = logging.getLogger("bots.agent")

# Checking an answer this short, without passages, costs less on the event loop (~0.2 ms) than a
# hop to a thread and back; longer answers and prompts with passages are worked on off the loop.
INLINE_ANSWER_CHARS = 300
MIN_SUPPORT = 0.5  # share of a generated answer's sentences that must rest on the passages
CAREFUL_TEMPERATURE = 0.2  # the second try after a failed gate: less adventurous sampling

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
        fluent_languages: list[str] | None = None,
        gate_stats: GateStats | None = None,
        max_answer_chars: int = 4000,
        model_stats: ModelStats | None = None,
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
        self.count_tokens = token_counter(llm)
        self._fixed = FixedPrompt.of(persona, self.count_tokens)  # the prompt's part every turn repeats
        self.guard = LeakGuard(self._fixed.head, self._protected_ids)
        self.on_tokens = on_tokens  # (user, tokens): charges daily token quotas
        self.fluent_languages = fluent_languages  # None: the model writes every language well
        self.gate_stats = gate_stats or GateStats()
        self.max_answer_chars = max_answer_chars
        self.model_stats = model_stats or ModelStats()  # calls (each try) and reported tokens
        self._instructions = _instructions(persona)
        self._careful_llm: tuple[BaseChatModel, Runnable] | None = None

    def use_persona(self, persona: Persona, collections: list[str] | None = None) -> None:
        """Speak as ``persona`` from the next message on (an operator's ``/persona use``)."""
        self.persona = persona
        if collections is not None:
            self.collections = collections
        self._fixed = FixedPrompt.of(persona, self.count_tokens)
        self.guard = LeakGuard(self._fixed.head, self._protected_ids)
        self._instructions = _instructions(persona)

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

    def _messages(self, inv: Invocation, history: list[Turn], passages: list[Passage]) -> list[BaseMessage]:
        voice = [Passage(text, "", kind="style") for text in nearest(inv.text, self.persona.exemplars, 2)]
        return build_messages(
            self._fixed,
            history,
            inv.text,
            inv.event.author.display,
            group=inv.event.channel.kind is not ChannelKind.DM,
            history_tokens=self.history_tokens,
            prompt_tokens=self.prompt_tokens,
            passages=[*passages, *voice],
            count=self.count_tokens,
        )

    def mode_for(self, language: str) -> str:
        """How to answer in ``language``: "generate" (the model only), "compose" (the author's own
        sentences only), "generate-first" (composition when the model's answer fails the gate) or
        "compose-first" (a model weak in the language writes only what composition cannot, such
        as small talk)."""
        mode = self.persona.answer_mode
        if mode != "auto":
            return mode
        weak = self.fluent_languages is not None and language not in self.fluent_languages
        return "compose-first" if weak else "generate-first"

    async def _judge(
        self, inv: Invocation, text: str, language: str, passages: list[Passage]
    ) -> tuple[str, Verdict]:
        """The text after the quote check, and the gate's verdict on it. With passages, most of
        what it says must rest on them."""
        if len(text) <= INLINE_ANSWER_CHARS and not fact_passages(passages):
            verdict = self._check(inv.text, text, language, passages)
        else:
            verdict = await asyncio.to_thread(self._check, inv.text, text, language, passages)
        if not verdict.ok or not self.collections or self.persona.quote_check == "off":
            return text, verdict

        async def verify(quote: str) -> bool:
            return await self.retriever.verify_quote(quote, self.collections)

        unverified = await unverified_quotes(text, verify, exempt=inv.text)
        if unverified and self.persona.quote_check == "remove":
            text = without_quotes(text, unverified)
            return text, verdict if text.strip() else verdict.failed("empty: nothing left without the quotes")
        for quote in unverified:
            verdict = verdict.failed(f"quote: not in the corpus: {quote[:30]!r}")
        return text, verdict

    def _check(self, question: str, text: str, language: str, passages: list[Passage]) -> Verdict:
        """The gate's verdict (CPU work: run in a thread). With passages, most of what the text
        says must rest on them."""
        verdict = gate.check(
            text,
            language=language,
            max_chars=self.max_answer_chars,
            instructions=self._instructions,
            persona_text=f"{self.persona.system_prompt}\n{self.persona.description}",
        )
        facts = fact_passages(passages)
        if verdict.ok and facts:
            backed = support(text, [question, *(p.text for p in facts)])
            if backed < MIN_SUPPORT:  # a small model's confident invention, not the author's view
                verdict = verdict.failed(f"unsupported: {backed:.0%} of its sentences rest on the passages")
        return verdict

    async def _generate(
        self, inv: Invocation, history: list[Turn], passages: list[Passage], language: str
    ) -> tuple[Reply | None, list[Verdict]]:
        """The model's answer if one passes the gate (a second try samples more carefully), and
        the gate's verdicts."""
        verdicts: list[Verdict] = []
        try:
            if passages or self.persona.exemplars:
                messages = await asyncio.to_thread(self._messages, inv, history, passages)
            else:  # the persona and the history alone: bounded by history_tokens, cheap
                messages = self._messages(inv, history, passages)
        except Exception as exc:
            log.error("event %s: no prompt: %s: %s", inv.event.id, type(exc).__name__, exc)
            return None, verdicts
        for attempt in range(2):
            try:
                raw = await self._invoke(messages, self.llm if attempt == 0 else self._careful())
            except Exception as exc:
                log.error("event %s: no answer: %s: %s", inv.event.id, type(exc).__name__, exc)
                break
            self._charge(inv, messages, raw)
            text = strip_disclaimers(raw).strip()
            if self.guard.leaks(text):
                log.warning(
                    "event %s: a reply that leaked the system prompt or an id was replaced", inv.event.id
                )
                self.gate_stats.record("answer", Verdict(("leak: system prompt or id",)), where=inv.event.id)
                return Reply(self.persona.refusal_text, "refusal", language), verdicts
            text, verdict = await self._judge(inv, text, language, passages)
            verdicts.append(verdict)
            self.gate_stats.record("answer", verdict, where=f"event {inv.event.id} try {attempt + 1}")
            if verdict.ok:
                facts = fact_passages(passages)
                sources = [p for _, p in cited(text, facts)] if self.persona.citations else []
                note = sources_note(text, facts, language) if self.persona.citations and facts else ""
                return Reply(text, "generated", language, sources, passages, verdicts, note), verdicts
        return None, verdicts

    async def _compose(self, inv: Invocation, passages: list[Passage], language: str) -> tuple[Reply, bool]:
        """The persona's own sentences for ``inv``, and whether they hold nothing (the honest "I
        have not written about that")."""
        similarity = None
        scorer = getattr(self.retriever, "similarities", None)
        if scorer is not None and passages:
            texts = [s.text for s in split_sentences(fact_passages(passages), self.persona.speaker_labels)]
            scores = await scorer(inv.text, texts) if texts else None
            if scores is not None and len(scores) == len(texts):
                by_text = dict(zip(texts, scores, strict=True))
                similarity = lambda _q, items: [by_text.get(t, 0.0) for t in items]  # noqa: E731
        made = await asyncio.to_thread(
            compose, inv.text, passages, self.persona, language, similarity=similarity
        )
        verdict = await asyncio.to_thread(
            gate.check, made.text, language=language, max_chars=self.max_answer_chars
        )
        self.gate_stats.record("composed", verdict, where=f"event {inv.event.id}")
        if not verdict.ok:  # the author's words fail too (a line of the corpus that gives orders...)
            return self._apology(language, passages, [verdict]), False
        note = sources_note(made.text, made.sources, language) if self.persona.citations else ""
        return Reply(made.text, "composed", language, made.sources, passages, [verdict], note), made.unknown

    def _apology(self, language: str, passages: list[Passage], verdicts: list[Verdict]) -> Reply:
        return Reply(self.persona.apology_text, "apology", language, passages=passages, verdicts=verdicts)

    async def _reply(
        self, inv: Invocation, history: list[Turn], passages: list[Passage], language: str
    ) -> Reply:
        mode = self.mode_for(language)
        if mode == "compose":
            return (await self._compose(inv, passages, language))[0]
        if mode == "compose-first":
            composed, unknown = await self._compose(inv, passages, language)
            if not unknown:
                return composed
            written, verdicts = await self._generate(inv, history, passages, language)
            if written is not None:
                return written
            composed.verdicts[:0] = verdicts
            return composed if self.collections else self._apology(language, passages, verdicts)
        written, verdicts = await self._generate(inv, history, passages, language)
        if written is not None:
            return written
        if mode == "generate":
            return self._apology(language, passages, verdicts)
        composed, unknown = await self._compose(inv, passages, language)
        if unknown and (not verdicts or not self.collections):
            # the model failed (no verdict) or the persona has no writings: nothing honest to compose
            return self._apology(language, passages, verdicts)
        composed.verdicts[:0] = verdicts
        return composed

    async def answer(self, inv: Invocation) -> Reply:
        """The reply to ``inv``: generated and gated, or composed from the persona's own words."""
        async with self._lock(inv.event.session_id):
            language = language_of_request(inv.text, self.persona.language)
            try:
                history = await self._history(inv)
            except Exception as exc:
                log.error("event %s: no history: %s: %s", inv.event.id, type(exc).__name__, exc)
                return Reply(self.persona.apology_text, "apology", language)
            passages = await self._passages(inv, history)
            try:
                reply = await self._reply(inv, history, passages, language)
            except Exception:  # whatever breaks, the user gets the persona's apology, not silence
                log.exception("event %s: no answer", inv.event.id)
                return self._apology(language, passages, [])
            if reply.mode in ("generated", "composed"):
                await self._remember(inv, reply.text)
            return reply

    async def _history(self, inv: Invocation) -> list[Turn]:
        """The conversation the platform sent with the message (OpenAI-style clients), else the
        bot's memory of the session."""
        transcript = inv.event.transcript
        if transcript is not None:
            return [Turn(role, text) for role, text in transcript.turns]
        return await self.memory.recent(inv.event.session_id)

    async def respond(self, inv: Invocation) -> str:
        return (await self.answer(inv)).full

    async def _remember(self, inv: Invocation, answer: str) -> None:
        author = inv.event.author
        await self.memory.add_exchange(
            inv.event.session_id, author.canonical, author.display, inv.text, answer
        )

    def _charge(self, inv: Invocation, messages: list[BaseMessage], answer: str) -> None:
        if self.on_tokens is not None:
            spent = count_message_tokens(messages) + estimate_tokens(answer)
            self.on_tokens(inv.event.author.canonical, spent)

    def _careful(self) -> Runnable:
        """The model with safer sampling, for the second try (bound once per model)."""
        if self._careful_llm is None or self._careful_llm[0] is not self.llm:
            self._careful_llm = (self.llm, self.llm.bind(temperature=CAREFUL_TEMPERATURE))
        return self._careful_llm[1]

    async def _invoke(self, messages: list[BaseMessage], llm: Runnable | None = None) -> str:
        """The model's answer; failures worth it are retried after 0.5, 1, 2... s (8 s at most)."""

        async def call() -> str:
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await complete(llm or self.llm, messages)
            except Exception:
                self.model_stats.record(ok=False)
                raise
            usage = getattr(result, "usage_metadata", None) or {}  # where the provider reports it
            self.model_stats.record(True, usage.get("input_tokens", 0), usage.get("output_tokens", 0))
            return str(result.content)

        return await with_retries(call, tries=1 + self.max_retries, worth_retrying=_worth_retrying)

    async def stream(self, inv: Invocation) -> AsyncIterator[str]:
        """The answer sentence by sentence, then its sources. Everything is checked by the gate
        before the first word leaves, so a stream never starts an answer it has to take back."""
        reply = await self.answer(inv)
        for sentence in _split(reply.text):
            yield sentence
        if reply.sources_note:
            yield reply.sources_note


def _instructions(persona: Persona) -> list[str]:
    """What the prompt tells the model and an answer must not repeat: the platform's rules and the
    persona's style rules (the system prompt itself is the leak guard's: a persona may well say
    what it is about)."""
    return [CHARACTER_RULES.format(name=persona.name), *persona.style]


def _split(text: str) -> list[str]:
    """``text`` cut after each sentence end (the pieces join back to it)."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start:
            pieces.append(text[start : match.end()])
            start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces
