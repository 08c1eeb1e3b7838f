"""The long-text fixture (tests/fixtures/prose.py) passes the quality gate, at the sizes channel
tests use, where one sentence repeated would not."""

from __future__ import annotations

import doctest

import pytest
from fixtures import prose
from fixtures.prose import varied_text

from bots.core.gate import check, repetition_share


@pytest.mark.parametrize(
    ("language", "emoji"), [("en", False), ("zh", False), ("zh", True)], ids=["en", "zh", "zh-emoji"]
)
@pytest.mark.parametrize("chars", [150, 1_100, 2_900, 5_000, 8_000])
def test_varied_text_passes_the_gate(language, emoji, chars):
    for seed in range(3):
        text = varied_text(chars, language, seed, emoji=emoji)
        assert chars - 100 < len(text) <= chars
        verdict = check(text, language=language, max_chars=chars)
        assert verdict.ok, verdict
        assert repetition_share(text) < 0.2  # well inside the gate's 0.3


def test_varied_text_is_seeded_and_made_of_whole_sentences():
    assert varied_text(2_000, seed=3) == varied_text(2_000, seed=3) != varied_text(2_000, seed=4)
    english = varied_text(2_000)
    assert english.endswith(".") and "  " not in english and english == english.strip()
    chinese = varied_text(2_000, "zh", emoji=True)
    assert chinese.endswith("。") and " " not in chinese
    assert sum(ord(ch) > 0xFFFF for ch in chinese) > 50  # emoji outside the BMP


def test_one_sentence_repeated_is_what_the_gate_refuses():
    assert not check("The fog came in early. " * 40, language="en").ok
    assert not check("灯塔的光照亮了夜海。" * 200, language="zh").ok


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="language"):
        varied_text(500, "fr")
    with pytest.raises(ValueError, match="emoji"):
        varied_text(500, emoji=True)
    with pytest.raises(ValueError, match="no sentence"):
        varied_text(5)


def test_the_docstring_examples_hold():
    result = doctest.testmod(prose)
    assert result.attempted >= 2 and result.failed == 0
