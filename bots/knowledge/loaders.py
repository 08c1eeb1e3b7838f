"""Loaders: a file becomes sections of numbered lines (line numbers of the original file).

.txt .md .html .pdf .epub .docx. Legacy Chinese encodings (GB18030, Big5) are detected instead
of crashing. Any failure is a :class:`LoadError` naming the file; the ingest reports and skips it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from charset_normalizer import from_bytes

MAX_FILE_BYTES = 200 * 1024 * 1024
_BLOCK_TAGS = ["p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "blockquote", "td", "th", "dt", "dd",
               "figcaption", "caption", "div", "section", "article", "main", "aside", "header", "footer",
               "nav", "body"]  # fmt: skip
MAX_UNZIPPED_BYTES = 1024 * 1024 * 1024  # .docx and .epub are zip files: refuse zip bombs


class LoadError(Exception):
    """A file that cannot be read; the message names it. The ingest skips it."""


@dataclass
class Section:
    """Lines of one part of a document: (line number in the original, text)."""

    lines: list[tuple[int, str]]
    page: int | None = None  # PDF page, 1-based
    part: str = ""  # e.g. the EPUB chapter file


@dataclass
class Document:
    path: Path
    title: str
    sections: list[Section] = field(default_factory=list)
    boilerplate_lines: int = 0  # lines blanked as repeated boilerplate

    @property
    def text(self) -> str:
        return "\n".join(text for section in self.sections for _, text in section.lines)


def decode(data: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) first, then the detected encoding (GB18030, Big5, ...)."""
    with contextlib.suppress(UnicodeDecodeError):
        return data.decode("utf-8-sig")
    best = from_bytes(data).best()
    if best is None or best.encoding is None:
        raise LoadError(f"{path}: cannot detect the text encoding")
    encoding = {"gb2312": "gb18030", "gbk": "gb18030"}.get(best.encoding, best.encoding)
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise LoadError(f"{path}: looks like {best.encoding} but does not decode: {exc}") from None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # not str.splitlines: form feeds are no line breaks in editors


def _numbered(text: str, first: int = 1) -> list[tuple[int, str]]:
    return list(enumerate(_LINE_BREAK.split(text), first))


def load_text(path: Path) -> Document:
    text = decode(path.read_bytes(), path)
    return Document(path, _title_from_markdown(text) or path.stem, [Section(_numbered(text))])


def _title_from_markdown(text: str) -> str:
    match = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def load_html(path: Path) -> Document:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(decode(path.read_bytes(), path), "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else ""
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    # Every text node belongs to its nearest block element; blocks keep their source line.
    blocks: dict[int, tuple[int, list[str]]] = {}
    for node in soup.find_all(string=True):
        if type(node) is not NavigableString or not node.strip():
            continue  # comments, doctype and CDATA are subclasses: skipped
        block = node.find_parent(_BLOCK_TAGS) or soup
        line = getattr(block, "sourceline", None) or 1
        blocks.setdefault(id(block), (line, []))[1].append(node.strip())
    lines: list[tuple[int, str]] = []
    for start, parts in blocks.values():
        text = " ".join(parts)
        lines += [(start + i, piece) for i, piece in enumerate(_LINE_BREAK.split(text)) if piece.strip()]
    return Document(path, title or path.stem, [Section(sorted(lines, key=lambda item: item[0]))])


def load_pdf(path: Path) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise LoadError(f"{path}: the PDF is encrypted")
        sections = [
            Section(_numbered(page.extract_text() or ""), page=number)
            for number, page in enumerate(reader.pages, 1)
        ]
        title = str((reader.metadata or {}).get("/Title") or "") or path.stem
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"{path}: not a readable PDF: {exc}") from None
    return Document(path, title, sections)


def _check_zip(path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise LoadError(f"{path}: not a zip container: {exc}") from None
    if unpacked > MAX_UNZIPPED_BYTES:
        raise LoadError(f"{path}: unpacks to {unpacked // 2**20} MiB; refusing a possible zip bomb")


def load_docx(path: Path) -> Document:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    _check_zip(path)
    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise LoadError(f"{path}: not a readable .docx: {exc}") from None
    # A .docx has no lines; paragraph numbers stand in for them (tables follow, row by row).
    texts = [p.text for p in document.paragraphs]
    for table in document.tables:
        texts += [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
    lines = list(enumerate(texts, 1))
    title = document.core_properties.title or path.stem
    return Document(path, title, [Section(lines)])


def load_epub(path: Path) -> Document:
    import ebooklib
    from bs4 import BeautifulSoup
    from ebooklib import epub

    _check_zip(path)
    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as exc:  # ebooklib raises bare exceptions of many kinds
        raise LoadError(f"{path}: not a readable EPUB: {exc}") from None
    sections = []
    for item in book.get_items_of_type(ebooklib.ITEM_DOCUMENT):
        soup = BeautifulSoup(item.get_content(), "html.parser")
        text = soup.get_text("\n")
        sections.append(Section(_numbered(text), part=item.get_name()))
    titles = book.get_metadata("DC", "title")
    return Document(path, titles[0][0] if titles else path.stem, sections)


LOADERS: dict[str, Callable[[Path], Document]] = {
    ".txt": load_text,
    ".md": load_text,
    ".markdown": load_text,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".epub": load_epub,
}


# Libraries that log or warn about the broken files they read ("invalid pdf header", "EOF marker
# not found"). The ingest already reports such a file in one line; their own noise only clutters
# the terminal, so it is muted while a file loads.
_NOISY_LOGGERS = ("pypdf", "ebooklib", "docx", "bs4", "charset_normalizer")


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load(path: Path, *, boilerplate_repeats: int = 3) -> Document:
    """Load a file; lines repeated ``boilerplate_repeats`` times or more are blanked (0: keep)."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(f"{path}: unsupported file type {path.suffix!r}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise LoadError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        with _quiet_libraries():
            document = loader(path)
    except LoadError:
        raise
    except Exception as exc:  # a hostile or broken file must never stop the ingest
        raise LoadError(f"{path}: {type(exc).__name__}: {exc}") from None
    if boilerplate_repeats:
        document.boilerplate_lines = remove_boilerplate(document, boilerplate_repeats)
    _drop_blobs(document)
    return document


_BLOB = re.compile(r"[A-Za-z0-9+/=_\-.:;,%]{2000,}")


def _drop_blobs(document: Document) -> None:
    """Blank long runs without spaces in Latin script (base64 data URIs, minified code): they
    would become chunks of noise. Long CJK lines have no spaces either and are kept."""
    for section in document.sections:
        for i, (number, text) in enumerate(section.lines):
            if len(text) >= 2000 and _BLOB.search(text):
                section.lines[i] = (number, _BLOB.sub(" ", text).strip())


_DIGITS = re.compile(r"\d+")


def remove_boilerplate(
    document: Document, min_repeats: int = 3, min_chars: int = 6, max_chars: int = 200
) -> int:
    """Blank out short lines repeated many times across a file (running headers, footers).

    Exact repeats count everywhere; in paged documents a line on at least half the pages also
    counts with its numbers ignored ("第 3 页", "Page 4 of 9"). Line numbers are kept: the line
    stays, empty. Returns how many lines were blanked.
    """

    def fits(line: str) -> bool:
        return min_chars <= len(line) <= max_chars

    lines = [text.strip() for section in document.sections for _, text in section.lines]
    counts = Counter(line for line in lines if fits(line))
    repeated = {line for line, count in counts.items() if count >= min_repeats}
    pages = [s for s in document.sections if s.page]
    page_marks: set[str] = set()
    if len(pages) >= min_repeats:
        per_page = Counter(
            key for s in pages for key in {_DIGITS.sub("#", t.strip()) for _, t in s.lines if fits(t.strip())}
        )
        page_marks = {key for key, count in per_page.items() if count >= max(min_repeats, len(pages) / 2)}
    blanked = 0
    for section in document.sections:
        for i, (number, text) in enumerate(section.lines):
            line = text.strip()
            if fits(line) and (line in repeated or (section.page and _DIGITS.sub("#", line) in page_marks)):
                section.lines[i] = (number, "")
                blanked += 1
    return blanked
