"""Helpers for jobs that write posts with a model (digest, column, your own): options checked
with a clear error, data kept inside tagged markers the model is told not to obey, answers
cleaned of leftover markers, and prompts measured against the model's context.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ValidationError

from bots.core.budget import longest_prefix
from bots.core.sanitize import clean_user_text
from bots.plugins.jobs import JobContext, PersonaView

PER_MESSAGE = 4  # role markers and separators a chat template adds to each message
LANGUAGE_NAMES = {"zh": "Chinese (简体中文)", "en": "English"}
_MARKERS = re.compile(r"<<<\s*[A-Z]+(?:\s+[0-9a-f]{4,})?|[A-Z]+\s+[0-9a-f]{4,}\s*>>>|<<<|>>>")
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_TEMPLATE_TOKEN = re.compile(r"<\|[^|<>\n]{1,40}\|>|\[/?INST\]|<</?SYS>>")

T = TypeVar("T", bound=BaseModel)


def parse_options(model: type[T], options: dict[str, Any], job: str) -> T:
    """Validate ``options``; a bad one is a ValueError naming it."""
    try:
        return model.model_validate(options or {})
    except ValidationError as exc:
        problems = "; ".join(_describe(err, model) for err in exc.errors())
        raise ValueError(f"{job} option {problems}") from None


def _describe(err: Any, model: type[BaseModel]) -> str:
    name = ".".join(str(part) for part in err["loc"]) or "(options)"
    if err["type"] == "extra_forbidden":
        return f"'{name}' is unknown (known: {', '.join(model.model_fields)})"
    return f"'{name}': {err['msg']} (got {err.get('input')!r:.60})"


def as_data(text: str, *, one_line: bool = False) -> str:
    """Text for inside prompt markers: cleaned like user text, and unable to close the markers."""
    text = clean_user_text(text).replace("<<<", "‹‹‹").replace(">>>", "›››")
    return " ".join(text.split()) if one_line else text


def data_block(kind: str, tag: str, body: str) -> str:
    return f"<<<{kind} {tag}\n{body}\n{kind} {tag}>>>"


def new_tag() -> str:
    return secrets.token_hex(4)


def clean_output(text: str) -> str:
    """The model's answer without reasoning blocks, leftover markers or chat-template tokens."""
    text = _THINK.sub("", text)
    text = _TEMPLATE_TOKEN.sub("", _MARKERS.sub("", text))
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def persona_system(persona: PersonaView) -> str:
    parts = [persona.system_prompt.strip()]
    if persona.style:
        parts.append("Style:\n" + "\n".join(f"- {rule}" for rule in persona.style))
    return "\n\n".join(p for p in parts if p)


def prompt_tokens(messages: Sequence[BaseMessage], count: Callable[[str], int]) -> int:
    """What a prompt costs in the model's context (content plus the chat template's markers)."""
    return sum(PER_MESSAGE + count(str(m.content)) for m in messages)


def truncate_to(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` that costs at most ``budget`` tokens."""
    return longest_prefix(text, budget, count)


@dataclass(frozen=True, slots=True)
class AnswerRoom:
    """Room kept for the model's answer, and the length to ask for so it fits."""

    tokens: int
    units: int  # words (English) or characters (Chinese) asked for

    @classmethod
    def plan(cls, ctx: JobContext, max_words: int, language: str) -> AnswerRoom:
        zh = language == "zh"
        units = max_words * 2 if zh else max_words
        per_unit = max(ctx.count_tokens("字" * 100 if zh else "word " * 100), 1) / 100
        cap = max(ctx.context_tokens // 3, 1)
        tokens = int(units * per_unit * 1.2) + 16  # 20 % slack: models overshoot a length
        if tokens > cap:
            units, tokens = max(int((cap - 16) / (per_unit * 1.2)), 10), cap
        return cls(tokens, units)


def length_phrase(units: int, language: str) -> str:
    return f"at most {units} Chinese characters" if language == "zh" else f"at most {units} words"
