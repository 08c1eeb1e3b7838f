"""Persona fidelity: ``bots persona eval ID --questions FILE.jsonl``.

Each question goes to the real agent (built from the app config as ``bots chat`` does) as a DM,
and its :class:`~bots.agent.reply.Reply` is scored by pure functions:

- language match: the reply's own words (``gate.text_language``, quotations ignored) are in the
  question's language;
- gate pass: the reply was generated or composed and the gate's last verdict passed;
- grounded: the share of answer sentences supported by a retrieved passage (character bigrams /
  words overlap at least ``threshold``, or a quotation found in a passage);
- citation: when the question names its source and lines, a cited passage of that file overlaps
  them (and, as a diagnostic, whether any retrieved passage does);
- style: a character n-gram + function-word classifier trained on the author's corpus against a
  contrast corpus: the share of replies attributed to the author, their mean P(author), and the
  same for held-out author and contrast texts, with the AUC;
- latency per question.

A question file has one JSON object a line: ``{"q": "...", "source": "file.txt", "lines": [a, b]}``
(``source``/``lines`` optional; ``lang`` overrides the detected language; ``id`` names it).
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rich.table import Table

from bots.agent.persona import Persona
from bots.agent.reply import Reply
from bots.agent.retrieval import Passage
from bots.agent.stylometry import sentences
from bots.core.gate import text_language
from bots.knowledge.text import STOPWORDS, normalize, squash

GROUND_THRESHOLD = 0.5
_CITATION = re.compile(r"\[\d{1,2}\]")
_LEAD_IN = re.compile(r"[:：]\s*$")
_QUOTED = re.compile(r"「([^」]*)」|『([^』]*)』|“([^”]*)”|\"([^\"\n]*)\"")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_LATIN_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_LOCATION = re.compile(r"^(?P<file>.+?),\s*(?:.*?,\s*)?lines?\s+(?P<start>\d+)(?:\s*-\s*(?P<end>\d+))?\s*$")


# -- questions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    id: str
    text: str
    language: str  # "zh" / "en": the language the reply should be in
    source: str = ""  # the file that answers it ("" when not given)
    lines: tuple[int, int] | None = None
    cross: bool = False  # asked in one language, answered in the author's other


def load_questions(path: Path) -> list[Question]:
    """Questions from a JSON Lines file; a bad line raises ValueError naming the line."""
    return parse_questions(path.read_text(encoding="utf-8"), str(path))


def parse_questions(text: str, origin: str) -> list[Question]:
    """Questions from JSON Lines text (``origin`` names it in errors: a file, a form field)."""
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            questions.append(_question(json.loads(line), number))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{origin}, line {number}: {type(exc).__name__}: {exc}") from None
    if not questions:
        raise ValueError(f"{origin}: no questions")
    return questions


def _question(raw: dict[str, Any], number: int) -> Question:
    text = str(raw.get("q") or raw["question"]).strip()
    lines = raw.get("lines")
    if lines is not None:
        start, end = (int(n) for n in lines)
        if not 0 < start <= end:
            raise ValueError(f"lines must be [first, last], got {lines}")
        lines = (start, end)
    return Question(
        id=str(raw.get("id") or f"q{number}"),
        text=text,
        language=raw.get("lang") or text_language(text) or "en",
        source=str(raw.get("source") or raw.get("file") or ""),
        lines=lines,
        cross=bool(raw.get("cross", False)),
    )


# -- metrics (pure) ------------------------------------------------------------------------------
def language_match(reply: Reply, language: str) -> bool:
    return text_language(reply.text) == language


def gate_passed(reply: Reply) -> bool:
    return reply.mode in ("generated", "composed") and (not reply.verdicts or reply.verdicts[-1].ok)


def units(text: str) -> set[str]:
    """What overlap is counted in: CJK character bigrams (single characters of one-character
    runs) and Latin words other than the commonest."""
    text = normalize(text)
    found: set[str] = set()
    for run in _CJK_RUN.findall(text):
        found |= {run[i : i + 2] for i in range(len(run) - 1)} if len(run) > 1 else {run}
    found |= {w for w in _LATIN_WORD.findall(text) if w not in STOPWORDS}
    return found


def support(sentence: str, passage: str) -> float:
    """The share of the sentence's units found in the passage."""
    mine = units(sentence)
    return len(mine & units(passage)) / len(mine) if mine else 0.0


def quotes_found(sentence: str, passages: Sequence[Passage], min_chars: int = 4) -> bool:
    """Whether the sentence quotes a passage (the author's own words)."""
    quoted = [squash(next(g for g in m.groups() if g is not None)) for m in _QUOTED.finditer(sentence)]
    quoted = [q for q in quoted if len(q) >= min_chars]
    return any(q in squash(p.text) for q in quoted for p in passages)


def supported(sentence: str, passages: Sequence[Passage], threshold: float = GROUND_THRESHOLD) -> bool:
    return quotes_found(sentence, passages) or any(support(sentence, p.text) >= threshold for p in passages)


def answer_sentences(text: str, exclude: Sequence[str] = ()) -> list[str]:
    """The sentences of an answer that make claims: citation markers removed; the persona's frames
    (``exclude``: openings and closings), lead-ins that end with a colon ("In my own words:") and
    sentences without words left out."""
    frames = {squash(line) for line in exclude if squash(line)}
    kept = []
    for sentence in sentences(_CITATION.sub("", text)):
        if units(sentence) and squash(sentence) not in frames and not _LEAD_IN.search(sentence):
            kept.append(sentence)
    return kept


def grounded_share(
    reply: Reply, *, threshold: float = GROUND_THRESHOLD, exclude: Sequence[str] = ()
) -> float | None:
    """The share of the answer's sentences supported by a retrieved passage (None: no sentences)."""
    claims = answer_sentences(reply.text, exclude)
    if not claims:
        return None
    facts = [p for p in reply.passages if p.kind == "fact"] or list(reply.passages)
    return sum(supported(s, facts, threshold) for s in claims) / len(claims)


def passage_span(passage: Passage) -> tuple[str, int, int] | None:
    """(file, first line, last line) of a passage: its fields when set, else parsed from its
    location ("file.txt, lines 10-24", "book.pdf, p. 3, line 9")."""
    path = getattr(passage, "path", "")
    start = getattr(passage, "start_line", 0)
    end = getattr(passage, "end_line", 0)
    if path and start:
        return path, start, end or start
    match = _LOCATION.match(passage.location.strip())
    if not match:
        return None
    first = int(match["start"])
    return match["file"].strip(), first, int(match["end"] or first)


def cites(passage: Passage, source: str, lines: tuple[int, int] | None) -> bool:
    """Whether ``passage`` comes from ``source`` (compared by file name) and overlaps ``lines``."""
    span = passage_span(passage)
    if span is None:
        return False
    file, start, end = span
    if PurePosixPath(file).name != PurePosixPath(source).name:
        return False
    return lines is None or (start <= lines[1] and end >= lines[0])


def citation_correct(reply: Reply, source: str, lines: tuple[int, int] | None) -> bool:
    return any(cites(p, source, lines) for p in reply.sources)


def retrieval_correct(reply: Reply, source: str, lines: tuple[int, int] | None) -> bool:
    return any(cites(p, source, lines) for p in reply.passages)


# -- one run -------------------------------------------------------------------------------------
@dataclass
class Result:
    question: Question
    text: str
    mode: str
    language: str  # what the reply is written in
    language_ok: bool
    gate_ok: bool
    grounded: float | None
    cited_ok: bool | None  # None: the question names no source
    retrieved_ok: bool | None
    seconds: float
    style: float | None = None  # P(author) of the reply
    style_attributed: bool | None = None  # P(author) at or over the classifier's threshold


def score(
    question: Question, reply: Reply, seconds: float, *, exclude: Sequence[str] = (),
    threshold: float = GROUND_THRESHOLD,
) -> Result:  # fmt: skip
    expected = bool(question.source)
    return Result(
        question=question,
        text=reply.text,
        mode=reply.mode,
        language=text_language(reply.text),
        language_ok=language_match(reply, question.language),
        gate_ok=gate_passed(reply),
        grounded=grounded_share(reply, threshold=threshold, exclude=exclude),
        cited_ok=citation_correct(reply, question.source, question.lines) if expected else None,
        retrieved_ok=retrieval_correct(reply, question.source, question.lines) if expected else None,
        seconds=seconds,
    )


@dataclass
class StyleSummary:
    attributed: float  # share of replies with P(author) >= threshold
    replies: float  # mean P(author) of the replies
    author: float  # mean P(author) of held-out author texts
    contrast: float  # mean P(author) of held-out contrast texts
    auc: float  # held-out author vs contrast
    threshold: float  # the P(author) that best separates held-out author from contrast texts
    author_texts: int
    contrast_texts: int
    author_attributed: float = 0.0  # share of held-out author texts at or over the threshold
    contrast_attributed: float = 0.0  # share of held-out contrast texts at or over it


@dataclass
class Report:
    results: list[Result]
    style: StyleSummary | None = None
    notes: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        return totals(self.results) | {"style": asdict(self.style) if self.style else None}

    def as_json(self) -> dict[str, Any]:
        return {
            "questions": [_result_json(r) for r in self.results],
            "totals": self.totals(),
            "by_language": {lang: totals(rs) for lang, rs in self.by_language().items()},
            "notes": self.notes,
        }

    def by_language(self) -> dict[str, list[Result]]:
        groups: dict[str, list[Result]] = {}
        for r in self.results:
            groups.setdefault("cross" if r.question.cross else r.question.language, []).append(r)
        return groups


def _mean(values: Sequence[float | bool | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def totals(results: Sequence[Result]) -> dict[str, Any]:
    seconds = [r.seconds for r in results]
    return {
        "questions": len(results),
        "language_match": _mean([r.language_ok for r in results]),
        "gate_pass": _mean([r.gate_ok for r in results]),
        "grounded": _mean([r.grounded for r in results]),
        "citation_correct": _mean([r.cited_ok for r in results]),
        "retrieval_correct": _mean([r.retrieved_ok for r in results]),
        "composed": _mean([r.mode == "composed" for r in results]),
        "style_attributed": _mean([r.style_attributed for r in results]),
        "latency_mean_s": statistics.fmean(seconds) if seconds else None,
        "latency_p50_s": statistics.median(seconds) if seconds else None,
        "latency_max_s": max(seconds) if seconds else None,
    }


def _result_json(result: Result) -> dict[str, Any]:
    data = asdict(result)
    question = data.pop("question")
    return {"id": question["id"], "q": question["text"], "lang": question["language"],
            "cross": question["cross"], **data}  # fmt: skip


Answer = Callable[[Question, int], Awaitable[Reply]]


async def run(
    questions: Sequence[Question],
    answer: Answer,
    *,
    exclude: Sequence[str] = (),
    clock: Callable[[], float] = time.perf_counter,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Ask each question in turn (a fresh DM each), score each reply."""
    results = []
    for index, question in enumerate(questions):
        started = clock()
        reply = await answer(question, index)
        result = score(question, reply, clock() - started, exclude=exclude)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def style_summary(results: Sequence[Result], author: Sequence[str], contrast: Sequence[str]) -> StyleSummary:
    """Train the style classifier on most of ``author`` and ``contrast`` (segments), score the
    held-out rest and every reply (each result's ``style`` is set)."""
    from bots.agent.stylometry import held_out

    classifier, held = held_out(author, contrast)
    probabilities = classifier.author_probability([r.text for r in results])
    for result, p in zip(results, probabilities, strict=True):
        result.style = p
        result.style_attributed = p >= held.threshold
    return StyleSummary(
        attributed=_mean([p >= held.threshold for p in probabilities]) or 0.0,
        replies=_mean(probabilities) or 0.0,
        author=_mean(held.author) or 0.0,
        contrast=_mean(held.contrast) or 0.0,
        auc=held.auc,
        threshold=held.threshold,
        author_texts=len(author),
        contrast_texts=len(contrast),
        author_attributed=_mean([p >= held.threshold for p in held.author]) or 0.0,
        contrast_attributed=_mean([p >= held.threshold for p in held.contrast]) or 0.0,
    )


# -- the corpora for the style classifier --------------------------------------------------------
def corpus_segments(knowledge_dir: Path, collections: Sequence[str], names: Sequence[str] = ()) -> list[str]:
    """Classifier segments of the author's prose (other speakers' lines left out) in ``collections``."""
    from bots.agent.builder import author_prose, read_documents
    from bots.agent.stylometry import segments
    from bots.knowledge.collection import Collection

    found: list[str] = []
    for name in collections:
        documents = read_documents(Collection(knowledge_dir, name))
        for prose in author_prose(documents, names):
            found += segments(prose)
    return found


def add_style(report: Report, config: Any, persona: Persona, contrast: str | None) -> None:
    """Score the replies' style against the contrast collection (the option, else the one the
    persona was built against), or say in the report's notes why there is no style score."""
    from bots.core.config import ConfigError

    other = contrast_of(persona, contrast)
    if not (other and persona.knowledge):
        report.notes.append("no style score: name a --contrast collection of other authors")
        return
    try:
        author = corpus_segments(config.knowledge_dir, persona.knowledge, [persona.name])
        report.style = style_summary(report.results, author, corpus_segments(config.knowledge_dir, [other]))
    except (ConfigError, ValueError) as exc:
        report.notes.append(f"no style score: {exc}")


def contrast_of(persona: Persona, override: str | None) -> str | None:
    """The contrast collection: the option, else the one the persona was built against."""
    profile = persona.extensions.get("style_profile")
    recorded = profile.get("contrast") if isinstance(profile, dict) else None
    return override or (str(recorded) if recorded else None)


# -- the real agent ------------------------------------------------------------------------------
def invocation(text: str, run_id: str, index: int) -> Any:
    """A DM to the bot from a fresh asker (no history between questions)."""
    from bots.core.events import ChannelKind, ChannelRef, MessageEvent, UserRef
    from bots.core.permissions import Role
    from bots.core.routing import Invocation

    user = UserRef("eval", f"asker-{run_id}-{index}", "asker")
    event = MessageEvent(
        platform="eval",
        message_id=f"{run_id}-{index}",
        author=user,
        channel=ChannelRef("eval", f"dm-{run_id}-{index}", ChannelKind.DM),
        text=text,
        to_me=True,
    )
    event.session_id = user.canonical  # what the pipeline sets for a DM
    return Invocation(event=event, text=text, addressed=True, role=Role.MEMBER)


@asynccontextmanager
async def agent_answers(
    config: Any, secrets: Any, persona_id: str, persona: Persona
) -> AsyncIterator[Answer]:
    """The persona's agent, wired from ``config`` as ``bots chat`` wires it (memory in a throwaway
    database, so runs never see each other's history), as an :data:`Answer`."""
    from bots.assembly import build_host
    from bots.core.config import BotConfig
    from bots.core.storage import Database

    bot = f"eval-{persona_id}"
    config = config.model_copy(update={"bots": [BotConfig(name=bot, persona=persona_id)]})
    with tempfile.TemporaryDirectory(prefix="bots-eval-") as folder:
        db = Database(f"sqlite+aiosqlite:///{Path(folder) / 'eval.db'}")
        host = build_host(config, secrets, db=db, personas={persona_id: persona}, adapters={bot: []},
                          scheduler=False)  # fmt: skip
        agent = host.control.runtime.bots[bot].agent
        if not hasattr(agent, "answer"):
            raise RuntimeError("this version of the agent has no answer(); the eval needs Agent.answer")
        run_id = uuid.uuid4().hex[:8]

        async def answer(question: Question, index: int) -> Reply:
            return await agent.answer(invocation(question.text, run_id, index))

        async with host:
            yield answer


# -- output --------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _mark(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


MODES = {"generated": "gen", "composed": "comp", "apology": "apol", "refusal": "ref"}
LEGEND = (
    "lang: question language (* cross-lingual); reply: its language and whether it matches; gate: "
    "generated/composed and passed; grnd: share of sentences supported by a retrieved passage; cite / "
    "retr: a cited / retrieved passage overlaps the expected lines; style: P(author)."
)


def question_table(results: Sequence[Result]) -> Table:
    table = Table("id", "lang", "mode", "reply", "gate", "grnd", "cite", "retr", "style", "s",
                  title="Per question")  # fmt: skip
    for r in results:
        table.add_row(
            r.question.id, r.question.language + ("*" if r.question.cross else ""), MODES.get(r.mode, r.mode),
            f"{r.language or '?'} {_mark(r.language_ok)}", _mark(r.gate_ok), _pct(r.grounded),
            _mark(r.cited_ok), _mark(r.retrieved_ok), "-" if r.style is None else f"{r.style:.2f}",
            f"{r.seconds:.1f}",
        )  # fmt: skip
    return table


def totals_table(report: Report) -> Table:
    table = Table("group", "n", "lang", "gate", "grnd", "cite", "retr", "comp", "style", "s mean/p50/max",
                  title="Totals (style: replies attributed to the author)")  # fmt: skip
    groups = {"all": report.results, **report.by_language()}
    for name, results in groups.items():
        t = totals(results)
        latency = "-"
        if t["latency_mean_s"] is not None:
            latency = f"{t['latency_mean_s']:.1f}/{t['latency_p50_s']:.1f}/{t['latency_max_s']:.1f}"
        table.add_row(name, str(t["questions"]), _pct(t["language_match"]), _pct(t["gate_pass"]),
                      _pct(t["grounded"]), _pct(t["citation_correct"]), _pct(t["retrieval_correct"]),
                      _pct(t["composed"]), _pct(t["style_attributed"]), latency)  # fmt: skip
    return table


def style_table(style: StyleSummary) -> Table:
    table = Table("measure", "value", title="Style (char 1-3 grams + function words, logistic regression)")
    rows = [
        (f"replies attributed to the author (P >= {style.threshold:.2f})", _pct(style.attributed)),
        (
            "attributed: held-out author / contrast",
            f"{_pct(style.author_attributed)} / {_pct(style.contrast_attributed)}",
        ),
        ("mean P(author): replies", f"{style.replies:.3f}"),
        ("mean P(author): held-out author texts", f"{style.author:.3f}"),
        ("mean P(author): held-out contrast texts", f"{style.contrast:.3f}"),
        ("AUC, held-out author vs contrast (4-fold)", f"{style.auc:.3f}"),
        ("segments: author / contrast", f"{style.author_texts} / {style.contrast_texts}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def tables(report: Report) -> list[Table]:
    found = [question_table(report.results), totals_table(report)]
    if report.style:
        found.append(style_table(report.style))
    return found
