"""Text normalisation and tokenising for keyword search, Chinese-aware (jieba + OpenCC).

jieba, OpenCC and the stemmer load on first use. Questions are cut with jieba's dictionary read
from disk a word at a time (``query_tokenize``), which gives the same tokens as the full dictionary
without its second of loading.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from bots.knowledge.lookup import open_table, write_table

log = logging.getLogger("bots.knowledge")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORDISH = re.compile(r"\w", re.UNICODE)
# Very common function words that carry no topic, in both languages.
_STOPWORDS_TEXT = """
的 了 是 在 和 与 及 也 就 都 而 或 这 那 之 其 着 把 被 让 给 对 从 向 于 吗 呢 吧 啊 呀 么 个
什么 怎么 哪 哪里 哪个 多少 几 为什么 如何 是否 有 没有 会 能 可以 我 你 他 她 它 我们 你们 他们
a an the of to in on at for by with from and or but is are was were be been being do does did
what which who whom whose when where why how that this these those it its as into than then
there their they them he she his her you your we our i me my not no can could would should
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


@cache
def _t2s() -> Any:
    import opencc

    return opencc.OpenCC("tw2s")  # t2s plus variant characters (睡著 -> 睡着)


def normalize(text: str) -> str:
    """NFKC (full-width to half-width), traditional to simplified Chinese, lower case."""
    text = unicodedata.normalize("NFKC", text)
    if _CJK.search(text):
        text = _t2s().convert(text)
    return text.lower()


_LATIN_WORD = re.compile(r"^[a-z]+$")


_stemmer_lock = threading.Lock()  # the stemmer keeps state on itself: one caller at a time


@cache
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    stemmer = _stemmer()
    with _stemmer_lock:
        return stemmer.stemWord(word)


@cache
def _jieba() -> Any:
    """jieba's default tokenizer, with its whole dictionary (ingest cuts whole documents)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba.dt


_cutters: dict[Path, Any] = {}
_cutters_lock = threading.Lock()
WORDS_TABLE = "jieba-words.sqlite"


def _dictionary_stamp() -> dict[str, Any]:
    import jieba

    dictionary = Path(jieba.__file__).parent / jieba.DEFAULT_DICT_NAME
    return {"jieba": jieba.__version__, "dictionary_bytes": dictionary.stat().st_size}


def prepare_query_dictionary(cache_dir: Path) -> Path:
    """Write jieba's dictionary to ``cache_dir`` for ``query_tokenize`` (once; about 1.5 s)."""
    path = cache_dir / WORDS_TABLE
    stamp = _dictionary_stamp()
    table = open_table(path, **stamp)
    if table is None:
        full = _jieba()
        write_table(path, full.FREQ.items(), {**stamp, "total": full.total})
    else:
        table.close()
    return path


def _query_cutter(cache_dir: Path | None) -> Any:
    """A jieba tokenizer whose dictionary is read from disk a word at a time (the same tokens as
    the full dictionary), or the full one when the table cannot be written."""
    if cache_dir is None:
        return _jieba()
    with _cutters_lock:
        cutter = _cutters.get(cache_dir)
        if cutter is not None:
            return cutter
        table = open_table(cache_dir / WORDS_TABLE, **_dictionary_stamp())
        if table is None:
            try:
                prepare_query_dictionary(cache_dir)
            except OSError as exc:  # a read-only data folder: the full dictionary serves
                log.debug("jieba's dictionary could not be written to %s: %s", cache_dir, exc)
            table = open_table(cache_dir / WORDS_TABLE, **_dictionary_stamp())
        if table is None:
            cutter = _jieba()
        else:
            import jieba

            cutter = jieba.Tokenizer()
            cutter.FREQ, cutter.total, cutter.initialized = table, table.meta["total"], True
        _cutters[cache_dir] = cutter
        return cutter


_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{2,}")


def tokenize(text: str) -> list[str]:
    """Search tokens: jieba's search-mode cut (words plus their sub-words), English words
    stemmed (flashes -> flash), no stop words; plus overlapping CJK character bigrams, which
    catch names and words jieba's dictionary does not know (measured: +3 points recall@1 on
    Chinese questions in bench/retrieval_eval.py)."""
    return _tokens(text, _jieba())


def query_tokenize(text: str, cache_dir: Path | None, bigrams: bool = True) -> list[str]:
    """``tokenize`` for a question, with jieba's dictionary read from ``cache_dir`` word by word;
    without ``bigrams``, jieba's words and the stemmed English ones alone."""
    return _tokens(text, _query_cutter(cache_dir), bigrams)


def _tokens(text: str, cutter: Any, bigrams: bool = True) -> list[str]:
    normalized = normalize(text)
    tokens = [
        _stem(token) if _LATIN_WORD.match(token) else token
        for token in cutter.lcut_for_search(normalized)
        if _WORDISH.search(token) and token.strip() and token not in STOPWORDS
    ]
    return tokens + _bigrams(normalized) if bigrams else tokens


def cjk_bigrams(text: str) -> list[str]:
    """The CJK character bigrams ``tokenize`` adds to jieba's words (``query_tokenize`` without
    ``bigrams`` plus these is ``query_tokenize``)."""
    return _bigrams(normalize(text))


def _bigrams(normalized: str) -> list[str]:
    return [run[i : i + 2] for run in _CJK_RUN.findall(normalized) for i in range(len(run) - 1)]


_LATIN = re.compile(r"[A-Za-z]")


def cjk_share(text: str) -> float:
    """The share of CJK characters among CJK and Latin letters (digits and marks don't count)."""
    cjk = len(_CJK.findall(text))
    letters = cjk + len(_LATIN.findall(text))
    return cjk / letters if letters else 0.0


_LATIN_WORDS = re.compile(r"[A-Za-z]+")


def is_cjk_query(text: str) -> bool:
    """Whether a question is Chinese: at least as many CJK characters as Latin words, so a
    Chinese question with English terms ("chatGPT pro 每个月多少钱？") is Chinese; measured in
    bench/retrieval_eval.py (a letter share called such questions English)."""
    return len(_CJK.findall(text)) >= max(1, len(_LATIN_WORDS.findall(text)))


def english_tokens(text: str) -> list[str]:
    """The English words of ``text`` as the search tokens have them: lower case, stemmed, no stop words."""
    return [_stem(word) for word in _LATIN_WORDS.findall(text.lower()) if word not in STOPWORDS]


def squash(text: str) -> str:
    """Normalised text without punctuation or spaces, for quotation matching."""
    return "".join(ch for ch in normalize(text) if _WORDISH.match(ch))


# Names, numbers and Latin words: what survives translation (ICML 2024, LeCun, 63B, GPT-3, 1926).
_ENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+\-]*[A-Za-z0-9]|[0-9]")
_NUMBER = re.compile(r"^[0-9][0-9.]*$")


def entities(text: str) -> list[str]:
    """The question's words that read the same in Chinese and English text: numbers, and Latin
    words that are capitalised, contain a digit, or stand in Chinese text (``ChatGPT``,
    ``Homeostat``); common English words are left out."""
    normalized = unicodedata.normalize("NFKC", text)
    in_cjk = bool(_CJK.search(normalized))
    found = []
    for word in _ENTITY.findall(normalized):
        if word.lower() in STOPWORDS:
            continue
        if _NUMBER.match(word) or any(c.isdigit() for c in word) or any(c.isupper() for c in word) or in_cjk:
            found.append(word)
    return found
