"""Helpers for jobs that write posts with a model (digest, column, your own): options checked
with a clear error, data kept inside tagged markers the model is told not to obey, answers
cleaned of leftover markers, and prompts measured against the model's context; extractive
helpers (words, tf-idf, centrality, MMR, sentences cut to fit) for posts that pick what was said
instead of generating it; and the quality gate (``check``) every post passes before it is sent.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ValidationError

from bots.core.budget import longest_prefix
from bots.core.gate import GateStats as GateStats  # re-exported: jobs gate what they post
from bots.core.gate import Verdict
from bots.core.gate import check as check
from bots.core.gate import gives_orders as gives_orders
from bots.core.gate import text_language as text_language
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


# --- extractive writing: what people said, picked instead of generated ----------------------------
# Small models cannot be trusted to write a digest or a column; these pick and cut real sentences
# (tf-idf over jieba words, centrality, MMR), so a post reads right with any model or none.

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN = re.compile(r"[a-z][a-z0-9'’+-]*[a-z0-9+]|[a-z]")
# A sentence ends after 。！？!?；; or … (and a closing quote), or after "." before a space.
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])(?![”」』’\"）)\]。！？!?；;…])\s*|(?<=[^.\d][.])\s+")
_CLAUSE_END = re.compile(r"[，,、：:]")
_HALF_PUNCT = {",": "，", "!": "！", "?": "？", ":": "：", ";": "；"}
_AFTER_CJK = re.compile(r"(?<=[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])([,!?:;])(?!\d)")

Vector = dict[str, float]


def _jieba() -> Any:
    try:
        import jieba
    except ImportError:  # the knowledge extra is not installed: CJK bigrams stand in for words
        return None
    jieba.setLogLevel(logging.WARNING)
    return jieba


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``: Chinese cut by jieba (character bigrams without it),
    Latin words whole. Punctuation and spaces are not words."""
    lowered = text.lower()
    jieba = _jieba()
    if jieba is not None:
        return [w for w in (t.strip() for t in jieba.lcut(lowered)) if w and any(ch.isalnum() for ch in w)]
    bigrams = [run[i : i + 2] for run in _CJK_RUN.findall(lowered) for i in range(max(len(run) - 1, 1))]
    return [*_LATIN.findall(lowered), *bigrams]


def tfidf(bags: Sequence[Sequence[str]], prior: Callable[[str], float] | None = None) -> list[Vector]:
    """Unit-length tf-idf vectors, one per bag of words (sublinear tf, smoothed idf over the
    bags), each weight times ``prior`` of its word (default: :func:`telling`)."""
    prior = prior or telling
    df = Counter(w for bag in bags for w in set(bag))
    n = len(bags)
    vectors = []
    for bag in bags:
        weights = {
            w: (1 + math.log(c)) * (math.log((1 + n) / (1 + df[w])) + 1) * prior(w)
            for w, c in Counter(bag).items()
        }
        vectors.append(unit(weights))
    return vectors


@cache
def _general_idf() -> dict[str, float]:
    try:
        import jieba.analyse
    except ImportError:
        return {}
    return dict(jieba.analyse.default_tfidf.idf_freq)


def telling(word: str) -> float:
    """How much ``word`` says in general, 0.1 to 1: jieba's idf, so that 有人, 情况 or 推荐 weigh
    little next to 凤凰岭 or 读书会, which one day's messages are too few to tell. Words it does
    not know weigh 1 (names of things, most English), or 0.5 for two Chinese characters: most
    of those are jieba's guesses across a word boundary (完会, 口见)."""
    idf = _general_idf().get(word)
    if idf is None:
        return 0.5 if len(word) == 2 and _CJK.match(word) else 1.0
    return min(max((idf - 4.0) / 7.0, 0.1), 1.0)


def unit(vector: Vector) -> Vector:
    norm = math.sqrt(sum(v * v for v in vector.values()))
    return {w: v / norm for w, v in vector.items()} if norm else {}


def dot(a: Vector, b: Vector) -> float:
    """The cosine of two unit vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(w, 0.0) for w, v in a.items())


def summed(vectors: Iterable[Vector]) -> Vector:
    total: dict[str, float] = {}
    for vector in vectors:
        for w, v in vector.items():
            total[w] = total.get(w, 0.0) + v
    return total


def centroid(vectors: Iterable[Vector]) -> Vector:
    """The unit direction of the vectors' sum."""
    return unit(summed(vectors))


def mmr(
    relevance: Sequence[float], vectors: Sequence[Vector], k: int, balance: float = 0.7, repeat: float = 0.8
) -> list[int]:
    """Indexes of up to ``k`` items, each the most relevant that repeats the ones already taken
    least (maximal marginal relevance). Items with no relevance, and near-repeats of a taken one
    (cosine ``repeat`` or more: a re-posted sign-up list), are never taken."""
    left = [i for i, r in enumerate(relevance) if r > 0]
    chosen: list[int] = []
    while left and len(chosen) < k:
        overlap = {i: max((dot(vectors[i], vectors[j]) for j in chosen), default=0.0) for i in left}
        left = [i for i in left if overlap[i] < repeat]
        if not left:
            break
        best = max(left, key=lambda i: balance * relevance[i] - (1 - balance) * overlap[i])
        chosen.append(best)
        left.remove(best)
    return chosen


def width(text: str) -> int:
    """Display width: a Chinese character takes the room of two Latin letters."""
    return len(text) + len(_CJK.findall(text))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def brief(text: str, max_width: int) -> str:
    """The first sentence or two of ``text`` within ``max_width`` (see :func:`width`); a first
    sentence too long on its own is cut at a clause, else mid-sentence, and marked with "…"."""
    parts = sentences(text)
    if not parts:
        return ""
    kept = parts[0]
    for part in parts[1:]:
        english = kept[-2:].isascii()  # "6:40? 在…" keeps its space, "好!在…" and "好。在…" get none
        joined = f"{kept} {part}" if english else kept + part
        if width(joined) > max_width:
            break
        kept = joined
    if width(kept) <= max_width:
        return kept
    cut, used = [], 0
    for ch in kept:
        used += width(ch)
        if used > max_width - 2:
            break
        cut.append(ch)
    head = "".join(cut)
    clause = max((m.start() for m in _CLAUSE_END.finditer(head)), default=-1)
    if clause > len(head) // 2:
        head = head[:clause]
    elif " " in head[len(head) // 2 :]:  # do not cut a Latin word in two
        head = head[: head.rindex(" ")]
    return head.rstrip(" ,，、:：;；") + "…"


def cjk_punctuation(text: str) -> str:
    """Full-width , ! ? : ; after Chinese characters (user text arrives width-folded)."""
    return _AFTER_CJK.sub(lambda m: _HALF_PUNCT[m.group(1)], text)


# --- the quality gate, as jobs use it ---------------------------------------------------------------


def record_verdict(ctx: JobContext, kind: str, verdict: Verdict) -> None:
    """Count ``verdict`` in the run's gate statistics, if it has any. Only the kinds of problems
    go there: a problem's detail may quote the text, and logs carry counts, never message text."""
    if ctx.gate_stats is not None:
        ctx.gate_stats.record(kind, Verdict(tuple(verdict.reasons), verdict.language), where=ctx.job_id)


def reasons(verdict: Verdict) -> str:
    """The verdict for a log line: "pass", or its problem kinds ("language, echo")."""
    return "pass" if verdict.ok else ", ".join(dict.fromkeys(verdict.reasons))
