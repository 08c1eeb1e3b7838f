"""Operators change a running bot: its persona, its plugins, its knowledge; DM-only is configurable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.core.permissions import NOT_ALLOWED
from bots.testing import FakeAdapter, FakeLLM

ROLES = {"owners": ["fake:boss"], "operators": ["fake:op"]}


def write_personas(folder: Path) -> Path:
    if folder.is_dir():
        return folder  # a restart: keep what the test changed
    folder.mkdir(parents=True)
    (folder / "test.yaml").write_text(
        "name: Tester\nsystem_prompt: You are Tester, patient and brief.\nlanguage: en\n", encoding="utf-8"
    )
    (folder / "wen.yaml").write_text(
        "name: 老温\nsystem_prompt: 你是老温，石屿灯塔的守灯人。\nlanguage: zh\n"
        "group:\n  reply: keywords\n  keywords: [灯塔]\nknowledge: [notes]\n",
        encoding="utf-8",
    )
    return folder


async def operated(harness, tmp_path: Path, **kwargs):
    return await harness(
        data_dir=tmp_path / "var",
        adapter=FakeAdapter(),
        plugins=["basics", "admin"],
        roles=ROLES,
        personas_dir=write_personas(tmp_path / "personas"),
        knowledge_dir=tmp_path / "knowledge",
        **kwargs,
    )


def texts(outbounds) -> list[str]:
    return [o.text for o in outbounds]


async def test_persona_show_use_and_reload(harness, tmp_path):
    h = await operated(harness, tmp_path)
    [shown] = texts(await h.ask("/persona", user="op"))
    assert shown.startswith("Tester (test)") and "wen" in shown
    assert "patient and brief" not in shown  # the system prompt is never echoed
    assert texts(await h.ask("/persona use wen", user="member")) == [NOT_ALLOWED]
    assert texts(await h.ask("/persona use wen", user="op")) == ["testbot now speaks as 老温 (wen)"]
    await h.ask("灯塔还亮着吗", user="u7", chat="g1")  # the new persona's keyword addresses the bot
    assert "守灯人" in h.llm.last_prompt[0].content
    [failed] = texts(await h.ask("/persona use nobody", user="op"))
    assert failed.startswith("not done: no persona 'nobody'")

    (tmp_path / "personas" / "wen.yaml").write_text(
        "name: 老温\nsystem_prompt: 你是老温，退休的守灯人。\nlanguage: zh\n", encoding="utf-8"
    )
    [reloaded] = texts(await h.ask("/persona reload", user="op"))
    assert reloaded.startswith("testbot: persona wen reloaded")
    await h.ask("还好吗", user="u7")
    assert "退休" in h.llm.last_prompt[0].content
    await h.host.stop()

    again = await operated(harness, tmp_path, llm=FakeLLM())
    await again.ask("你好", user="u7")
    assert "退休" in again.llm.last_prompt[0].content  # the operator's choice survives a restart


async def test_plugins_disable_enable_and_reload(harness, tmp_path):
    h = await operated(harness, tmp_path)
    assert texts(await h.ask("/plugins disable basics", user="op"))[0].startswith("basics: disabled")
    assert texts(await h.ask("/ping", user="u1")) == ["Unknown command /ping. Try /help."]
    assert "basics (disabled)" in texts(await h.ask("/plugins", user="op"))[0]
    [refused] = texts(await h.ask("/plugins disable admin", user="op"))
    assert refused.startswith("admin cannot be disabled")
    await h.host.stop()

    again = await operated(harness, tmp_path)
    assert texts(await again.ask("/ping", user="u1")) == ["Unknown command /ping. Try /help."]  # still off
    assert texts(await again.ask("/plugins enable basics", user="op")) == ["basics: enabled"]
    assert texts(await again.ask("/ping", user="u1")) == ["pong"]
    assert texts(await again.ask("/plugins reload basics", user="op")) == ["Reloading code is for owners."]
    [reloaded] = texts(await again.ask("/plugins reload basics", user="boss"))
    assert reloaded.startswith("basics: reloaded from") and reloaded.endswith("basics.py")
    assert texts(await again.ask("/ping", user="u1")) == ["pong"]


async def test_kb_stats_and_ingest(harness, tmp_path):
    notes = tmp_path / "knowledge" / "notes"
    notes.mkdir(parents=True)
    (notes / "fog.md").write_text("# Fog\n\nThe horn sounds every thirty seconds in fog.\n", encoding="utf-8")
    h = await operated(harness, tmp_path)
    assert texts(await h.ask("/kb", user="op")) == ["testbot uses no knowledge collections"]
    await h.ask("/persona use wen", user="op")
    assert texts(await h.ask("/kb stats", user="op")) == ["notes: 1 files, not indexed (/kb ingest notes)"]
    replies = texts(await h.ask("/kb ingest notes", user="op", timeout=180))  # loads the embedding model
    assert replies[0] == "ingesting notes; this can take a while"
    assert replies[1].startswith("notes: 1 added, 0 changed, 0 removed, 0 unchanged; 1 chunks")
    assert texts(await h.ask("/kb stats", user="op")) == ["notes: 1 chunks from 1/1 files"]
    [wrong] = texts(await h.ask("/kb ingest secrets", user="op"))
    assert wrong.startswith("testbot does not use a collection 'secrets'")


@pytest.mark.parametrize(("dm_only", "expected"), [(True, "direct message"), (False, "testbot: channels")])
async def test_dm_only_is_configurable(harness, tmp_path, dm_only, expected):
    h = await operated(harness, tmp_path, plugin_config={"admin": {"dm_only": dm_only}})
    [reply] = texts(await h.ask("/status", user="op", chat="ops-group"))
    assert expected in reply
    assert texts(await h.ask("/status", user="member", chat="ops-group")) == [
        NOT_ALLOWED if not dm_only else "That command only works in a direct message."
    ]
