"""Chunking on sentence boundaries (CJK and Latin) with line numbers of the original file."""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

from bots.knowledge.loaders import Document, Section

# Paragraphs, then sentence ends (CJK, then Latin, also at a line end), then lines: hard-wrapped
# prose keeps its sentences whole. Then clauses, words, characters.
SEPARATORS = [
    "\n\n",
    "。”", "！”", "？”", "。」", "！」", "？」", "。", "！", "？", "……", "…", "；",
    ".\n", "!\n", "?\n", ". ", "! ", "? ", "; ",
    "\n",
    "，", "、", ", ", "：", ": ",
    " ", "",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    source: str  # path relative to the collection folder
    title: str
    start_line: int
    end_line: int
    page: int | None = None
    part: str = ""

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def location(self) -> str:
        where = f"p. {self.page}, " if self.page else (f"{self.part}, " if self.part else "")
        lines = (
            f"line {self.start_line}"
            if self.start_line == self.end_line
            else (f"lines {self.start_line}-{self.end_line}")
        )
        return where + lines


def chunk_document(document: Document, source: str, size: int, overlap: int) -> list[Chunk]:
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=size,
        chunk_overlap=min(overlap, size // 2),
        separators=SEPARATORS,
        keep_separator="end",
        add_start_index=True,
    )
    chunks = []
    for section in document.sections:
        text, offsets, numbers = _join(section)
        if not text.strip():
            continue
        for piece in splitter.create_documents([text]):
            start = piece.metadata["start_index"]
            if start < 0:  # the splitter could not locate the piece (should not happen)
                continue
            end = start + max(len(piece.page_content) - 1, 0)
            chunks.append(
                Chunk(
                    text=piece.page_content,
                    source=source,
                    title=document.title,
                    start_line=numbers[bisect.bisect_right(offsets, start) - 1],
                    end_line=numbers[bisect.bisect_right(offsets, end) - 1],
                    page=section.page,
                    part=section.part,
                )
            )
    return chunks


def _join(section: Section) -> tuple[str, list[int], list[int]]:
    """The section as one text, with each line's start offset and original line number."""
    offsets, numbers, parts, position = [], [], [], 0
    for number, line in section.lines:
        offsets.append(position)
        numbers.append(number)
        parts.append(line)
        position += len(line) + 1
    return "\n".join(parts), offsets, numbers
