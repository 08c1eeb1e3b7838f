"""`bots persona build`: a persona draft from an author's texts (style profile, signature lines,
exemplars), and the style classifier, on a small two-author corpus written here."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bots.agent import stylometry as sty
from bots.agent.builder import (
    Paragraph,
    author_prose,
    build_persona,
    exemplar_candidates,
    paragraphs,
    read_documents,
    topics,
)
from bots.agent.persona import load_persona
from bots.cli import app
from bots.knowledge.collection import Collection

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
WEI_LI = ("000_c84f42c56e3adfd5.txt", "003_e742d3d7600005a8.txt")
OTHERS = ("002_1c65c907ccc9c8c4.txt", "004_f9cce8f02759c119.txt")

# -- a corpus written for these tests -------------------------------------------------------------
# 老周 (Zhou) writes short, chatty Chinese with 其实, 嘛, 呢, exclamation marks, ellipses and
# asides in parentheses; each post opens with "各位好，我是老周。" and closes with "我是老周，咱们下回见！";
# two posts are in English. The essayist writes long, formal sentences with 然而, 因此, semicolons and
# dashes, on the same topics.
TOPICS: dict[str, list[str]] = {
    "tea": ["茶叶", "紫砂壶", "龙井", "泡茶", "茶馆", "盖碗"],
    "train": ["火车", "绿皮车", "站台", "铁轨", "卧铺", "检票口"],
    "rain": ["下雨", "雨伞", "屋檐", "梅雨", "雷阵雨", "雨靴"],
    "chess": ["象棋", "棋盘", "将军", "残局", "棋子", "对弈"],
    "bike": ["自行车", "车铃", "链条", "胡同", "车筐", "打气筒"],
    "noodles": ["面条", "汤头", "葱花", "面馆", "拉面", "浇头"],
}
EN_TOPICS: dict[str, list[str]] = {
    "garden": ["garden", "tomatoes", "watering can", "weeds"],
    "radio": ["radio", "antenna", "static", "old songs"],
}
ZHOU = [
    "其实{0}这事儿嘛，简单！{1}、{2}、{3}，我都打了好多年交道……（说来话长）{4}和{5}呢？也熟！",
    "{1}嘛，大家都熟。可是{3}和{5}呢？我小时候天天见！想起{0}、{2}、{4}，还真有点想念……",
    "说到{2}和{4}，我就来劲了！其实{0}、{1}、{3}、{5}也没什么诀窍（我爸教的），多试几回嘛。",
    "有人问我{5}和{0}好不好。其实{1}、{2}、{3}、{4}好不好，试试就知道了！别光听别人说呢……",
]
ZHOU_EN = [
    "Hello friends, this is Zhou. So, the {0}, the {1}, the {2}! I love them (my wife less so)... And {3}?",
    "The {1} and the {3}, you ask? Well, simple! I learned the {0} from my father... the {2} too, you know.",
    "People say the {2} is a bother. Really? Try the {0} and the {3} for a week (just a week), and the {1}!",
]
ESSAY = [
    "关于{0}的讨论由来已久；然而，若从更长的历史尺度加以审视，{1}所承载的文化意义远比通常所理解的更为复杂"
    "——这一点往往为研究者所忽视。",
    "因此，我们有必要重新检讨{2}与日常生活之间的关系；换言之，{3}并非孤立的现象，而是社会结构变迁在微观"
    "层面上的投射与回响。",
    "从方法论的角度看，对{4}的考察应当兼顾文献与田野；与此同时，{5}的演变轨迹也提示我们——所谓传统，本身"
    "即是不断被重构的产物。",
    "诚然，既有研究已就{1}的物质形态作出相当细致的描述；然而，对于使用者的经验与情感，学界的关注仍显不足，"
    "亟待补充。",
    "综上所述，{3}的意义不能仅仅从功能的角度加以理解；它同时是记忆的载体——个人的，也是集体的——因此值得"
    "更为系统的考察。",
    "值得注意的是，{0}在不同地域呈现出显著的差异；这种差异既源于自然条件，也源于制度安排与经济结构的长期"
    "作用。",
]
OPENING = "各位好，我是老周。"
CLOSING = "我是老周，咱们下回见！"


def zhou_post(words: list[str]) -> str:
    body = [template.format(*words) for template in ZHOU]
    return "\n\n".join([f"{OPENING}今天聊聊{words[0]}。", *body, f"好了，今天就聊到这儿。{CLOSING}"])


def write_corpus(knowledge: Path, author: str = "zhou", other: str = "essays") -> tuple[Path, Path]:
    """knowledge/<author>/ (老周's posts, titled in collection.toml) and knowledge/<other>/."""
    mine, theirs = knowledge / author, knowledge / other
    mine.mkdir(parents=True)
    theirs.mkdir(parents=True)
    (mine / "collection.toml").write_text('title = "老周 Zhou"\n', encoding="utf-8")
    for topic, words in TOPICS.items():
        (mine / f"{topic}.md").write_text(zhou_post(words) + "\n", encoding="utf-8")
        essay = "\n\n".join(template.format(*words) for template in ESSAY)
        (theirs / f"{topic}.md").write_text(essay + "\n", encoding="utf-8")
    for topic, words in EN_TOPICS.items():
        post = "\n\n".join(template.format(*words) for template in ZHOU_EN)
        (mine / f"{topic}.md").write_text(post + "\n", encoding="utf-8")
    return mine, theirs


def prose_of(knowledge: Path, collection: str) -> list[str]:
    return [
        text
        for document in author_prose(read_documents(Collection(knowledge, collection)))
        for text in document
    ]


def topic_of(text: str) -> str:
    found = [t for t, words in {**TOPICS, **EN_TOPICS}.items() if any(w in text for w in words)]
    assert len(found) == 1, text
    return found[0]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "knowledge")
    return tmp_path / "knowledge"


@pytest.fixture
def draft(corpus: Path):
    return build_persona(
        read_documents(Collection(corpus, "zhou")),
        collection="zhou",
        name="老周 Zhou",
        contrast=read_documents(Collection(corpus, "essays")),
        contrast_collection="essays",
        exemplars=8,
    )


# -- splitting -------------------------------------------------------------------------------------
def test_sentences_split_chinese_and_english():
    assert sty.sentences("我是老周。今天聊茶！好吗？（不好）") == [
        "我是老周。",
        "今天聊茶！",
        "好吗？",
        "（不好）",
    ]
    found = sty.sentences("It works. Really? Yes!\n“好。”他说。")
    assert found == ["It works.", "Really?", "Yes!", "“好。”", "他说。"]
    assert sty.sentences("等一等……再说") == ["等一等……", "再说"]


def test_paragraphs_keep_line_numbers_join_hard_wraps_and_read_speakers():
    lines = list(enumerate([
        "A title", "", "This line is long enough to be hard wrapped by an editor and",
        "goes on here.", "立委：我觉得这是对的。", "霄云：I disagree.", "Short line", "Another short",
    ], 1))  # fmt: skip
    found = paragraphs(lines)
    assert found[0] == Paragraph("A title", 1)
    assert found[1].text.endswith("editor and goes on here.") and found[1].line == 3
    assert found[2] == Paragraph("我觉得这是对的。", 5, "立委")
    assert found[3] == Paragraph("I disagree.", 6, "霄云")
    assert [p.text for p in found[4:]] == ["Short line", "Another short"]


def test_author_prose_keeps_the_authors_lines_of_a_transcript():
    chat = [Paragraph("我觉得这是对的。", 1, "立委"), Paragraph("我不同意。", 2, "霄云"),
            Paragraph("道理很简单。", 3, "立委"), Paragraph("为什么？", 4, "白硕"),
            Paragraph("因为数据。", 5, "立委"), Paragraph("Plain prose.", 6)]  # fmt: skip
    assert author_prose([chat]) == [["我觉得这是对的。", "道理很简单。", "因为数据。", "Plain prose."]]
    # a label that is part of the author's name counts even when it is rare
    two = [Paragraph("ok", 1, "Wei"), *chat]
    assert "ok" in author_prose([two], ["Wei Li (立委)"])[0]


def test_exemplar_candidates_are_prose():
    texts = [
        "太短了。",
        "这是一段完整的话，讲的是泡茶的讲究：水温要合适，时间也要合适，不然茶就苦了，客人也不爱喝。",
        "一个没有句号的标题行，很长很长很长很长很长很长很长很长很长很长很长",
        "详见 https://example.com/page 这里有一段很长很长很长很长很长很长的说明文字。",
        "- 列表项：这是一段很长很长很长很长很长很长很长很长很长很长的列表文字。",
    ]
    assert exemplar_candidates(texts) == [texts[1]]


# -- the profile -----------------------------------------------------------------------------------
def test_profile_numbers_tell_the_two_authors_apart(corpus: Path):
    zhou, essays = prose_of(corpus, "zhou"), prose_of(corpus, "essays")
    mine, theirs = sty.profile(zhou), sty.profile(essays)
    assert set(mine.languages) == {"zh", "en"} and mine.main_language == "zh"
    assert 0.1 < mine.languages["en"].share < 0.5
    assert set(theirs.languages) == {"zh"}
    # short chatty sentences against long formal ones
    assert mine.languages["zh"].chars_per_sentence < 15 < 40 < theirs.languages["zh"].chars_per_sentence
    assert mine.punctuation["！"] > 20 > theirs.punctuation["！"] == 0
    assert mine.punctuation["……"] > 5 and theirs.punctuation["……"] == 0
    assert theirs.punctuation["——"] > 5 and mine.punctuation["——"] == 0
    assert theirs.punctuation["；"] > mine.punctuation["；"] == 0
    assert mine.punctuation["parentheses"] > theirs.punctuation["parentheses"] == 0
    # without a reference, the favourites are the discourse words used most
    assert {"其实", "嘛"} <= set(list(mine.function_words)[:4])


def test_profile_against_a_reference(draft):
    profile = draft.profile
    assert {"其实", "嘛", "呢"} <= set(profile.function_words)
    assert "然而" not in profile.function_words and "因此" not in profile.function_words
    assert profile.reference_punctuation["——"] > 0 and profile.reference_function_words["其实"] == 0
    assert "好多年" in profile.distinctive_words["zh"]
    assert not {"研究者", "方法论", "考察"} & set(profile.distinctive_words["zh"])
    numbers = draft.persona.extensions["style_profile"]
    assert numbers["source"] == "zhou" and numbers["contrast"] == "essays"
    assert numbers["punctuation_per_1000_chars"]["！"] > 20


# -- the draft -------------------------------------------------------------------------------------
def test_draft_finds_the_signature_lines(draft):
    persona = draft.persona
    assert persona.opening_lines[0] == OPENING  # for posts; answers get plain frames
    assert persona.closing_lines[0] == CLOSING
    assert OPENING not in persona.closing_lines and CLOSING not in persona.opening_lines
    assert OPENING not in persona.answer_openings


def test_draft_exemplars_cover_distinct_topics(draft):
    exemplars = draft.persona.exemplars
    assert len(exemplars) == 8
    assert all(40 <= len(e) <= 300 for e in exemplars)
    topics = [topic_of(e) for e in exemplars]
    chinese = [t for t in topics if t in TOPICS]
    assert len(chinese) == 6 and set(chinese) == set(TOPICS)  # every Chinese topic, once
    assert set(topics) - set(TOPICS) == set(EN_TOPICS)  # and both English ones


def test_draft_fields(draft):
    persona = draft.persona
    assert persona.name == "老周 Zhou" and persona.language == "zh"
    assert persona.knowledge == ["zhou"]
    assert "老周 Zhou" in persona.system_prompt
    assert "You write and talk about" in persona.system_prompt and "老周," not in persona.system_prompt
    assert any(rule.startswith("Writes Chinese") for rule in persona.style)
    assert any("其实" in rule for rule in persona.style if rule.startswith("Favourite"))
    assert draft.files == 8


def test_topics_are_keywords_without_function_words_or_the_name():
    texts = [
        "老周说，象棋的残局最难。其实象棋靠残局功夫。",
        "残局、棋盘、象棋，老周天天琢磨。",
        "Chess endgames.",
    ]
    found = topics(texts, k=3, name="老周 Zhou")
    assert {w.lower() for w in found} <= {"象棋", "残局", "棋盘", "endgames", "chess"} and "象棋" in found
    assert "老周" not in found and "其实" not in found


def test_answers_get_plain_frames_in_the_authors_languages(corpus: Path):
    draft = build_persona(read_documents(Collection(corpus, "essays")), collection="essays", name="Essayist")
    assert draft.persona.answer_openings and draft.persona.answer_openings[0] == "说说我的看法。"
    assert draft.persona.answer_closings == ["以上是我的一点看法。"]
    assert draft.persona.opening_lines == []  # no signature lines in these essays


# -- the classifier --------------------------------------------------------------------------------
def test_classifier_separates_the_two_authors(corpus: Path):
    zhou, essays = (sty.segments(prose_of(corpus, name), 60) for name in ("zhou", "essays"))
    classifier, held = sty.held_out(zhou, essays)
    assert held.auc > 0.95
    assert min(held.author) > max(held.contrast)
    fresh_zhou = "其实下棋这事儿嘛，也简单！我天天下……（输多赢少）你说呢？"
    fresh_essay = "关于下棋的讨论由来已久；然而，其文化意义远比通常理解的更为复杂——这一点值得注意。"
    p_zhou, p_essay = classifier.author_probability([fresh_zhou, fresh_essay])
    assert p_zhou > 0.5 > p_essay


def test_folds_keep_neighbours_together():
    assert sty.folds(40, 4, 5)[:12] == [0] * 5 + [1] * 5 + [2, 2]
    assert sorted(set(sty.folds(6, 4, 5))) == [0, 1, 2, 3]


# -- the command -----------------------------------------------------------------------------------
def test_persona_build_command_writes_a_loadable_draft(corpus: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    args = ["persona", "build", "zhou", "--from", "zhou", "--contrast", "essays", "--exemplars", "8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "8 exemplars" in result.output
    persona = load_persona(tmp_path / "config" / "personas" / "zhou.yaml")
    assert persona.opening_lines[0] == OPENING and persona.knowledge == ["zhou"]
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    missing = runner.invoke(app, ["persona", "build", "zhou2", "--from", "nowhere"])
    assert missing.exit_code == 1 and "nowhere" in missing.output


# -- real writing ----------------------------------------------------------------------------------
@pytest.fixture
def real_corpus(tmp_path: Path) -> Path:
    if not all((CORPUS / name).is_file() for name in (*WEI_LI, *OTHERS)):
        pytest.skip(f"the shared real-text corpus is not at {CORPUS}")
    knowledge = tmp_path / "knowledge"
    for folder, names in (("weili", WEI_LI), ("others", OTHERS)):
        (knowledge / folder).mkdir(parents=True)
        for name in names:  # copied at run time into a temporary folder, never into the project
            (knowledge / folder / name).write_bytes((CORPUS / name).read_bytes())
    return knowledge


def test_real_corpus_style_classifier_scores_held_out_wei_li_above_the_others(real_corpus: Path):
    from bots.evaluation import corpus_segments

    author = corpus_segments(real_corpus, ["weili"], ["Wei Li (立委)"])
    contrast = corpus_segments(real_corpus, ["others"])
    _, held = sty.held_out(author, contrast)
    assert held.auc > 0.85
    assert sum(held.author) / len(held.author) > sum(held.contrast) / len(held.contrast) + 0.2


def test_real_corpus_draft_finds_the_anchor_lines(real_corpus: Path):
    draft = build_persona(
        read_documents(Collection(real_corpus, "weili")), collection="weili", name="Wei Li (立委)",
        contrast=read_documents(Collection(real_corpus, "others")), contrast_collection="others",
    )  # fmt: skip
    persona = draft.persona
    assert persona.language == "zh"
    assert any("我是小雅" in line for line in persona.closing_lines)
    assert any("我是" in line and "李维" in line for line in persona.opening_lines)
    assert "立委" in persona.speaker_labels  # his lines of the group chats are his
    assert 8 <= len(persona.exemplars) <= 16
    assert {"zh", "en"} <= {sty.text_language(e) for e in persona.exemplars}
