"""A cheap, CJK-aware token estimate used to fit history into the prompt budget."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from bots.core.budget import longest_prefix

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
Counter = Callable[[str], int]
PER_MESSAGE = 8  # role markers and separators of a chat template


def estimate_tokens(text: str) -> int:
    """A cautious estimate: CJK characters 1.5 tokens each (0.7 in Qwen's vocabulary, 1.7 in
    SmolLM2's), other text about four characters a token."""
    cjk = 0 if text.isascii() else len(_CJK.findall(text))
    return (3 * cjk + 1) // 2 + (len(text) - cjk + 3) // 4


def truncate_to_tokens(text: str, budget: int, count: Counter = estimate_tokens) -> str:
    """The longest prefix of ``text`` that costs at most ``budget`` tokens."""
    return longest_prefix(text, budget, count)


def count_message_tokens(messages: Sequence[BaseMessage], count: Counter = estimate_tokens) -> int:
    return sum(PER_MESSAGE + count(str(m.content)) for m in messages)


def token_counter(llm: Any) -> Counter:
    """The model's own tokenizer when it offers one (``count_tokens``: the local llama.cpp model),
    else the cautious estimate."""
    exact = getattr(llm, "count_tokens", None)
    return exact if callable(exact) else estimate_tokens
