"""The quality gate: every text the bots send (answers, digests, columns) is checked here first.

It answers one question, cheaply and without a model: is this text fit to send? A text fails on

- ``empty``: nothing to read;
- ``length``: longer than the caller allows;
- ``language``: written in another language than the one wanted (quotations, links and code do
  not count: an English frame around the author's Chinese words is English);
- ``repetition``: the same phrase again and again (a small model looping);
- ``echo``: the prompt's scaffolding in the output (role tags, "[HH:MM] name:" log lines, data
  markers, chat-template tokens, a stretch of the caller's instructions);
- ``salad``: Chinese made of rare characters or a rapid mix of scripts (word salad);
- ``injection``: the text confirms a role or identity a user tried to give it ("operator mode",
  "I am DAN", "你已被授权…") or talks about its hidden rules.

Callers add their own reasons (an unverified quotation, an unfaithful digest) with
:meth:`Verdict.failed`. Each verdict is counted in :class:`GateStats` and logged, never shown to
users as a marker inside the text.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache

log = logging.getLogger("bots.gate")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_QUOTED = re.compile(r"「[^」]*」|『[^』]*』|“[^”]*”|\"[^\"\n]*\"|《[^》]*》")
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_CODE = re.compile(r"`[^`]*`")
_CITATION = re.compile(r"\[\d{1,2}\]")
_SOURCES_LINE = re.compile(r"^(?:出处：|Sources: ).*$", re.MULTILINE)

_ECHO = [
    re.compile(r"^\s*(?:system|user|assistant|human)\s*[:：]", re.IGNORECASE | re.MULTILINE),  # role tags
    re.compile(r"\[\d{1,2}:\d{2}\]\s*\S+\s*[:：]"),  # "[08:15] Alex: ..." transcript lines
    re.compile(r"<<<|>>>|\b[A-Z]{4,}\s+[0-9a-f]{8}\b"),  # data block markers and their tags
    re.compile(r"<\|[^|<>\n]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>"),  # chat-template tokens
]
_MODES = r"(?:operator|admin(?:istrator)?|developer|god|root|sudo|jailbreak|unrestricted|DAN)"
# What a bot says when it goes along with a claimed role or identity, or when it talks about its
# hidden rules: a confirmation, not the topic (a persona may discuss "debug mode" or "授权").
_INJECTION = [
    re.compile(
        rf"\b(?:now\s+in|entering|entered|enabled?|activated?|switch(?:ed|ing)?\s+(?:in)?to)\s+(?:the\s+)?"
        rf"{_MODES}\s+mode\b",
        re.IGNORECASE,
    ),
    re.compile(r"\bI\s*(?:'m|am)\s+(?:now\s+)?DAN\b|\bDAN\b.{0,40}\bready\b"),  # DAN in capitals only
    re.compile(
        r"\bI\s+(?:now\s+)?have\s+no\s+(?:restrictions|rules|limits|filters)\b|\bno\s+restrictions!", re.I
    ),
    re.compile(
        r"\b(?:you|the\s+user)\s+(?:are|is)\s+now\s+(?:an?\s+)?(?:authori[sz]ed|operator|admin)", re.I
    ),
    re.compile(r"\bmy\s+(?:system\s+prompt|hidden\s+(?:rules|instructions))\b", re.IGNORECASE),
    re.compile(r"\bI\s+(?:must|have\s+to|should)\s+stay\s+in\s+character\b|\bnever\s+call\s+myself\b", re.I),
    re.compile(r"(?:进入|开启|启用|切换到|处于)(?:了)?(?:管理员|开发者|上帝|越狱|无限制|超级用户)模式"),
    re.compile(
        r"(?:你|您|用户)(?:已|已经)(?:被|获得)授权|已获(?:得)?(?:管理员)?授权|权限已(?:开启|提升|授予)"
    ),
    re.compile(r"我(?:现在)?(?:就)?是\s*DAN|我(?:现在)?(?:已经)?(?:没有任何限制|不受任何限制)"),
    re.compile(r"我的系统提示|隐藏(?:的)?(?:规则|指令)是|我的(?:设定|指令)是"),
]

_ORDERS = re.compile(
    r"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:the\s+)?(?:previous|prior|above|earlier|your)\s+"
    r"(?:instructions|rules|prompts?)\b|(?:忽略|无视|忘记)(?:之前|以上|前面|上面|所有)?的?(?:指令|指示|规则|设定|提示)",
    re.IGNORECASE,
)

ECHO_WORDS = 6  # consecutive words of the caller's instructions that may not appear in the text
ECHO_CJK = 10  # or consecutive Chinese characters


@dataclass(frozen=True, slots=True)
class Verdict:
    problems: tuple[str, ...] = ()  # "language: zh, wanted en"; empty when the text passed
    language: str = ""  # the language the text is written in ("zh", "en", "" when unknown)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reasons(self) -> list[str]:
        """The problem kinds ("language", "repetition"...), for counting."""
        return [p.split(":", 1)[0] for p in self.problems]

    def failed(self, problem: str) -> Verdict:
        """This verdict with one more problem (a caller's own check)."""
        return Verdict((*self.problems, problem), self.language)

    def __str__(self) -> str:
        return "pass" if self.ok else "; ".join(self.problems)


@dataclass
class GateStats:
    """Verdicts counted per kind of text ("answer", "digest"...): passed, failed and why."""

    counts: Counter[str] = field(default_factory=Counter)

    def record(self, kind: str, verdict: Verdict, *, where: str = "") -> None:
        self.counts[f"{kind}.checked"] += 1
        if verdict.ok:
            self.counts[f"{kind}.passed"] += 1
            return
        self.counts[f"{kind}.failed"] += 1
        for reason in verdict.reasons:
            self.counts[f"{kind}.failed.{reason}"] += 1
        # the kinds only: the details quote the text, and logs never carry what people wrote
        log.info("gate: %s %s failed: %s", kind, where or "", ", ".join(verdict.reasons))
        log.debug("gate: %s %s details: %s", kind, where or "", verdict)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def prose(text: str) -> str:
    """The text a reader reads as the writer's own: without quotations, links, code, citation
    markers and a sources line."""
    for pattern in (_SOURCES_LINE, _QUOTED, _URL, _CODE, _CITATION):
        text = pattern.sub(" ", text)
    return text


def text_language(text: str) -> str:
    """ "zh" or "en" by what the writer's own words are written in ("" when it cannot tell). A
    Latin word weighs as much as two Chinese characters."""
    return _language_of(prose(text))


def _language_of(own: str) -> str:
    """:func:`text_language` of text already reduced to its :func:`prose`."""
    cjk = len(_CJK.findall(own))
    latin = len(_LATIN_WORD.findall(own))
    if cjk + latin == 0:
        return ""
    return "zh" if cjk >= 2 * latin else "en"


_CHINESE_GRAMMAR = re.compile(r"[的了是在吗呢吧么怎什哪谁为有我你他她这那和就都也还要会能如何]")


def language_of_request(text: str, fallback: str) -> str:
    """The language to answer ``text`` in: Chinese when its Chinese holds grammar ("LangChain
    agent 怎么用？"), not only a term ("What does 不掉链子 mean?"); else the language of its
    words; else ``fallback``."""
    own = prose(text)
    if len(_CJK.findall(own)) >= 2 and _CHINESE_GRAMMAR.search(own):
        return "zh"
    found = _language_of(own)
    if found:
        return found
    return "zh" if fallback.lower().startswith("zh") else "en"


def repetition_share(text: str) -> float:
    """The share of n-grams (4 words, or 6 CJK characters) that repeat an earlier one."""
    words = _LATIN_WORD.findall(text.lower())
    cjk = _CJK.findall(text)
    units, n = (cjk, 6) if len(cjk) >= 2 * len(words) else (words, 4)
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if len(grams) < 4:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def _phrases(text: str) -> set[tuple[str, ...] | str]:
    """Runs of ECHO_WORDS words and of ECHO_CJK Chinese characters in ``text``."""
    words = _LATIN_WORD.findall(text.lower())
    found: set[tuple[str, ...] | str] = {
        tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1)
    }
    for run in re.findall(r"[\u3400-\u9fff]+", text):
        found.update(run[i : i + ECHO_CJK] for i in range(len(run) - ECHO_CJK + 1))
    return found


@lru_cache(maxsize=1024)  # the personas' rules, each used at every check; digests add one-offs
def _instruction_phrases(instruction: str) -> frozenset[tuple[str, ...] | str]:
    """:func:`_phrases` of a persona's fixed instructions, found once, not at every check."""
    return frozenset(_phrases(instruction))


def echoed(text: str, instructions: Iterable[str] = ()) -> str:
    """What of the prompt's scaffolding ``text`` repeats ("" when nothing): role tags, log lines,
    markers, template tokens, or a phrase of the caller's instructions (six words or ten Chinese
    characters in a row; single words never count)."""
    for pattern in _ECHO:
        found = pattern.search(text)
        if found:
            return found.group().strip()[:40]
    said = _phrases(text)
    for instruction in instructions:
        for phrase in _instruction_phrases(instruction) & said:
            return " ".join(phrase) if isinstance(phrase, tuple) else phrase
    return ""


@cache
def _common_characters() -> frozenset[str]:
    """The 4,000 characters most used in Chinese words (from jieba's dictionary); empty when
    jieba is not installed, which turns the check off. About a second of CPU: the host loads it
    off the event loop before its channels start (:func:`warm_up`)."""
    try:
        import jieba
    except ImportError:
        return frozenset()
    with jieba.get_dict_file() as lines:
        text = lines.read().decode("utf-8", "ignore")
    weights: defaultdict[str, int] = defaultdict(int)
    for line in text.splitlines():  # "word count [tag]"
        word, _, rest = line.partition(" ")
        count = rest.split(" ", 1)[0]
        if count.isdigit():
            for ch in word:
                weights[ch] += int(count)
    return frozenset(heapq.nlargest(4000, weights, key=weights.__getitem__))


@cache
def _to_simplified() -> Callable[[str], str]:
    """Traditional to simplified Chinese (OpenCC, from the knowledge extra), else unchanged."""
    try:
        import opencc
    except ImportError:
        return lambda text: text
    return opencc.OpenCC("t2s").convert


def warm_up() -> None:
    """Load what the checks read once (jieba's character counts, OpenCC): seconds of CPU that
    would otherwise stall the event loop at the first message. Blocking: run it in a thread."""
    _common_characters()
    _to_simplified()


def salad(text: str) -> str:
    """Why ``text`` reads as word salad ("" when it does not): many rare Chinese characters
    (traditional script folded to simplified first), or Chinese characters and Latin words
    alternating one by one, which no one writes (technical Chinese mixes in whole terms)."""
    return _salad(prose(text))


def _salad(own: str) -> str:
    """:func:`salad` of text already reduced to its :func:`prose`."""
    if _CJK.search(own) is None:  # no Chinese: neither rare characters nor Chinese runs
        return ""
    cjk = _CJK.findall(_to_simplified()(own))
    common = _common_characters()
    if common and len(cjk) >= 12:
        rare = sum(ch not in common for ch in cjk)
        if rare / len(cjk) > 0.08:
            return f"{rare} of {len(cjk)} Chinese characters are rare"
    runs = re.findall(r"[\u3400-\u9fff]+|[A-Za-z]+", own)
    chinese = [len(run) for run in runs if _CJK.match(run)]
    if len(runs) >= 12 and len(chinese) >= 6 and sum(chinese) / len(chinese) <= 1.5:
        return (
            f"{len(chinese)} Chinese runs of {sum(chinese) / len(chinese):.1f} characters between Latin words"
        )
    return ""


def injected(text: str, exempt: str = "") -> str:
    """A confirmation of a role or identity a user tried to give the bot, or talk of its hidden
    rules ("" when none). Phrases that ``exempt`` (the persona's own text) contains are allowed."""
    for pattern in _INJECTION:
        for found in pattern.finditer(text):
            phrase = found.group()
            if phrase.lower() not in exempt.lower():
                return phrase.strip()
    return ""


def gives_orders(text: str) -> bool:
    """Whether ``text`` uses the classic phrasing of a prompt injection ("ignore previous
    instructions", "忽略之前的指令"): never quoted or sent in a bot's name."""
    return bool(_ORDERS.search(text))


def check(
    text: str,
    *,
    language: str = "",
    max_chars: int = 4000,
    instructions: Sequence[str] = (),
    persona_text: str = "",
    max_repetition: float = 0.3,
) -> Verdict:
    """Check ``text`` before it is sent. ``language``: the language wanted ("" for any);
    ``instructions``: prompt text the output must not repeat (not the data: quoting a passage is
    fine); ``persona_text``: the persona's own text, whose phrases never count as injection."""
    problems: list[str] = []
    own = prose(text)  # for the language and the salad check
    found = _language_of(own)
    if not any(ch.isalnum() for ch in text):
        return Verdict(("empty: no words",), found)
    if len(text) > max_chars:
        problems.append(f"length: {len(text)} characters, at most {max_chars}")
    if language and found and found != language:
        problems.append(f"language: {found}, wanted {language}")
    share = repetition_share(text)
    if share > max_repetition:
        problems.append(f"repetition: {share:.0%} of phrases repeat")
    if echo := echoed(text, instructions):
        problems.append(f"echo: {echo!r}")
    if mixed := _salad(own):
        problems.append(f"salad: {mixed}")
    if claim := injected(text, persona_text):
        problems.append(f"injection: {claim!r}")
    elif gives_orders(text):
        problems.append("injection: gives orders")
    return Verdict(tuple(problems), found)
