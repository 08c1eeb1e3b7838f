"""Loaders: a file becomes sections of numbered lines (line numbers of the original file).

.txt .md .html .pdf .epub .docx. Legacy Chinese encodings (GB18030, Big5) are detected instead
of crashing. Any failure is a :class:`LoadError` naming the file; the ingest reports and skips it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from charset_normalizer import from_bytes

MAX_FILE_BYTES = 200 * 1024 * 1024
_BLOCK_TAGS = ["p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "blockquote", "td", "th", "dt", "dd",
               "figcaption", "caption", "title"]  # fmt: skip


class LoadError(Exception):
    pass


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

    @property
    def text(self) -> str:
        return "\n".join(text for section in self.sections for _, text in section.lines)


def decode(data: bytes, path: Path) -> str:
    """UTF-8 (with or without BOM) first, then the detected encoding (GB18030, Big5, ...)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()
    if best is None or best.encoding is None:
        raise LoadError(f"{path}: cannot detect the text encoding")
    encoding = {"gb2312": "gb18030", "gbk": "gb18030"}.get(best.encoding, best.encoding)
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise LoadError(f"{path}: looks like {best.encoding} but does not decode: {exc}") from None


def _numbered(text: str, first: int = 1) -> list[tuple[int, str]]:
    return list(enumerate(text.splitlines(), first))


def load_text(path: Path) -> Document:
    text = decode(path.read_bytes(), path)
    return Document(path, _title_from_markdown(text) or path.stem, [Section(_numbered(text))])


def _title_from_markdown(text: str) -> str:
    match = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def load_html(path: Path) -> Document:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode(path.read_bytes(), path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    lines: list[tuple[int, str]] = []
    for tag in soup.find_all(_BLOCK_TAGS):
        if tag.name == "title" or tag.find(_BLOCK_TAGS):
            continue  # only innermost blocks, so nothing is counted twice
        text = tag.get_text(" ", strip=True)
        if text:
            start = tag.sourceline or (lines[-1][0] if lines else 1)
            lines += [(start + i, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    return Document(path, title or path.stem, [Section(lines)])


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


def load_docx(path: Path) -> Document:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise LoadError(f"{path}: not a readable .docx: {exc}") from None
    # A .docx has no lines; paragraph numbers stand in for them.
    lines = [(i, p.text) for i, p in enumerate(document.paragraphs, 1)]
    title = document.core_properties.title or path.stem
    return Document(path, title, [Section(lines)])


def load_epub(path: Path) -> Document:
    import ebooklib
    from bs4 import BeautifulSoup
    from ebooklib import epub

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


def load(path: Path, *, boilerplate: bool = True) -> Document:
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(f"{path}: unsupported file type {path.suffix!r}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise LoadError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        document = loader(path)
    except LoadError:
        raise
    except Exception as exc:  # a hostile or broken file must never stop the ingest
        raise LoadError(f"{path}: {type(exc).__name__}: {exc}") from None
    if boilerplate:
        remove_boilerplate(document)
    return document


def remove_boilerplate(
    document: Document, min_repeats: int = 3, min_chars: int = 6, max_chars: int = 200
) -> int:
    """Blank out short lines repeated many times across a file (running headers, footers).

    Line numbers are kept: the line stays, empty. Returns how many lines were blanked.
    """
    lines = [text.strip() for section in document.sections for _, text in section.lines]
    counts = Counter(line for line in lines if min_chars <= len(line) <= max_chars)
    repeated = {text for text, count in counts.items() if count >= min_repeats}
    blanked = 0
    for section in document.sections:
        for i, (number, text) in enumerate(section.lines):
            if text.strip() in repeated:
                section.lines[i] = (number, "")
                blanked += 1
    return blanked
