"""A persona draft from an author's texts: ``bots persona build ID --from COLLECTION``.

The files of a knowledge collection are read as paragraphs; lines of other speakers in chat
transcripts ("霄云：…") are left out, the author's own speaker label is stripped. From the
author's prose come: a style profile (numbers in ``extensions["style_profile"]``, short rules in
``style``), signature openings and closings, 8-16 exemplars that span the topics, the topics for
the system prompt (jieba tf-idf keywords) and the main language. The operator edits the draft.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bots.agent import stylometry as sty
from bots.agent.persona import Persona
from bots.core.gate import text_language
from bots.knowledge.collection import Collection
from bots.knowledge.loaders import LoadError, load

_SPEAKER = re.compile(r"^\s*([A-Za-z\u3400-\u9fff][\w\u3400-\u9fff .·'-]{0,15}?)\s*[:：]\s*(?=\S)")
_URL = re.compile(r"https?://|www\.", re.IGNORECASE)
_MARKUP = re.compile(r"^\s*(?:[-*#>|]|\d+[.)、]\s|【)|\[[A-Z][a-z]+\]|@\S")
_HARD_WRAP = 40  # a line this long without a sentence end continues on the next line

DEFAULT_OPENINGS = {"zh": ["说说我的看法。", "这个问题，我以前写过。"],
                    "en": ["Here is how I see it.", "I have written about this before."]}  # fmt: skip
DEFAULT_CLOSINGS = {"zh": ["以上是我的一点看法。"], "en": ["That is my take, for what it is worth."]}


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str
    line: int  # where it starts in its file (1-based)
    speaker: str = ""  # the label of a transcript line ("立委"), "" for plain prose


def paragraphs(lines: Sequence[tuple[int, str]]) -> list[Paragraph]:
    """Numbered lines as paragraphs: a non-empty line is one, unless the line before it is long
    and ends mid-sentence (hard-wrapped prose)."""
    found: list[Paragraph] = []
    current, start, joinable = "", 0, False
    for number, raw in lines:
        text = raw.strip()
        if not text:
            joinable = False
            continue
        if joinable and current:
            current += text if sty.cjk_count(current[-1:]) else f" {text}"
        else:
            if current:
                found.append(_paragraph(current, start))
            current, start = text, number
        joinable = len(text) >= _HARD_WRAP and not sty.is_complete(text)
    if current:
        found.append(_paragraph(current, start))
    return found


def _paragraph(text: str, line: int) -> Paragraph:
    match = _SPEAKER.match(text)
    if match and len(match.group(1).split()) <= 3:
        return Paragraph(text[match.end() :], line, match.group(1).strip())
    return Paragraph(text, line)


def read_documents(collection: Collection) -> list[list[Paragraph]]:
    """The paragraphs of each file of ``collection`` (files that cannot be read are skipped)."""
    documents = []
    for path in collection.files():
        try:
            document = load(path, boilerplate_repeats=collection.settings.boilerplate_repeats)
        except LoadError:
            continue
        documents.append([p for section in document.sections for p in paragraphs(section.lines)])
    return documents


def author_labels(documents: Sequence[Sequence[Paragraph]], names: Sequence[str] = ()) -> set[str]:
    """The speaker labels that are the author: the most frequent one (when transcripts are the
    author's group chats), and any label that is part of the author's name or has it in it."""
    counts = Counter(p.speaker for document in documents for p in document if p.speaker)
    labels = {label for label in counts if any(_names_match(label, name) for name in names)}
    if counts:
        top, top_count = counts.most_common(1)[0]
        if top_count >= 3 and top_count >= 0.2 * sum(counts.values()):
            labels.add(top)
    return labels


def _names_match(label: str, name: str) -> bool:
    parts = {part for part in re.split(r"[\s()（）,，/]+", name.lower()) if len(part) >= 2}
    label = label.lower()
    return label in parts or any(part in label for part in parts if sty.cjk_count(part) >= 2)


def author_prose(documents: Sequence[Sequence[Paragraph]], names: Sequence[str] = ()) -> list[list[str]]:
    """Per document, the author's paragraphs: other speakers' lines dropped, labels stripped."""
    mine = author_labels(documents, names)
    return [[p.text for p in document if not p.speaker or p.speaker in mine] for document in documents]


def exemplar_candidates(texts: Sequence[str], min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """Paragraphs fit to show the voice: complete sentences of prose, no links, lists or mentions."""
    seen: set[str] = set()
    chosen = []
    for text in texts:
        letters = sty.cjk_count(text) + sum(ch.isascii() and ch.isalpha() for ch in text)
        if (
            min_chars <= len(text) <= max_chars
            and text not in seen
            and sty.is_complete(text)
            and text_language(text)
            and letters >= 0.6 * len(text.replace(" ", ""))
            and sum(ch.isdigit() for ch in text) <= 0.05 * len(text)
            and not _URL.search(text)
            and not _MARKUP.search(text)
        ):
            seen.add(text)
            chosen.append(text)
    return chosen


def topics(texts: Sequence[str], k: int = 8, name: str = "") -> list[str]:
    """Keywords of the author's texts: jieba's tf-idf (English words count too), function words,
    numbers and the author's own name left out."""
    import jieba.analyse

    found = jieba.analyse.extract_tags("\n".join(texts), topK=k * 6)
    kept = [
        w
        for w in found
        if w.lower() not in sty.FUNCTION_WORDS and not w.isdigit() and len(w) >= 2 and w not in name
    ]
    return _unique_casefold(kept)[:k]


def _unique_casefold(items: Sequence[str]) -> list[str]:
    first: dict[str, str] = {}
    for item in items:
        first.setdefault(item.lower(), item)
    return list(first.values())


# -- the draft -----------------------------------------------------------------------------------
LANGUAGE_NAMES = {"zh": "Chinese", "en": "English"}


def style_rules(profile: sty.StyleProfile, openings: Sequence[str], closings: Sequence[str]) -> list[str]:
    """Short, human-readable lines about the voice, from the profile's numbers."""
    rules = [_languages_rule(profile), _lengths_rule(profile)]
    favourites = {"zh": [w for w in profile.function_words if sty.cjk_count(w)],
                  "en": [w for w in profile.function_words if not sty.cjk_count(w)]}  # fmt: skip
    if shown := _per_language(favourites, 6):
        rules.append(f"Favourite function words: {shown}.")
    if punctuation := _punctuation_rule(profile):
        rules.append(punctuation)
    if words := _per_language(profile.distinctive_words, 8):
        rules.append(f"Characteristic words: {words}.")
    if phrases := _per_language(profile.phrases, 5):
        rules.append(f"Recurring phrases: {phrases}.")
    if openings or closings:
        rules.append("Opens and closes posts with the author's own signature lines (opening/closing_lines).")
    return [rule for rule in rules if rule]


def _per_language(items: dict[str, list[str]], k: int) -> str:
    """Each language's first ``k``, "a, b; c, d" (Chinese word pairs written without the space)."""
    parts = []
    for language, found in items.items():
        shown = [item.replace(" ", "") if language == "zh" else item for item in found[:k]]
        if shown:
            parts.append(", ".join(shown))
    return "; ".join(parts)


def _languages_rule(profile: sty.StyleProfile) -> str:
    ordered = sorted(profile.languages.items(), key=lambda item: -item[1].share)
    parts = [f"{LANGUAGE_NAMES.get(lang, lang)} ({stats.share:.0%})" for lang, stats in ordered]
    rule = "Writes " + " and ".join(parts)
    if "zh" in profile.languages and profile.mixed_share >= 0.1:
        rule += f"; English terms inside Chinese sentences ({profile.mixed_share:.0%} of them)"
    return rule + ". Answers in the asker's language."


def _lengths_rule(profile: sty.StyleProfile) -> str:
    parts = []
    if zh := profile.languages.get("zh"):
        parts.append(
            f"Chinese about {zh.chars_per_sentence:.0f} characters ({zh.words_per_sentence:.0f} words)"
        )
    if en := profile.languages.get("en"):
        parts.append(f"English about {en.words_per_sentence:.0f} words")
    return "Sentences: " + "; ".join(parts) + "." if parts else ""


def _punctuation_rule(profile: sty.StyleProfile, min_rate: float = 0.3) -> str:
    """The marks the author uses often (and more than the reference, when there is one)."""
    ref = profile.reference_punctuation
    used = [
        (name, rate)
        for name, rate in profile.punctuation.items()
        if rate >= min_rate and (not ref or rate >= 1.2 * ref.get(name, 0.0))
    ]
    if not used:
        return ""
    used.sort(key=lambda item: -item[1])
    shown = ", ".join(
        f"{name} {rate:.1f}" + (f" (others {ref.get(name, 0.0):.1f})" if ref else "")
        for name, rate in used[:5]
    )
    return f"Punctuation per 1,000 characters: {shown}."


def system_prompt(name: str, keywords: Sequence[str], language: str) -> str:
    about = ", ".join(keywords) if keywords else "the subjects of your writings"
    text = (
        f"You are {name}. You write and talk about {about}. Answer in the language of the question, "
        "in your own voice, with the habits listed under style, and ground what you say in the passages "
        "of your own writings you are given. When your writings do not cover a question, say so plainly."
    )
    if language == "zh":
        text += " 用中文提问就用中文回答，保持你自己的口吻。"
    return text


@dataclass
class Draft:
    persona: Persona
    profile: sty.StyleProfile
    files: int
    paragraphs: int
    candidates: int  # exemplar candidates the exemplars were chosen from


def build_persona(
    author: Sequence[Sequence[Paragraph]],
    *,
    collection: str,
    name: str,
    contrast: Sequence[Sequence[Paragraph]] = (),
    contrast_collection: str = "",
    exemplars: int = 12,
) -> Draft:
    """A persona draft for ``name`` from the paragraphs of ``author``'s documents."""
    prose = author_prose(author, [name])
    texts = [text for document in prose for text in document]
    if not texts:
        raise ValueError(f"collection {collection!r} has no readable text")
    reference = [text for document in author_prose(contrast) for text in document]
    style = sty.profile(texts, reference)
    openings, closings = sty.signature_lines(prose)
    languages = [lang for lang, stats in style.languages.items() if stats.share >= 0.1] or ["en"]
    candidates = exemplar_candidates(texts)
    numbers = style.as_dict() | {"source": collection, "files": len(author), "paragraphs": len(texts)}
    if contrast_collection:
        numbers["contrast"] = contrast_collection
    persona = Persona(
        name=name,
        speaker_labels=sorted(author_labels(author, [name])),
        description=f"Drafted by `bots persona build` from the collection {collection!r}; edit before use.",
        language=style.main_language,
        system_prompt=system_prompt(name, topics(texts, name=name), style.main_language),
        style=style_rules(style, openings, closings),
        knowledge=[collection],
        # signature lines open and close posts (a column, a broadcast); a chat answer framed with
        # "Hello everyone, this is ..." every time would read oddly, so answers get plain frames
        opening_lines=openings,
        closing_lines=closings,
        answer_openings=[line for lang in languages for line in DEFAULT_OPENINGS[lang]],
        answer_closings=[line for lang in languages for line in DEFAULT_CLOSINGS[lang]],
        exemplars=sty.pick_exemplars(candidates, exemplars),
        extensions={"style_profile": numbers},
    )
    return Draft(persona, style, len(author), len(texts), len(candidates))


def author_name(collection: Collection) -> str:
    """The author's name: the collection's title, else its folder name."""
    return collection.settings.title or collection.name
