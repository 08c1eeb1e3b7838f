"""Keeping the persona in character: drop canned "as an AI language model" disclaimers."""

from __future__ import annotations

import re

_DISCLAIMERS = re.compile(
    r"|".join(
        [
            r"\bas an? (?:ai|artificial intelligence)\b",
            r"\bas a (?:large )?language model\b",
            r"\bi(?:'m| am) (?:just |only )?(?:an? )?(?:ai|artificial intelligence|language model"
            r"|chatbot|virtual assistant)\b",
            r"\bi(?:'m| am) not (?:able|capable) to (?:have|form) (?:personal )?(?:opinions|feelings)\b",
            r"\bi do(?:n't| not) have (?:personal )?(?:feelings|emotions|opinions|a body)\b",
            r"作为(?:一[个名])?(?:AI|ai|人工智能)",
            r"作为(?:一[个名])?(?:大型)?语言模型",
            r"我(?:只)?是(?:一[个名])?(?:AI|ai|人工智能|语言模型|聊天机器人|AI助手)",
        ]
    ),
    re.IGNORECASE,
)
# A sentence: up to and including its terminator (CJK or Latin), or the rest of the text.
_SENTENCE = re.compile(r"[^。！？!?.\n]*(?:[。！？!?]+|\.(?=\s|$)|\n+|$)")


def has_disclaimer(text: str) -> bool:
    return bool(_DISCLAIMERS.search(text))


def strip_disclaimers(text: str) -> str:
    """Remove each sentence that breaks character; keep the rest verbatim."""
    if not has_disclaimer(text):
        return text
    kept = [s for s in _SENTENCE.findall(text) if s and not has_disclaimer(s)]
    return "".join(kept).strip()
