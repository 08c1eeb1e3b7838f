"""Composed answers: the author's own sentences, chosen for the question, framed in the asker's language
and cited at the lines they come from."""

from __future__ import annotations

from bots.agent.compose import UNKNOWN, compose, nearest, split_sentences
from bots.agent.persona import ExampleDialogue, Persona
from bots.agent.retrieval import Passage
from bots.core import gate

FOG = Passage(
    "# 雾中的灯\n石屿的雾多在春末，先是远处的礁石不见了，然后是码头。\n"
    "雾天最要紧的不是灯，而是雾号，声音在雾里比光走得远。\n雾号每三十秒响两声，一长一短，这是石屿的名字。",
    "Keeper's notes",
    "fog.md, lines 1-4",
    path="fog.md",
    start_line=1,
    end_line=4,
)
LOG = Passage(
    "The logbook is written every hour, even when nothing happens. A quiet page is still a page: "
    "it tells the next keeper that someone was awake. I write the wind, the sea and what I saw.",
    "The log",
    "the-log.md, lines 10-12",
    path="the-log.md",
    start_line=10,
    end_line=12,
)
PERSONA = Persona(
    name="Old Wen",
    system_prompt="You are Old Wen, a retired lighthouse keeper.",
    language="zh",
    answer_openings=["说到这个，我在笔记里写过：", "About that, my notes say:"],
    answer_closings=["灯还亮着。", "The light is on."],
    examples=[ExampleDialogue(user="你好，你是谁？", persona="我姓温，在石屿守了三十一年的灯。")],
)


def test_sentences_keep_their_lines_and_drop_headings():
    sentences = split_sentences([FOG])
    assert [s.line for s in sentences] == [2, 3, 4]
    assert not any(s.text.startswith("#") for s in sentences)


def test_a_chinese_question_gets_the_authors_chinese_sentences_cited_at_their_line():
    made = compose("雾天最要紧的是什么？", [LOG, FOG], PERSONA, "zh")
    assert made.grounded
    assert made.text.startswith("说到这个，我在笔记里写过：")
    assert "雾天最要紧的不是灯，而是雾号" in made.text
    assert made.text.rstrip().endswith("灯还亮着。")
    [source] = made.sources
    assert source.path == "fog.md" and source.location.startswith("fog.md, line")
    assert 3 in range(source.start_line, source.end_line + 1)
    assert gate.check(made.text, language="zh").ok


def test_an_english_question_on_chinese_writing_gets_an_english_frame():
    made = compose("Why does the fog horn matter more than the lamp? 雾号", [FOG], PERSONA, "en")
    assert made.text.startswith("I wrote about this in Chinese:")
    assert "「" in made.text and "雾号" in made.text
    assert gate.check(made.text, language="en").ok


def test_an_english_question_on_english_writing_is_answered_in_the_authors_words():
    made = compose("Why write the logbook when nothing happens?", [FOG, LOG], PERSONA, "en")
    assert made.text.startswith("About that, my notes say:")
    assert "The logbook is written every hour, even when nothing happens." in made.text
    assert made.sources[0].path == "the-log.md"
    assert gate.check(made.text, language="en").ok


def test_chosen_sentences_do_not_repeat_each_other():
    twice = Passage(FOG.text + "\n" + FOG.text.split("\n")[2], "notes", "fog.md, lines 1-5", path="fog.md",
                    start_line=1, end_line=5)  # fmt: skip
    made = compose("雾号和灯，雾天哪个要紧？", [twice], PERSONA, "zh")
    assert made.text.count("雾天最要紧的不是灯") == 1


def test_nothing_relevant_is_an_honest_answer_or_the_personas_own_example():
    made = compose("What do you think of football?", [FOG], PERSONA, "en")
    assert not made.grounded and made.text == UNKNOWN["en"] and made.sources == []
    hello = compose("你好，你是谁？", [], PERSONA, "zh")
    assert hello.text == "我姓温，在石屿守了三十一年的灯。"


def test_nearest_exemplars_share_words_with_the_question():
    exemplars = [
        "雾天要烧一壶水，听雾号。",
        "The logbook is a letter to the next keeper.",
        "船来了，灯要亮。",
    ]
    assert nearest("what is the logbook for?", exemplars, 1) == [
        "The logbook is a letter to the next keeper."
    ]
    assert nearest("football", exemplars, 2) == []


def test_in_a_transcript_only_the_authors_lines_are_quoted_without_the_label():
    chat = Passage(
        "立委：大模型的涌现能力，说到底是规模带来的质变。\n为民：我不同意，涌现只是评测指标造成的错觉。\n"
        "立委：涌现不是错觉，规模上去以后，模型突然会做以前做不了的事。",
        "群聊",
        "chat.txt, lines 40-42",
        path="chat.txt",
        start_line=40,
        end_line=42,
    )
    author = PERSONA.model_copy(update={"speaker_labels": ["立委"]})
    made = compose("涌现能力是错觉吗？", [chat], author, "zh")
    assert "为民" not in made.text and "评测指标造成的错觉" not in made.text
    assert "立委" not in made.text and "涌现不是错觉" in made.text
    assert made.sources[0].start_line in (40, 42)
    # a persona that does not know its label quotes no one from a transcript
    assert compose("涌现能力是错觉吗？", [chat], PERSONA, "zh").unknown
