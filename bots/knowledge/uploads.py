"""Files that operators upload into a collection (the web console): checked before they land.

An upload is refused unless its name is a plain file name with a type the loaders read, it is
within the size limit, and the loader reads it through the same guards the ingest uses (size,
zip bombs, undetectable encodings, broken PDFs...). Only then is it moved into the collection's
folder, so a hostile file never sits where the next ingest would pick it up.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

from bots.knowledge.collection import Collection
from bots.knowledge.loaders import LOADERS, MAX_FILE_BYTES, LoadError, load

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
_UNSAFE = re.compile(r"[^\w.\- ]+", re.UNICODE)


class UploadError(ValueError):
    """An upload that was refused; the message says why in an operator's words."""


def safe_name(filename: str) -> str:
    """The last component of ``filename``, with path tricks and control characters removed."""
    name = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip(" .")
    if not name or name.startswith("."):
        raise UploadError(f"{filename!r} is not a usable file name")
    return name[:120]


def accept_upload(
    collection: Collection, filename: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
) -> Path:
    """Check an uploaded file and put it in the collection; returns where it went.

    Raises :class:`UploadError` (nothing written) for a wrong type, an oversize or unreadable file.
    A file of the same name is replaced (the next ingest re-indexes it as changed).
    """
    name = safe_name(filename)
    suffix = Path(name).suffix.lower()
    if suffix not in LOADERS:
        raise UploadError(f"{name}: {suffix or 'no extension'} is not a type we read ({', '.join(LOADERS)})")
    limit = min(max_bytes, MAX_FILE_BYTES)
    if len(data) > limit:
        raise UploadError(f"{name}: {len(data) / 2**20:.1f} MiB is over the {limit / 2**20:.0f} MiB limit")
    if not data.strip():
        raise UploadError(f"{name}: the file is empty")
    folder = collection.folder
    if not collection.admits(Path(name)):  # checked before anything is written or replaced
        raise UploadError(f"{name}: {folder.name}/collection.toml's include/exclude leave this file out")
    if (folder / name).is_dir():
        raise UploadError(f"{name}: a folder of that name is in {folder.name}")
    handle, staging = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=folder)  # hidden: never ingested
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        try:
            document = load(Path(staging), boilerplate_repeats=0)
        except LoadError as exc:
            raise UploadError(str(exc).replace(staging, name)) from None
        if not document.text.strip():
            raise UploadError(f"{name}: no text could be read from it")
        target = folder / name
        os.replace(staging, target)
        return target
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
