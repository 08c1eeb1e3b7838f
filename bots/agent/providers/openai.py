"""Any OpenAI-compatible chat endpoint: OpenAI, DeepSeek, Qwen, vLLM, Ollama, llama.cpp server."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from bots.core.config import ConfigError, LLMConfig, Secrets


def build_openai_llm(config: LLMConfig, secrets: Secrets) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    if not config.model:
        raise ConfigError("llm.model: the openai provider needs a model name (e.g. 'gpt-4o-mini')")
    api_key = secrets.get(config.api_key_env)
    if api_key is None and config.base_url is None:
        raise ConfigError(f"llm: the openai provider needs {config.api_key_env} in the environment or .env")
    return ChatOpenAI(
        model=config.model,
        base_url=config.base_url,
        api_key=api_key or "not-needed",  # local servers (Ollama, vLLM) accept any key
        temperature=config.temperature,
        max_completion_tokens=config.max_tokens,
        timeout=config.timeout_s,
        max_retries=0,  # the agent retries, with backoff, for every provider alike
    )
