"""Big read-only lookup tables kept on disk (SQLite) and read a key at a time.

A cold ``bots search`` must not spend a second loading half a million dictionary entries to cut a
ten-character question: jieba's word frequencies and the USE tokenizer's piece table are written
here once (at ingest, or on the first query) and looked up on demand afterwards. The lookups give
exactly what the in-memory tables give, so tokens and vectors do not change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class DiskTable:
    """A read-only ``str -> int`` mapping in SQLite: ``get``, ``in`` and ``[]`` as a dict answers
    them, plus the ``meta`` values written with it. Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        self._memo: dict[str, int | None] = {}
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        self.meta: dict[str, Any] = {key: json.loads(value) for key, value in rows}

    def get(self, key: str, default: int | None = None) -> int | None:
        try:
            value = self._memo[key]
        except KeyError:
            with self._lock:
                row = self._db.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
            value = row[0] if row else None
            if len(self._memo) > 100_000:  # a long-running host: keep the memo bounded
                self._memo.clear()
            self._memo[key] = value
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __getitem__(self, key: str) -> int:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def items(self) -> Iterator[tuple[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM entries").fetchall()
        return iter(rows)

    def close(self) -> None:
        self._db.close()


def write_table(path: Path, entries: Iterable[tuple[str, int]], meta: dict[str, Any]) -> None:
    """Write the table beside ``path`` and move it in place: readers see the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.unlink(missing_ok=True)
    db = sqlite3.connect(temporary)
    try:
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.executemany("INSERT INTO entries VALUES (?, ?)", entries)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.commit()
    finally:
        db.close()
    os.replace(temporary, path)


def open_table(path: Path, **expected: Any) -> DiskTable | None:
    """The table at ``path`` when it exists and was written with ``expected`` meta values, else None."""
    if not path.is_file():
        return None
    try:
        table = DiskTable(path)
    except sqlite3.Error:
        return None
    if any(table.meta.get(key) != value for key, value in expected.items()):
        table.close()
        return None
    return table
