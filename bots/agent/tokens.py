"""A cheap, CJK-aware token estimate used to fit history into the prompt budget."""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
PER_MESSAGE = 4  # role markers and separators of a chat template


def estimate_tokens(text: str) -> int:
    """CJK characters count about one token each; other text about four characters a token."""
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4


def count_message_tokens(messages: Sequence[BaseMessage]) -> int:
    return sum(PER_MESSAGE + estimate_tokens(str(m.content)) for m in messages)
