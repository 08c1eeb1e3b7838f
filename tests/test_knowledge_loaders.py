"""Loaders, encodings, boilerplate and chunk line numbers (no index needed)."""

from __future__ import annotations

import pytest

from bots.knowledge.chunking import chunk_document
from bots.knowledge.loaders import LoadError, load


def _pdf(text_lines: list[str]) -> bytes:
    """A minimal one-page PDF with Helvetica text, built by hand (no PDF writer needed)."""
    body = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in text_lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(body)} >>\nstream\n{body}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_markdown_title_and_line_numbers(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Fog notes\n\nline three\nline four\n", encoding="utf-8")
    document = load(path)
    assert document.title == "Fog notes"
    assert document.sections[0].lines[2] == (3, "line three")


@pytest.mark.parametrize("encoding", ["gb18030", "big5"])
def test_legacy_chinese_encodings_are_detected(tmp_path, encoding):
    text = (
        "石屿的雾多在春末。雾来的时候，先是远处的礁石不见了，然后是码头。\n灯塔的光在雾里只能照出几十米。\n"
    )
    if encoding == "big5":
        text = "燈塔為什麼會轉？\n因為每一座燈塔都有自己的節奏，船上的人數一數閃光就知道位置。\n"
    path = tmp_path / f"{encoding}.txt"
    path.write_bytes(text.encode(encoding))
    assert load(path).text.strip() == text.strip()


def test_html_keeps_source_lines_and_drops_scripts(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>The Light</title><script>var x = 1;</script></head>\n"
        "<body>\n<h1>Why it turns</h1>\n<p>Every light has\nits own rhythm.</p>\n"
        "<ul><li>North: two white flashes</li></ul>\n</body></html>\n",
        encoding="utf-8",
    )
    document = load(path)
    assert document.title == "The Light"
    lines = document.sections[0].lines
    assert (3, "Why it turns") in lines and (6, "North: two white flashes") in lines
    assert "var x" not in document.text


def test_pdf_pages(tmp_path):
    path = tmp_path / "log.pdf"
    path.write_bytes(_pdf(["Wind NE 5, sea rough", "Lamp normal"]))
    document = load(path)
    assert document.sections[0].page == 1
    assert "Wind NE 5" in document.text and "Lamp normal" in document.text
    [chunk] = chunk_document(document, "log.pdf", 500, 50)
    assert chunk.page == 1 and chunk.location.startswith("p. 1")


def test_docx_paragraphs(tmp_path):
    import docx

    path = tmp_path / "diary.docx"
    doc = docx.Document()
    doc.add_paragraph("第一段：雾来了。")
    doc.add_paragraph("Second paragraph: the horn sounded twice.")
    doc.save(path)
    document = load(path)
    assert document.sections[0].lines == [
        (1, "第一段：雾来了。"),
        (2, "Second paragraph: the horn sounded twice."),
    ]


def test_epub_chapters(tmp_path):
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id1")
    book.set_title("Keeper's Book")
    book.set_language("en")
    chapter = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    chapter.content = "<html><body><h1>One</h1><p>The lamp was wound every four hours.</p></body></html>"
    book.add_item(chapter)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = [chapter]
    path = tmp_path / "book.epub"
    epub.write_epub(str(path), book)
    document = load(path)
    assert document.title == "Keeper's Book"
    assert any("wound every four hours" in text for s in document.sections for _, text in s.lines)
    assert any(s.part == "one.xhtml" for s in document.sections)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf"),
        ("broken.docx", b"PK\x03\x04 not a zip at all"),
        ("broken.epub", b"nothing here"),
        ("binary.txt", bytes(range(256)) * 40),
    ],
)
def test_bad_files_raise_a_clear_load_error(tmp_path, name, payload):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(LoadError) as info:
        load(path)
    assert str(path) in str(info.value)


def test_repeated_boilerplate_is_blanked_but_lines_keep_their_numbers(tmp_path):
    footer = "—— 蓝湾社区资料，仅供内部参考 ——"
    body = []
    for i in range(4):
        body += [f"第{i + 1}节：灯塔的第{i + 1}件事。", footer, ""]
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(body), encoding="utf-8")
    document = load(path)
    assert footer not in document.text
    assert document.sections[0].lines[3] == (4, "第2节：灯塔的第2件事。")


def test_cjk_chunks_end_on_sentences_and_carry_original_lines(tmp_path):
    lines = [f"第{n}行。" + "守灯人每天擦镜片、上发条、记日志，一样也不能省。" * 3 for n in range(1, 31)]
    path = tmp_path / "long.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    chunks = chunk_document(load(path), "long.txt", 200, 0)
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk.text) <= 200
        assert chunk.text.rstrip().endswith("。")
        first = chunk.text.split("\n", 1)[0]
        assert first in lines[chunk.start_line - 1]  # the chunk starts on the line it says
        last = chunk.text.rstrip().rsplit("\n", 1)[-1]
        assert last in lines[chunk.end_line - 1]


def test_html_text_outside_paragraphs_is_kept(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(
        "<html><body>\n<div>Loose text in a div\n<p>and a paragraph</p>\n"
        "tail of the div</div>\n</body></html>",
        encoding="utf-8",
    )
    text = load(path).text
    assert "Loose text in a div" in text and "and a paragraph" in text and "tail of the div" in text


def test_docx_tables_are_read(tmp_path):
    import docx

    path = tmp_path / "fares.docx"
    doc = docx.Document()
    doc.add_paragraph("Fares")
    table = doc.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Adult", "28 yuan"
    doc.save(path)
    assert "Adult | 28 yuan" in load(path).text


def test_form_feeds_do_not_shift_line_numbers(tmp_path):
    path = tmp_path / "ff.txt"
    path.write_text("one\x0cstill one\ntwo\nthree\n", encoding="utf-8")
    assert load(path).sections[0].lines[:3] == [(1, "one\x0cstill one"), (2, "two"), (3, "three")]


def test_page_footers_with_changing_numbers_are_dropped_but_numbered_text_is_not():
    from pathlib import Path

    from bots.knowledge.loaders import Document, Section, remove_boilerplate

    content = ["雾来时先看礁石。", "灯每十秒闪两次。", "日志用铅笔写。", "潮水不会早到。", "台风夜停电。"]
    pages = [Section([(1, text), (2, f"— 第 {n} 页 —")], page=n) for n, text in enumerate(content, 1)]
    document = Document(Path("book.pdf"), "book", pages)
    assert remove_boilerplate(document) == 5
    assert [s.lines for s in document.sections] == [[(1, text), (2, "")] for text in content]


def test_zip_bombs_are_refused(tmp_path, monkeypatch):
    import zipfile

    import bots.knowledge.loaders as loaders

    monkeypatch.setattr(loaders, "MAX_UNZIPPED_BYTES", 1024 * 1024)
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (4 * 1024 * 1024))
    with pytest.raises(LoadError, match="zip bomb"):
        load(path)


def test_embedded_blobs_are_dropped_but_long_chinese_lines_kept(tmp_path):
    blob = "data:image/png;base64," + "iVBORw0KGgoAAAANSUhEUg" * 200
    chinese = "守灯人每天擦镜片上发条记日志" * 200
    path = tmp_path / "page.md"
    path.write_text(f"Before the image.\n![x]({blob})\n{chinese}\n", encoding="utf-8")
    lines = load(path).sections[0].lines
    assert lines[1] == (2, "![x]( )") and lines[2] == (3, chinese)
