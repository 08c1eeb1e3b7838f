"""Outbound splitting to a channel's length limit, on sentence boundaries, CJK aware."""

from __future__ import annotations

import re

import pytest

from bots.core.splitting import measure, split_message

ZH = (
    "石屿的雾多在春末。雾来的时候，先是远处的礁石不见了，然后是码头。"
    "雾天最要紧的不是灯，而是雾号！灯光在浓雾里只能照出几十米，声音却能走得更远。"
    "老船长们听见一长一短，就知道自己在石屿东边？他说：“往北让开暗礁。”然后天就亮了。"
) * 3
EN = (
    "Every keeper wrote the log in the same order. Time, wind, sea, visibility, the lamp! "
    "A good entry can be read by a stranger at three in the morning? We wrote in pencil; "
    "ink runs when the window leaks. "
) * 6


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("text", [ZH, EN, ZH + EN])
@pytest.mark.parametrize("limit", [40, 97, 200])
def test_pieces_fit_and_nothing_is_lost(text, limit):
    pieces = split_message(text, limit)
    assert len(pieces) > 1
    assert all(len(piece) <= limit for piece in pieces)
    assert _squash("".join(pieces)) == _squash(text)


def test_chinese_splits_after_sentence_ends():
    pieces = split_message(ZH, 60)
    # every piece but the last ends a sentence (full stop, ! ?, or a closing quote after one)
    assert all(re.search(r"[。！？]”?$", piece) for piece in pieces[:-1]), pieces


def test_english_splits_after_sentence_ends():
    pieces = split_message(EN, 100)
    assert all(re.search(r"[.!?;]$", piece) for piece in pieces[:-1]), pieces


def test_short_text_is_untouched_and_empty_text_sends_nothing():
    assert split_message("  hello  ", 10) == ["  hello  "]
    assert split_message("anything", None) == ["anything"]
    assert split_message("   \n ", 10) == []


def test_text_without_any_boundary_is_cut_hard():
    pieces = split_message("x" * 250, 100)
    assert [len(p) for p in pieces] == [100, 100, 50]


def test_utf16_and_utf8_units():
    emoji_text = "🌊" * 30  # each is 2 UTF-16 units and 4 UTF-8 bytes
    pieces = split_message(emoji_text, 20, "utf16")
    assert all(measure("utf16")(p) <= 20 for p in pieces) and "".join(pieces) == emoji_text
    pieces = split_message(ZH, 300, "utf8")
    assert all(len(p.encode()) <= 300 for p in pieces)
    assert _squash("".join(pieces)) == _squash(ZH)
