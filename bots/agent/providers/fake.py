"""The ``fake`` provider: a canned answer, for smoke tests and demos without a model."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from bots.core.config import LLMConfig, Secrets


def build_fake_llm(config: LLMConfig, secrets: Secrets) -> BaseChatModel:
    """Always answers ``llm.model`` (default "ok"). Tests use ``bots.testing.FakeLLM`` instead."""
    return FakeListChatModel(responses=[config.model or "ok"])
