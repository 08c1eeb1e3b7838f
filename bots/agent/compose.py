"""Composed answers: the author's own sentences that answer the question, framed and cited.

When the model cannot write a fit answer (a small offline model, above all in Chinese), the
persona answers with what it wrote: the retrieved passages are cut into sentences (each with its
line number), scored against the question (BM25 over jieba/stemmed tokens, plus embedding
similarity when the retriever offers it, plus the passage's rank), picked with MMR so they do not
repeat each other, and framed with the persona's opening and closing lines in the asker's
language. An English question answered from Chinese writing gets an English frame around the
quoted Chinese words. Nothing is invented, so nothing needs a model.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from bots.agent.persona import Persona
from bots.agent.retrieval import Passage
from bots.core import gate
from bots.core.gate import text_language

try:
    from bots.knowledge.text import tokenize
except ImportError:  # without the knowledge extra (jieba): words and single Chinese characters

    def tokenize(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+|[\u3400-\u9fff]", text.lower())


Similarity = Callable[[str, list[str]], list[float]]
MIN_SIMILARITY = 0.45  # embedding similarity that makes a sentence relevant without shared words

# A sentence ends at CJK or Latin terminators (with any
# closing quotes); Latin prose is often hard-wrapped, so a single line break does not end one.
_TERMINATOR = re.compile(r"[。！？…]+[”」』\"'’）)]*|[.!?]+[\"'”’)]*(?=\s|$)")
_HEADING = re.compile(r"^\s*(?:#{1,6}\s|[-*=_]{3,}\s*$)")
# "立委：…", "Wei Li: …": a line of a chat transcript, said by whoever the label names
SPEAKER_LABEL = re.compile(
    r"^\s*([\u3400-\u9fff]{1,6}|[A-Z][\w.'-]*(?: [A-Z][\w.'-]*){0,2})\s*[:：]\s*(?=\S)"
)
_CITATION_END = re.compile(r"\[\d+\]$")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LOCATION_FILE = re.compile(r"^(.*?),\s*(?:p\. \d+, )?(?:[^,]*, )?lines? \d+")

OPENINGS = {
    "zh": ["关于这个，我写过：", "这件事，我在笔记里写过：", "我曾这样写："],
    "en": ["Here is what I wrote about it:", "I put it this way once:", "In my own words:"],
}
CROSS_OPENINGS = {
    "en": "I wrote about this in Chinese:",
    "zh": "这一点我是用英文写的：",
}
UNKNOWN = {
    "zh": "这个我没有写过，不好乱说。换个我熟悉的话题吧。",
    "en": "I have not written about that, so I would rather not guess. Ask me about what I know.",
}


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    passage: int  # index of its passage (the retrieval rank)
    offset: int  # where it starts in the passage
    line: int  # its line in the source file (0 when unknown)


@dataclass(frozen=True, slots=True)
class Composition:
    text: str  # the answer, with [n] markers
    sources: list[Passage]  # what [n] cites: sentence-level locations
    grounded: bool  # False: nothing in the passages answered (an example answer, or "I have not written...")
    unknown: bool = False  # True: the honest "I have not written about that"


def split_sentences(passages: Sequence[Passage], own_labels: Sequence[str] = ()) -> list[Sentence]:
    """The readable sentences of ``passages``: whole sentences only (no headings, no pieces cut
    off at a passage's edges, no bare links), each with the line it starts on. In transcripts
    only the author's lines count (``own_labels``: how transcripts name the author), without
    the label: another speaker's words are never the persona's."""
    found = []
    for index, passage in enumerate(passages):
        for start, text in _sentence_spans(passage.text, own_labels):
            if not _worth_quoting(text):
                continue
            line = passage.start_line + passage.text.count("\n", 0, start) if passage.start_line else 0
            found.append(Sentence(text, index, start, min(line, passage.end_line or line)))
    return found


def _units(text: str) -> list[tuple[int, str]]:
    """Paragraphs with their offsets: lines up to a blank line or a heading; in Chinese text each
    line is a paragraph of its own."""
    paragraphs: list[tuple[int, list[str]]] = []
    offset, current = 0, None
    for line in text.split("\n"):
        if not line.strip() or _HEADING.match(line):
            current = None
        elif current is None or SPEAKER_LABEL.match(line):  # each speaker's line stands alone
            current = (offset, [line])
            paragraphs.append(current)
        else:
            current[1].append(line)
        offset += len(line) + 1
    units = []
    for start, lines in paragraphs:
        joined = "\n".join(lines)
        if len(_CJK.findall(joined)) * 2 < len(joined):
            units.append((start, joined))
            continue
        for line in lines:
            units.append((start, line))
            start += len(line) + 1
    return units


def _sentence_spans(text: str, own_labels: Sequence[str] = ()) -> list[tuple[int, str]]:
    """(offset, sentence) for each terminated sentence. The first piece of a passage that starts
    in the middle of a sentence (lower case, or punctuation) is left out, and so are the lines
    of speakers other than the author."""
    spans = []
    units = _units(text)
    transcript = _is_transcript(units)
    for offset, unit in units:
        begin = 0
        label = SPEAKER_LABEL.match(unit)
        if label and label.group(1) in own_labels:
            begin = label.end()  # the author's own line: his words, without his name
        elif label and transcript:
            continue  # another speaker's line
        elif label:
            label = None  # prose that opens with "导读：" or "Question:"
        elif unit[:1].islower() or unit[:1] in "，,、；;：:）)」』”":
            begin = _skip_fragment(unit)  # the passage (or a hard-wrapped line) starts mid-sentence
        for end in _TERMINATOR.finditer(unit, begin):
            piece = unit[begin : end.end()]
            lead = len(piece) - len(piece.lstrip())
            if label or not piece.lstrip()[:1].islower():  # "etc. prior to…": the tail of a cut sentence
                spans.append((offset + begin + lead, " ".join(piece.split())))
            begin = end.end()
    return spans


def _is_transcript(units: list[tuple[int, str]]) -> bool:
    """Whether labelled lines look like a chat ("立委：…" "为民：…"), not prose with a heading
    such as "导读：…": at least two speakers, one of them speaking twice."""
    labels = [m.group(1) for _, unit in units if (m := SPEAKER_LABEL.match(unit))]
    return len(set(labels)) >= 2 and len(labels) > len(set(labels))


def _skip_fragment(unit: str) -> int:
    """Where the first whole sentence of ``unit`` starts (past the end of the cut one)."""
    first = _TERMINATOR.search(unit)
    return first.end() if first else len(unit)


def support(answer: str, grounds: Sequence[str]) -> float:
    """The share of the answer's sentences whose words mostly (half or more) occur in ``grounds``
    (the passages and the question): 1.0 when everything it says rests on them."""
    known = {token for text in grounds for token in tokenize(text)}
    sentences = [s for s in re.split(r"(?<=[。！？!?.])\s*|\n+", answer) if tokenize(s)]
    if not sentences:
        return 1.0
    backed = sum(_covered(tokenize(s), known) >= 0.5 for s in sentences)
    return backed / len(sentences)


def _covered(tokens: list[str], known: set[str]) -> float:
    return sum(token in known for token in tokens) / len(tokens)


def _worth_quoting(text: str) -> bool:
    if _HEADING.match(text) or gate.injected(text) or gate.gives_orders(text):
        return False  # a heading, or words that would read as the bot giving in to an injection
    cjk = len(_CJK.findall(text))
    words = len(re.findall(r"[A-Za-z]+", text))
    return (cjk >= 8 or words >= 5) and "http" not in text and len(text) <= 400


def relevance(question: str, sentences: list[Sentence], similarity: Similarity | None) -> np.ndarray:
    """BM25 of each sentence for the question (scaled to 0-1), blended with embedding
    similarity when there is one, and a small prior for higher-ranked passages. Zero for a
    sentence that shares no word with the question and is not similar enough to it."""
    lexical = lexical_scores(question, [s.text for s in sentences])
    # a name or term in the other script ("Ashby 的 Homeostat…") is what the question is about
    keys = key_terms(question)
    has = np.asarray([len(keys & set(tokenize(s.text))) / len(keys) if keys else 0.0 for s in sentences])
    if keys:
        lexical = 0.5 * lexical + 0.5 * has
    dense = np.zeros(len(sentences))
    if similarity is not None:
        dense = np.clip(np.asarray(similarity(question, [s.text for s in sentences]), dtype=float), 0, 1)
    prior = np.asarray([1 / (1 + 0.25 * s.passage) for s in sentences])
    relevant = (lexical > 0) | (dense >= MIN_SIMILARITY)
    if keys and has.max() > 0:  # sentences that name none of the key terms are about something else
        relevant &= has > 0
    return np.where(relevant, (0.6 * lexical + 0.4 * dense) * (0.5 + 0.5 * prior) + 0.05 * prior, 0.0)


def key_terms(question: str) -> set[str]:
    """Tokens of ``question`` written in the script its own words are not (Latin words in a
    Chinese question, Chinese words in an English one): names, titles, terms of art."""
    chinese = text_language(question) == "zh"
    return {t for t in tokenize(question) if bool(_CJK.search(t)) != chinese and not t.isdigit()}


def lexical_scores(query: str, texts: Sequence[str]) -> np.ndarray:
    """BM25 of each text for ``query`` over jieba/stemmed tokens, scaled so the best is 1."""
    tokens = [tokenize(text) for text in texts]
    asked = tokenize(query)
    scores = np.zeros(len(texts))
    if asked and any(tokens):
        scores = _bm25(asked, tokens)
        if scores.max() > 0:
            scores = scores / scores.max()
    return scores


def _bm25(query: list[str], documents: list[list[str]]) -> np.ndarray:
    try:
        import bm25s
    except ImportError:  # without the knowledge extra: shared words
        asked = set(query)
        return np.asarray([len(asked & set(doc)) for doc in documents], dtype=float)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its import sets DEBUG: a line per index
    index = bm25s.BM25()
    index.index([doc or ["\u0000"] for doc in documents], show_progress=False)
    return np.asarray(index.get_scores(query), dtype=float)


def nearest(query: str, texts: Sequence[str], k: int) -> list[str]:
    """The ``k`` texts sharing most words with ``query`` (none that share nothing)."""
    if not texts or k <= 0:
        return []
    scores = lexical_scores(query, texts)
    return [texts[i] for i in np.argsort(-scores)[:k] if scores[i] > 0]


def pick(sentences: list[Sentence], scores: np.ndarray, *, limit: int, max_chars: int) -> list[Sentence]:
    """Maximal marginal relevance: relevant sentences that do not repeat the ones already chosen."""
    tokens = [set(tokenize(s.text)) for s in sentences]
    chosen: list[int] = []
    used = 0
    candidates = [i for i in np.argsort(-scores) if scores[i] > 0]
    while candidates and len(chosen) < limit:

        def mmr(i: int) -> float:
            overlap = max((_jaccard(tokens[i], tokens[j]) for j in chosen), default=0.0)
            return 0.7 * scores[i] - 0.3 * overlap

        best = max(candidates, key=mmr)
        candidates.remove(best)
        if chosen and (
            used + len(sentences[best].text) > max_chars
            or scores[best] < 0.5 * scores[chosen[0]]  # much weaker than the best: off the point
            or max(_jaccard(tokens[best], tokens[j]) for j in chosen) > 0.7  # says it again
        ):
            continue
        chosen.append(best)
        used += len(sentences[best].text)
    return sorted((sentences[i] for i in chosen), key=lambda s: (s.passage, s.offset))


def _joined(pieces: list[str]) -> str:
    """Sentences run on: a space after Latin text, none between Chinese sentences."""
    text = ""
    for piece in pieces:
        last = _CITATION_END.sub("", text)[-1:]
        text += (" " if text and (last.isascii() or piece[:1].isascii()) else "") + piece
    return text


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _choose(lines: list[str], language: str, seed: str) -> str:
    fitting = [line for line in lines if text_language(line) in ("", language)]
    if not fitting:
        return ""
    number = int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16)
    return fitting[number % len(fitting)]


def _sentence_source(passage: Passage, group: list[Sentence]) -> Passage:
    """The passage cited at the lines its chosen sentences come from."""
    first, last = group[0].line, group[-1].line
    if not first:
        return passage
    where = _LOCATION_FILE.match(passage.location)
    file = passage.path or (where.group(1) if where else passage.source)
    lines = f"line {first}" if first == last else f"lines {first}-{last}"
    return replace(passage, location=f"{file}, {lines}", start_line=first, end_line=last)


def _example_answer(question: str, persona: Persona, language: str) -> str:
    """The persona's own example answer to a question like this one ("who are you?")."""
    asked = set(tokenize(question))
    best, best_score = "", 0.0
    for example in persona.examples:
        if text_language(example.persona) not in ("", language):
            continue
        score = _jaccard(asked, set(tokenize(example.user)))
        if score > best_score:
            best, best_score = example.persona, score
    return best if best_score >= 0.3 else ""


def compose(
    question: str,
    passages: Sequence[Passage],
    persona: Persona,
    language: str,
    *,
    similarity: Similarity | None = None,
    limit: int = 3,
) -> Composition:
    """The persona's answer to ``question`` in ``language``, made of its own sentences."""
    facts = [p for p in passages if p.kind == "fact"]
    sentences = split_sentences(facts, persona.speaker_labels)
    chosen: list[Sentence] = []
    best: dict[Sentence, float] = {}
    if sentences:
        scores = relevance(question, sentences, similarity)
        max_chars = 220 if language == "zh" else 480
        chosen = pick(sentences, scores, limit=limit, max_chars=max_chars)
        best = {s: scores[sentences.index(s)] for s in chosen}
    if not chosen:
        example = _example_answer(question, persona, language)
        return Composition(example or UNKNOWN[language], [], grounded=False, unknown=not example)

    groups: dict[int, list[Sentence]] = {}  # passages in the order of their best sentence
    for sentence in sorted(chosen, key=lambda s: -best[s]):
        groups.setdefault(sentence.passage, [])
    for sentence in chosen:  # within a passage, the author's order
        groups[sentence.passage].append(sentence)
    sources = [_sentence_source(facts[index], group) for index, group in groups.items()]
    parts, foreign = [], 0
    for number, group in enumerate(groups.values(), 1):
        words = _joined([s.text for s in group])
        if text_language(words) not in ("", language):  # the author's words in the other language
            words, foreign = f"「{words}」", foreign + 1
        parts.append(f"{words}[{number}]")
    own = _choose(persona.answer_openings, language, question)
    opening = (
        CROSS_OPENINGS[language]
        if foreign == len(parts)
        else own or _choose(OPENINGS[language], language, question)
    )
    closing = _choose(persona.answer_closings, language, question)
    body = _joined(parts)
    text = "\n".join(part for part in (opening, body, closing) if part)
    return Composition(text, sources, grounded=True)
