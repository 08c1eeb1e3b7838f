"""`bots persona eval`: the fidelity metrics on hand-made replies, the run with a fake clock, and the
command end to end on a small corpus (real embeddings, the fake model provider)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_persona_builder import OPENING, write_corpus
from typer.testing import CliRunner

from bots.agent.reply import Reply
from bots.agent.retrieval import Passage
from bots.cli import app
from bots.core.gate import Verdict
from bots.evaluation import (
    Question,
    Report,
    answer_sentences,
    citation_correct,
    gate_passed,
    grounded_share,
    language_match,
    load_questions,
    passage_span,
    retrieval_correct,
    run,
    score,
    style_summary,
    support,
    totals,
)

TEA = Passage(
    "其实茶叶这事儿嘛，简单！紫砂壶、龙井、泡茶，我都打了好多年交道。泡茶的水不能太烫。",
    "tea",
    "tea.md, lines 3-5",
)
TRAIN = Passage(
    "The green train was slow, and the platform smelled of coal smoke.", "train", "train.md, line 9"
)


def reply(text: str, *, mode: str = "composed", sources=(), passages=(TEA, TRAIN), verdicts=None) -> Reply:
    return Reply(
        text, mode, "zh", list(sources), list(passages), [Verdict()] if verdicts is None else verdicts
    )


# -- questions -----------------------------------------------------------------------------------
def test_load_questions(tmp_path: Path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"id": "a", "q": "泡茶的水要多烫？", "source": "tea.md", "lines": [3, 5]}\n\n'
        '{"question": "Why is the train slow?", "cross": true}\n'
        '{"q": "没有标点", "lang": "en"}\n',
        encoding="utf-8",
    )
    first, second, third = load_questions(path)
    assert first == Question("a", "泡茶的水要多烫？", "zh", "tea.md", (3, 5))
    assert second.id == "q3" and second.language == "en" and second.cross and second.lines is None
    assert third.language == "en"  # "lang" overrides what the text looks like
    path.write_text('{"q": "x", "lines": [9, 2]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        load_questions(path)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1"):
        load_questions(path)


# -- the metrics ---------------------------------------------------------------------------------
def test_language_match_ignores_quotations():
    assert language_match(reply("泡茶的水不能太烫。"), "zh")
    assert not language_match(reply("泡茶的水不能太烫。"), "en")
    framed = "As I once wrote: “泡茶的水不能太烫，紫砂壶要先温一温。” Water matters more than leaves."
    assert language_match(reply(framed), "en") and not language_match(reply(framed), "zh")


def test_gate_passed():
    assert gate_passed(reply("好。"))
    assert gate_passed(reply("好。", mode="generated", verdicts=[]))
    assert not gate_passed(reply("好。", mode="apology"))
    assert not gate_passed(reply("好。", verdicts=[Verdict(), Verdict(("language: en, wanted zh",))]))
    assert gate_passed(reply("好。", verdicts=[Verdict(("repetition: 40%",)), Verdict()]))  # the last try


def test_support_counts_bigrams_and_words():
    assert support("泡茶的水不能太烫", TEA.text) == 1.0
    assert support("火车开得很慢", TEA.text) == 0.0
    assert support("The train was slow.", TRAIN.text) == 1.0  # "the", "was" do not count
    assert 0 < support("The train was fast and loud.", TRAIN.text) < 0.5


def test_grounded_share():
    text = "泡茶的水不能太烫[1]。紫砂壶、龙井我都打了好多年交道。我还喜欢骑马去草原。"
    assert grounded_share(reply(text)) == pytest.approx(2 / 3)
    assert grounded_share(reply(text), threshold=1.01) == 0.0
    # a quotation of a passage counts as supported, whatever frames it
    quoted = "Here is what I wrote: “泡茶的水不能太烫。”"
    assert grounded_share(reply(quoted)) == 1.0
    # the persona's own frames are not claims
    framed = f"{OPENING}泡茶的水不能太烫。"
    assert grounded_share(reply(framed)) == 0.5
    assert grounded_share(reply(framed), exclude=[OPENING]) == 1.0
    assert answer_sentences(framed, [OPENING]) == ["泡茶的水不能太烫。"]
    assert answer_sentences("In my own words:\n泡茶的水不能太烫。") == ["泡茶的水不能太烫。"]  # a lead-in
    assert grounded_share(reply("……", passages=())) is None
    assert grounded_share(reply("泡茶的水不能太烫。", passages=())) == 0.0


def test_passage_span_from_fields_or_location():
    assert passage_span(TEA) == ("tea.md", 3, 5)
    assert passage_span(TRAIN) == ("train.md", 9, 9)
    assert passage_span(Passage("x", "Book", "book.pdf, p. 3, lines 1-9")) == ("book.pdf", 1, 9)
    assert passage_span(Passage("x", "Book", "book.epub, ch02.xhtml, line 4")) == ("book.epub", 4, 4)
    assert passage_span(Passage("x", "Note", "")) is None
    fields = Passage("x", "Tea", "whatever", path="notes/tea.md", start_line=7, end_line=8)
    assert passage_span(fields) == ("notes/tea.md", 7, 8)


def test_citation_and_retrieval_correctness():
    cited = reply("泡茶的水不能太烫[1]。", sources=[TEA])
    assert citation_correct(cited, "tea.md", (5, 12))
    assert citation_correct(cited, "corpus/tea.md", None)  # compared by file name
    assert not citation_correct(cited, "tea.md", (6, 12))
    assert not citation_correct(cited, "train.md", (9, 9))
    assert retrieval_correct(cited, "train.md", (9, 9))  # retrieved, not cited
    assert not citation_correct(reply("泡茶的水不能太烫。"), "tea.md", (3, 5))


def test_score_and_totals():
    tea = Question("t", "泡茶的水要多烫？", "zh", "tea.md", (3, 5))
    train = Question("r", "Why was the train slow?", "en", "train.md", (9, 9), cross=True)
    free = Question("f", "你好吗？", "zh")
    results = [
        score(tea, reply("泡茶的水不能太烫[1]。", sources=[TEA]), 2.0),
        score(train, reply("火车开得很慢。"), 4.0),
        score(free, reply("抱歉。", mode="apology", passages=()), 9.0),
    ]
    first, second, third = results
    assert (first.language_ok, first.gate_ok, first.grounded, first.cited_ok) == (True, True, 1.0, True)
    assert (second.language_ok, second.language, second.cited_ok, second.retrieved_ok) == (
        False,
        "zh",
        False,
        True,
    )
    assert third.cited_ok is None and not third.gate_ok
    t = totals(results)
    assert t["questions"] == 3 and t["language_match"] == pytest.approx(2 / 3)
    assert t["gate_pass"] == pytest.approx(2 / 3) and t["citation_correct"] == 0.5
    assert t["retrieval_correct"] == 1.0 and t["latency_p50_s"] == 4.0 and t["latency_max_s"] == 9.0
    assert t["style_attributed"] is None
    report = Report(results)
    assert set(report.by_language()) == {"zh", "cross"}
    data = report.as_json()
    assert data["questions"][1]["id"] == "r" and data["questions"][1]["cross"] is True
    json.dumps(data, ensure_ascii=False)


async def test_run_times_each_answer_with_the_given_clock():
    ticks = iter([0.0, 1.5, 10.0, 10.25])
    asked: list[tuple[str, int]] = []

    async def answer(question: Question, index: int) -> Reply:
        asked.append((question.id, index))
        return reply("泡茶的水不能太烫。")

    questions = [Question("a", "泡茶？", "zh"), Question("b", "Tea?", "en")]
    results = await run(questions, answer, clock=lambda: next(ticks))
    assert asked == [("a", 0), ("b", 1)]
    assert [r.seconds for r in results] == [1.5, 0.25]
    assert [r.language_ok for r in results] == [True, False]


def test_style_summary_on_the_two_test_authors(tmp_path: Path):
    from bots.evaluation import corpus_segments

    write_corpus(tmp_path / "knowledge")
    author = corpus_segments(tmp_path / "knowledge", ["zhou"], ["老周 Zhou"])
    contrast = corpus_segments(tmp_path / "knowledge", ["essays"])
    question = Question("q", "象棋？", "zh")
    results = [
        score(question, reply("其实象棋这事儿嘛，简单！残局、棋盘我都熟……（说来话长）你说呢？"), 1.0),
        score(
            question, reply("关于象棋的讨论由来已久；然而，其文化意义远比通常理解的更为复杂——值得注意。"), 1.0
        ),
    ]
    style = style_summary(results, author, contrast)
    assert style.auc > 0.95 and style.author > style.contrast
    assert results[0].style > results[1].style
    assert results[0].style_attributed and not results[1].style_attributed
    assert style.attributed == 0.5 and not math.isnan(style.threshold)
    assert totals(results)["style_attributed"] == 0.5


# -- the command ---------------------------------------------------------------------------------
QUESTIONS = [
    {"id": "tea", "q": "你喜欢泡茶吗？紫砂壶怎么样？", "source": "tea.md", "lines": [1, 12]},
    {"id": "chess", "q": "象棋的残局有什么诀窍？", "source": "chess.md", "lines": [1, 12]},
    {"id": "garden", "q": "What do you think about the garden and the tomatoes?", "source": "garden.md"},
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_corpus(tmp_path / "knowledge")
    lines = "\n".join(json.dumps(q, ensure_ascii=False) for q in QUESTIONS)
    (tmp_path / "q.jsonl").write_text(lines + "\n", encoding="utf-8")
    runner = CliRunner()
    built = runner.invoke(app, ["persona", "build", "zhou", "--from", "zhou", "--contrast", "essays"])
    assert built.exit_code == 0, built.output
    return tmp_path


def test_persona_eval_needs_an_indexed_collection(project: Path):
    result = CliRunner().invoke(
        app, ["persona", "eval", "zhou", "--questions", "q.jsonl", "--provider", "fake"]
    )
    assert result.exit_code == 1 and "bots ingest zhou" in result.output


def test_persona_eval_command_prints_the_tables_and_json(project: Path, embedder):
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "zhou"]).exit_code == 0
    result = runner.invoke(app, ["persona", "eval", "zhou", "--questions", "q.jsonl", "--provider", "fake"])
    assert result.exit_code == 0, result.output
    for title in ("Per question", "Totals", "Style", "AUC"):
        assert title in result.output
    as_json = runner.invoke(
        app, ["persona", "eval", "zhou", "--questions", "q.jsonl", "--provider", "fake", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert [q["id"] for q in data["questions"]] == ["tea", "chess", "garden"]
    assert data["totals"]["questions"] == 3
    assert data["totals"]["style"]["auc"] > 0.9
    for q in data["questions"]:  # the fake model answers "ok": every reply is composed from the corpus
        assert q["mode"] == "composed" and q["language_ok"] and q["gate_ok"]
        assert q["retrieved_ok"] is True
    assert data["totals"]["grounded"] > 0.5


def test_persona_eval_with_a_bad_questions_file(project: Path):
    (project / "bad.jsonl").write_text("{oops\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["persona", "eval", "zhou", "--questions", "bad.jsonl"])
    assert result.exit_code == 1 and "bad.jsonl, line 1" in result.output
