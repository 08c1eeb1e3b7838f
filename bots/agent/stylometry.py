"""Stylometry: the measurable habits of an author's prose, and a classifier that tells it from others'.

Everything here is a pure function of texts (no model, no network):

- :func:`sentences`, :func:`words`: Chinese-aware splitting (jieba for words);
- :func:`profile`: sentence lengths per language, punctuation rates, favourite function words and
  the words and phrases the author uses more than a reference (log-odds with an informative
  Dirichlet prior, Monroe et al. 2008), as plain numbers;
- :func:`signature_lines`: openings and closings the author repeats (a news anchor's fixed lines);
- :func:`pick_exemplars`: short passages of the author's prose that span the topics (MMR over
  tf-idf vectors);
- :class:`StyleClassifier`: the standard authorship method, character n-grams plus function-word
  frequencies, logistic regression (scikit-learn), with :func:`held_out` for its AUC.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

from bots.core.gate import text_language
from bots.knowledge.text import STOPWORDS as _STOPWORDS

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_WORDISH = re.compile(r"\w")
_SENTENCE_END = re.compile(r"(?:[。！？!?]+|…+|\.{3,}|\.(?=\s|$))[”」』\"'’）)]*")
_TERMINAL = re.compile(r"[。！？!?…”」』\"'’）).]\s*$")


def _listed(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ZH_FUNCTION_WORDS = _listed("""
的 地 得 了 着 过 吗 呢 吧 啊 呀 嘛 哈 啦 么 也 都 就 才 还 又 再 很 太 最 更 挺 蛮 而 与 和 及 或
并 把 被 给 让 对 从 向 在 于 以 之 其 这 那 这个 那个 这样 那样 这些 那些 什么 怎么 为什么 如何
其实 当然 所以 但是 但 而且 因为 不过 可是 只是 就是 于是 然而 如果 虽然 即便 甚至 总之 反正 大概
似乎 貌似 恐怕 居然 竟然 简直 确实 毕竟 其中 以及 一直 已经 还是 或者 并且 因此 否则 尤其 特别 非常
真的 可能 应该 只要 无论 不管 一下 一点 一些 一个 一种 一样 不是 没有 可以 不会 不能 能够 需要 这种
那种 自己 我们 你们 他们 它们 大家 这里 那里 时候 现在 还有 而是 所谓 起来 出来 进行
""")
EN_FUNCTION_WORDS = _listed("""
the a an of to in on at for by with from about into over after before and or but so yet nor as if than
that which who whom whose what when where why how this these those it its is are was were be been being
have has had do does did not no very really actually indeed just quite rather perhaps maybe however
therefore thus also even only still already i me my we our us you your he she his her they them their
one all some any more most much many such own same other can could would should will shall may might must
""")
FUNCTION_WORDS = frozenset(ZH_FUNCTION_WORDS) | frozenset(EN_FUNCTION_WORDS)

# name -> the characters counted (full- and half-width forms where both are used)
PUNCTUATION: dict[str, tuple[str, ...]] = {
    "——": ("——", "--"),
    "……": ("……", "..."),
    "！": ("！", "!"),
    "？": ("？", "?"),
    "quotes": ("“", "”", "「", "」", "『", "』", '"'),
    "parentheses": ("（", "）", "(", ")"),
    "；": ("；", ";"),
    "：": ("：", ":"),
}
GREETING = re.compile(
    r"(?:^|[，,]\s*)我是|大家好|各位|你好|您好|欢迎|谢谢|感谢|以上|下次|下回|再见|回见|分享|"
    r"\b(?:I am|I'm|hello|hi|welcome|thanks|thank you|see you|goodbye|until next)\b",
    re.IGNORECASE,
)


# -- splitting -----------------------------------------------------------------------------------
def sentences(text: str) -> list[str]:
    """Sentences of ``text``: cut after 。！？!? … and a full stop before a space, and at line ends;
    closing quotes stay with their sentence."""
    found: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(line):
            piece = line[start : match.end()].strip()
            if piece:
                found.append(piece)
            start = match.end()
        rest = line[start:].strip()
        if rest:
            found.append(rest)
    return found


@cache
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def words(text: str) -> list[str]:
    """Words: jieba's for Chinese, lower-cased Latin words; no punctuation or spaces."""
    return [w.lower() for w in _jieba().lcut(text) if _WORDISH.search(w) and w.strip()]


def is_complete(text: str) -> bool:
    """Whether ``text`` ends like a sentence (not a heading or a cut-off line)."""
    return bool(_TERMINAL.search(text))


def cjk_count(text: str) -> int:
    return len(_CJK.findall(text))


# -- the profile ---------------------------------------------------------------------------------
LANGUAGES = ("zh", "en")
# The reference speaks for a language when it has prose in it: enough words, in sentences of some
# length (slides and term lists in a language do not show how its writers write).
MIN_REFERENCE_WORDS = 1000
MIN_REFERENCE_WORDS_PER_SENTENCE = 10
# Discourse words: the function words that show a voice; the favourites when there is no reference.
DISCOURSE_WORDS = _listed("""
其实 当然 所以 但是 而且 因为 不过 可是 只是 就是 于是 然而 如果 虽然 即便 甚至 总之 反正 大概 似乎
貌似 恐怕 居然 竟然 简直 确实 毕竟 尤其 特别 非常 真的 一下 一点 嘛 呢 吧 啊 呀 哈 啦 挺 蛮 actually
indeed really just quite rather perhaps maybe however therefore thus also even only still already
very so yet
""")


@dataclass
class LanguageStats:
    share: float  # of the text's letters: CJK characters, Latin words counted as two
    sentences: int
    chars_per_sentence: float
    words_per_sentence: float


@dataclass
class StyleProfile:
    languages: dict[str, LanguageStats]
    mixed_share: float  # Chinese sentences with Latin words in them
    punctuation: dict[str, float]  # per 1,000 characters
    function_words: dict[str, float]  # favourite ones, per 1,000 words of their language
    distinctive_words: dict[str, list[str]]  # per language: used more than the reference
    phrases: dict[str, list[str]]  # per language: word pairs used more than the reference
    reference_punctuation: dict[str, float] = field(default_factory=dict)
    reference_function_words: dict[str, float] = field(default_factory=dict)

    @property
    def main_language(self) -> str:
        if not self.languages:
            return "en"
        return max(self.languages, key=lambda lang: self.languages[lang].share)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready numbers, rounded (for ``extensions["style_profile"]``)."""
        data: dict[str, Any] = {
            "languages": {
                lang: {
                    "share": round(s.share, 3),
                    "sentences": s.sentences,
                    "chars_per_sentence": round(s.chars_per_sentence, 1),
                    "words_per_sentence": round(s.words_per_sentence, 1),
                }
                for lang, s in self.languages.items()
            },
            "mixed_share": round(self.mixed_share, 3),
            "punctuation_per_1000_chars": _rounded(self.punctuation),
            "function_words_per_1000_words": _rounded(self.function_words),
            "distinctive_words": self.distinctive_words,
            "phrases": self.phrases,
        }
        if self.reference_punctuation:
            data["reference_punctuation"] = _rounded(self.reference_punctuation)
        if self.reference_function_words:
            data["reference_function_words"] = _rounded(self.reference_function_words)
        return data


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 2) for key, value in values.items()}


def language_stats(texts: Sequence[str]) -> tuple[dict[str, LanguageStats], float]:
    """Sentence counts and mean lengths per language, and the share of mixed Chinese sentences."""
    by_language: dict[str, list[str]] = {"zh": [], "en": []}
    for text in texts:
        for sentence in sentences(text):
            language = text_language(sentence)
            if language:
                by_language[language].append(sentence)
    weights = {
        "zh": sum(cjk_count(s) for s in by_language["zh"]),
        "en": sum(2 * len(_LATIN_WORD.findall(s)) for s in by_language["en"]),
    }
    total = sum(weights.values()) or 1
    stats = {
        language: LanguageStats(
            share=weights[language] / total,
            sentences=len(found),
            chars_per_sentence=sum(len(s) for s in found) / len(found),
            words_per_sentence=sum(len(words(s)) for s in found) / len(found),
        )
        for language, found in by_language.items()
        if found
    }
    chinese = by_language["zh"]
    mixed = sum(bool(_LATIN_WORD.search(s)) for s in chinese) / len(chinese) if chinese else 0.0
    return stats, mixed


def punctuation_rates(texts: Iterable[str]) -> dict[str, float]:
    """Each mark of :data:`PUNCTUATION` per 1,000 non-space characters."""
    joined = "".join(texts)
    size = sum(not ch.isspace() for ch in joined) or 1
    rates = {}
    for name, forms in PUNCTUATION.items():
        count = 0
        rest = joined
        for form in sorted(forms, key=len, reverse=True):  # "……" before "…", "--" before "-"
            count += rest.count(form)
            rest = rest.replace(form, " ")
        rates[name] = 1000 * count / size
    return rates


def by_language(tokens: Iterable[str]) -> dict[str, list[str]]:
    """Words split into Chinese and English (numbers and other scripts left out)."""
    split: dict[str, list[str]] = {"zh": [], "en": []}
    for token in tokens:
        if cjk_count(token):
            split["zh"].append(token)
        elif _LATIN_WORD.fullmatch(token):
            split["en"].append(token)
    return split


def function_word_rates(tokens: Sequence[str]) -> dict[str, float]:
    """Each function word per 1,000 words (of one language)."""
    counts = Counter(tokens)
    total = len(tokens) or 1
    return {w: 1000 * counts[w] / total for w in FUNCTION_WORDS if counts[w]}


def favourite_function_words(
    rates: dict[str, float], reference: dict[str, float] | None, k: int
) -> list[str]:
    """Function words the author uses well above the reference's rate; without a reference, the
    discourse words (其实, 当然, actually...) the author uses most."""
    if reference is None:
        return sorted((w for w in rates if w in DISCOURSE_WORDS), key=lambda w: -rates[w])[:k]
    floor = 0.2  # per 1,000 words: a word the reference never uses is not infinitely favoured

    def lift(word: str) -> float:
        return rates[word] / max(reference.get(word, 0.0), floor) * math.sqrt(rates[word])

    over = [w for w in rates if rates[w] >= 0.5 and rates[w] >= 1.3 * reference.get(w, 0.0)]
    return sorted(over, key=lift, reverse=True)[:k]


def log_odds(
    counts: Counter[str], reference: Counter[str] | dict[str, float], prior: float = 500.0
) -> dict[str, float]:
    """z-scores of the log-odds ratio of each word in ``counts`` against ``reference``, with an
    informative Dirichlet prior of total weight ``prior`` (Monroe, Colaresi & Quinn 2008)."""
    n_a = sum(counts.values())
    n_r = sum(reference.values())
    if not n_a or not n_r:
        return {}
    scores = {}
    for word, a in counts.items():
        r = reference.get(word, 0.0)
        alpha = prior * (a + r) / (n_a + n_r) + 0.01
        delta = math.log((a + alpha) / (n_a + prior - a - alpha)) - math.log(
            (r + alpha) / (n_r + prior - r - alpha)
        )
        scores[word] = delta / math.sqrt(1 / (a + alpha) + 1 / (r + alpha))
    return scores


@cache
def jieba_reference() -> dict[str, float]:
    """Word frequencies of jieba's dictionary: general Chinese, the reference of last resort."""
    frequencies: dict[str, float] = {}
    with _jieba().get_dict_file() as lines:
        for raw in lines:
            word, _, rest = raw.decode("utf-8", "ignore").partition(" ")
            if rest:
                frequencies[word] = float(rest.split(" ", 1)[0] or 0)
    return frequencies


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its topic (no function words, numbers or single letters)."""
    return [w for w in words(text) if _content(w)]


def _content(word: str) -> bool:
    return word not in FUNCTION_WORDS and word not in _STOPWORDS and len(word) >= 2 and not word.isdigit()


def distinctive(
    counts: Counter[str], references: Sequence[Counter[str] | dict[str, float]], k: int, min_count: int = 3
) -> list[str]:
    """The ``k`` content words (or phrases) ``counts`` over-uses most against every reference (the
    lowest z-score counts); without references, the most frequent ones."""
    kept = Counter({w: c for w, c in counts.items() if c >= min_count and all(map(_content, w.split(" ")))})
    if not references:
        return [w for w, _ in kept.most_common(k)]
    scored = [log_odds(kept, reference) for reference in references]
    scores = {w: min(s[w] for s in scored) for w in kept}
    return [w for w in sorted(scores, key=lambda w: -scores[w]) if scores[w] > 0][:k]


_CLAUSE_BREAK = re.compile(r"[，。！？、；：,.!?;:()（）“”\"'\[\]【】《》<>…—\n]+")


def clauses(texts: Iterable[str]) -> list[list[str]]:
    """The words of each clause (text between punctuation marks)."""
    return [found for text in texts for part in _CLAUSE_BREAK.split(text) if (found := words(part))]


def bigrams(clause_words: Iterable[Sequence[str]]) -> dict[str, Counter[str]]:
    """Pairs of neighbouring words within clauses, per language (Chinese when a word is)."""
    pairs: dict[str, Counter[str]] = {"zh": Counter(), "en": Counter()}
    for found in clause_words:
        for a, b in itertools.pairwise(found):
            if a != b and not a.isdigit() and not b.isdigit():
                pairs["zh" if cjk_count(a + b) else "en"][f"{a} {b}"] += 1
    return pairs


def profile(texts: Sequence[str], reference: Sequence[str] = (), top: int = 10) -> StyleProfile:
    """The style profile of ``texts`` (the author's prose), each language on its own. ``reference``:
    texts of other authors on the same subjects; Chinese words are also compared with general
    Chinese (jieba's dictionary), so common words do not pass for habits."""
    languages, mixed = language_stats(texts)
    my_clauses, their_clauses = clauses(texts), clauses(reference)
    mine = by_language(w for found in my_clauses for w in found)
    theirs = by_language(w for found in their_clauses for w in found)
    my_pairs, their_pairs = bigrams(my_clauses), bigrams(their_clauses)
    function_words: dict[str, float] = {}
    reference_function_words: dict[str, float] = {}
    distinctive_words: dict[str, list[str]] = {}
    phrases: dict[str, list[str]] = {}
    their_languages, _ = language_stats(reference)
    for language in LANGUAGES:
        if not mine[language]:
            continue
        prose = their_languages.get(language)
        known = (
            prose is not None
            and len(theirs[language]) >= MIN_REFERENCE_WORDS
            and prose.words_per_sentence >= MIN_REFERENCE_WORDS_PER_SENTENCE
        )
        rates = function_word_rates(mine[language])
        ref_rates = function_word_rates(theirs[language]) if known else None
        for word in favourite_function_words(rates, ref_rates, top):
            function_words[word] = rates[word]
            if ref_rates is not None:
                reference_function_words[word] = ref_rates.get(word, 0.0)
        references: list[Counter[str] | dict[str, float]] = [Counter(theirs[language])] if known else []
        if language == "zh":
            references.append(jieba_reference())
        distinctive_words[language] = distinctive(Counter(mine[language]), references, top)
        phrases[language] = distinctive(my_pairs[language], [their_pairs[language]] if known else [], top)
    return StyleProfile(
        languages=languages,
        mixed_share=mixed,
        punctuation=punctuation_rates(texts),
        function_words=function_words,
        distinctive_words=distinctive_words,
        phrases=phrases,
        reference_punctuation=punctuation_rates(reference) if reference else {},
        reference_function_words=reference_function_words,
    )


# -- signature lines -----------------------------------------------------------------------------
def _key(sentence: str) -> str:
    """What recurring lines share: their first four CJK characters or letters, or first three words."""
    if text_language(sentence) == "zh":
        return "".join(ch for ch in sentence if _CJK.match(ch) or ch.isalpha())[:4]
    return " ".join(w.lower() for w in _LATIN_WORD.findall(sentence)[:3])


def signature_lines(
    documents: Sequence[Sequence[str]], *, min_repeats: int = 2, max_chars: int = 80, k: int = 3
) -> tuple[list[str], list[str]]:
    """Openings and closings the author repeats: first and last sentences of paragraphs that start
    alike in ``min_repeats`` places and greet, introduce or sign off ("我是…", "以上…", "Thanks…").

    ``documents``: paragraphs in order. A one-sentence paragraph right after a title (a line that
    does not end a sentence) opens a post, one right before a title closes it."""
    openings: dict[str, list[str]] = {}
    closings: dict[str, list[str]] = {}
    for paragraphs in documents:
        for i, paragraph in enumerate(paragraphs):
            found = sentences(paragraph)
            if not found:
                continue
            starts = i == 0 or not is_complete(paragraphs[i - 1])
            ends = i == len(paragraphs) - 1 or not is_complete(paragraphs[i + 1])
            single = len(found) == 1
            if not (single and ends and not starts):
                _add(openings, found[0], max_chars)
            if not (single and starts and not ends):
                _add(closings, found[-1], max_chars)
    return _signatures(openings, min_repeats, k), _signatures(closings, min_repeats, k)


def _add(groups: dict[str, list[str]], sentence: str, max_chars: int) -> None:
    key = _key(sentence)
    if len(sentence) <= max_chars and len(key) >= 3 and is_complete(sentence) and GREETING.search(sentence):
        groups.setdefault(key, []).append(sentence)


def _signatures(groups: dict[str, list[str]], min_repeats: int, k: int) -> list[str]:
    """The most typical line of each group of at least ``min_repeats``, largest groups first."""
    chosen = []
    for members in groups.values():
        if len(members) >= min_repeats:
            typical = Counter(members).most_common()
            best = min((s for s, c in typical if c == typical[0][1]), key=len)
            chosen.append((len(members), best))
    chosen.sort(key=lambda item: (-item[0], len(item[1])))
    return [line for _, line in chosen[:k]]


# -- exemplars -----------------------------------------------------------------------------------
def pick_exemplars(candidates: Sequence[str], k: int, diversity: float = 0.6) -> list[str]:
    """``k`` of ``candidates`` that span their topics: maximal marginal relevance over tf-idf
    vectors (typical of the whole, unlike those already picked), languages in proportion."""
    if len(candidates) <= k:
        return list(candidates)
    by_language: dict[str, list[str]] = {}
    for text in candidates:
        by_language.setdefault(text_language(text) or "en", []).append(text)
    quotas = _quotas({language: len(texts) for language, texts in by_language.items()}, k)
    return [
        text for language, texts in by_language.items() for text in _mmr(texts, quotas[language], diversity)
    ]


def _quotas(counts: dict[str, int], k: int) -> dict[str, int]:
    """Slots per language, in proportion to its candidates: each smaller language at least two
    (when it has them), the largest the rest."""
    total = sum(counts.values())
    ordered = sorted(counts, key=lambda language: counts[language])
    quotas = {
        language: min(counts[language], max(2, round(k * counts[language] / total)))
        for language in ordered[:-1]
    }
    quotas[ordered[-1]] = max(0, k - sum(quotas.values()))
    return quotas


def _mmr(texts: Sequence[str], k: int, diversity: float) -> list[str]:
    if len(texts) <= k:
        return list(texts)
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(
        tokenizer=content_words, lowercase=False, token_pattern=None, sublinear_tf=True
    ).fit_transform(texts)
    centroid = np.asarray(vectors.mean(axis=0)).ravel()
    typicality = vectors @ centroid / (np.linalg.norm(centroid) or 1.0)
    similarity = (vectors @ vectors.T).toarray()
    chosen: list[int] = []
    while len(chosen) < k:
        redundancy = similarity[:, chosen].max(axis=1) if chosen else np.zeros(len(texts))
        score = (1 - diversity) * typicality - diversity * redundancy
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return [texts[i] for i in chosen]


# -- the classifier ------------------------------------------------------------------------------
@lru_cache(maxsize=20_000)
def _function_tokens(text: str) -> tuple[str, ...]:
    return tuple(w for w in words(text) if w in FUNCTION_WORDS)


def function_tokens(text: str) -> list[str]:
    """The function words of ``text`` in order (cached: cross-validation sees each text often)."""
    return list(_function_tokens(text))


class StyleClassifier:
    """Author or not: tf-idf of character 1-3 grams (within words) plus function-word frequencies,
    logistic regression with balanced classes. :meth:`author_probability` gives P(author)."""

    def __init__(self, c: float = 4.0, max_features: int = 60_000) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        features = FeatureUnion([
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True,
                                      min_df=2, max_features=max_features)),
            ("function", TfidfVectorizer(tokenizer=function_tokens, vocabulary=sorted(FUNCTION_WORDS),
                                         lowercase=False, token_pattern=None, use_idf=False)),
        ])  # fmt: skip
        self.model = make_pipeline(features, LogisticRegression(C=c, class_weight="balanced", max_iter=2000))

    def fit(self, author: Sequence[str], contrast: Sequence[str]) -> StyleClassifier:
        if not author or not contrast:
            raise ValueError("the style classifier needs texts of the author and of other authors")
        self.model.fit([*author, *contrast], [1] * len(author) + [0] * len(contrast))
        return self

    def author_probability(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self.model.predict_proba(list(texts))[:, 1]]


@dataclass
class HeldOut:
    """How the classifier scores texts it was not trained on."""

    author: list[float]  # P(author) of held-out author segments
    contrast: list[float]  # P(author) of held-out contrast segments
    auc: float
    threshold: float = 0.5  # P(author) above which a text is attributed to the author (Youden's J)


def segments(paragraphs: Sequence[str], size: int = 300) -> list[str]:
    """Consecutive paragraphs joined into pieces of about ``size`` characters (long paragraphs cut
    at sentence ends), the unit the classifier is trained and tested on."""
    pieces: list[str] = []
    current = ""
    for paragraph in paragraphs:
        for part in _cut(paragraph, size):
            current = f"{current}\n{part}" if current else part
            if len(current) >= size:
                pieces.append(current)
                current = ""
    if len(current) >= size // 3:
        pieces.append(current)
    return pieces


def _cut(paragraph: str, size: int) -> list[str]:
    if len(paragraph) <= 2 * size:
        return [paragraph]
    parts, current = [], ""
    for sentence in sentences(paragraph):
        current = f"{current} {sentence}" if current and not cjk_count(sentence) else current + sentence
        if len(current) >= size:
            parts.append(current)
            current = ""
    return [*parts, current] if current else parts


def folds(count: int, k: int = 4, block: int = 5) -> list[int]:
    """The fold of each of ``count`` items: blocks of ``block`` consecutive items take turns, so
    neighbouring text (one post, one topic) is never split between training and test."""
    if count < k * block:
        block = max(1, count // k)
    return [(i // block) % k for i in range(count)]


def held_out(author: Sequence[str], contrast: Sequence[str], k: int = 4) -> tuple[StyleClassifier, HeldOut]:
    """Cross-validated scores: each of ``k`` folds of both sides is scored by a classifier trained
    on the other folds (AUC over all of them); then a classifier trained on everything."""
    from sklearn.metrics import roc_auc_score

    if min(len(author), len(contrast)) < k:
        raise ValueError(f"the style classifier needs at least {k} texts of the author and of others")
    author_folds, contrast_folds = folds(len(author), k), folds(len(contrast), k)
    p_author = [0.0] * len(author)
    p_contrast = [0.0] * len(contrast)
    for fold in range(k):
        classifier = StyleClassifier().fit(
            [t for t, f in zip(author, author_folds, strict=True) if f != fold],
            [t for t, f in zip(contrast, contrast_folds, strict=True) if f != fold],
        )
        for texts, fold_of, scores in (
            (author, author_folds, p_author),
            (contrast, contrast_folds, p_contrast),
        ):
            chosen = [i for i, f in enumerate(fold_of) if f == fold]
            for i, p in zip(chosen, classifier.author_probability([texts[i] for i in chosen]), strict=True):
                scores[i] = p
    labels = [1] * len(author) + [0] * len(contrast)
    auc = float(roc_auc_score(labels, p_author + p_contrast))
    held = HeldOut(p_author, p_contrast, auc, best_threshold(labels, p_author + p_contrast))
    return StyleClassifier().fit(author, contrast), held


def best_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """The score that best separates the classes (largest true minus false positive rate)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = max(range(len(thresholds)), key=lambda i: tpr[i] - fpr[i])
    return float(min(thresholds[best], 1.0))
