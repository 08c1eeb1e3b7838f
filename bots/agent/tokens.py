"""A cheap, CJK-aware token estimate used to fit history into the prompt budget."""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage

from bots.core.budget import longest_prefix

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
PER_MESSAGE = 4  # role markers and separators of a chat template


def estimate_tokens(text: str) -> int:
    """A cautious estimate: CJK characters 1.5 tokens each (0.7 in Qwen's vocabulary, 1.7 in
    SmolLM2's), other text about four characters a token."""
    cjk = len(_CJK.findall(text))
    return (3 * cjk + 1) // 2 + (len(text) - cjk + 3) // 4


def truncate_to_tokens(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose estimate fits ``budget``."""
    return longest_prefix(text, budget, estimate_tokens)


def count_message_tokens(messages: Sequence[BaseMessage]) -> int:
    return sum(PER_MESSAGE + estimate_tokens(str(m.content)) for m in messages)
