"""LLM providers: langchain chat models built from config, found through the ``bots.llm`` group."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from langchain_core.language_models import BaseChatModel

from bots.core.config import ConfigError, LLMConfig, Secrets

ENTRY_POINT_GROUP = "bots.llm"
ProviderFactory = Callable[[LLMConfig, Secrets], BaseChatModel]


def provider_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def build_llm(config: LLMConfig, secrets: Secrets) -> BaseChatModel:
    matches = entry_points(group=ENTRY_POINT_GROUP, name=config.provider)
    if not matches:
        known = ", ".join(provider_names())
        raise ConfigError(f"llm.provider: unknown provider {config.provider!r} (known: {known})")
    factory: ProviderFactory = next(iter(matches)).load()
    return factory(config, secrets)
