"""Persona files: the sample loads, bad files give errors naming file, field and problem."""

from __future__ import annotations

import pytest

from bots.agent.persona import PersonaLibrary, dump_persona, load_persona
from bots.core.config import ConfigError


def test_sample_persona_loads(repo_root):
    library = PersonaLibrary(repo_root / "config" / "personas")
    assert "keeper" in library.ids()
    keeper = library.get("keeper")
    assert keeper.knowledge == ["lighthouse"]
    assert (repo_root / "knowledge" / "lighthouse").is_dir()
    assert keeper.group.reply == "keywords" and "守灯人" in keeper.group.keywords
    assert keeper.opening_lines and keeper.closing_lines and keeper.examples


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: X\n", ["system_prompt", "Field required"]),
        ("name: X\nsystem_prompt: hi\nsytem_prompt: typo\n", ["sytem_prompt", "Extra inputs"]),
        ("name: X\nsystem_prompt: hi\nmodel:\n  temperature: hot\n", ["model.temperature", "number"]),
        ("name: X\nsystem_prompt: hi\ngroup:\n  reply: sometimes\n", ["group.reply", "mention-only"]),
        (
            "name: X\nsystem_prompt: hi\nknowledge: [../etc]\n",
            ["knowledge", "'../etc' is not a collection folder"],
        ),
        ("name: [unclosed\n", ["not valid YAML"]),
        ("- just\n- a list\n", ["must be a mapping"]),
    ],
)
def test_bad_persona_names_file_field_and_problem(tmp_path, content, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_persona(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_unknown_persona_lists_known_ones(repo_root):
    with pytest.raises(ConfigError, match=r"no persona 'nobody'.*keeper"):
        PersonaLibrary(repo_root / "config" / "personas").get("nobody")
    with pytest.raises(ConfigError, match="not a persona id"):
        PersonaLibrary(repo_root / "config" / "personas").get("../../etc/passwd")


def test_dump_round_trips(repo_root, tmp_path):
    keeper = load_persona(repo_root / "config" / "personas" / "keeper.yaml")
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_persona(keeper), encoding="utf-8")
    assert load_persona(copy) == keeper
