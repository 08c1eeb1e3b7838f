"""The command line, through typer's runner (fake provider; the real model is in test_e2e)."""

from __future__ import annotations

import os
from importlib.resources import files

import yaml
from typer.testing import CliRunner

from bots.agent.persona import load_persona
from bots.cli import app, slug

runner = CliRunner()


def test_help_everywhere():
    for args in (["--help"], ["chat", "--help"], ["persona", "--help"], ["persona", "import", "--help"],
                 ["run", "--help"], ["doctor", "--help"], ["init", "--help"], ["ingest", "--help"],
                 ["search", "--help"], ["knowledge", "--help"], ["embed-server", "--help"],
                 ["audit", "--help"]):  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_chat_one_message_with_fake_provider(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(repo_root)
    result = runner.invoke(
        app, ["chat", "--persona", "keeper", "--provider", "fake", "--data-dir", str(tmp_path), "-m", "hi"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok"
    result = runner.invoke(
        app, ["chat", "-p", "keeper", "--provider", "fake", "--data-dir", str(tmp_path), "-m", "/whoami"]
    )
    assert "console:" in result.stdout and "role:" in result.stdout


def test_chat_with_unknown_persona_fails_clearly(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    result = runner.invoke(app, ["chat", "--persona", "nobody", "--provider", "fake", "-m", "hi"])
    assert result.exit_code == 1
    assert "no persona 'nobody'" in result.output


def test_persona_list_and_show(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    listed = runner.invoke(app, ["persona", "list"])
    assert listed.exit_code == 0 and "keeper" in listed.output
    shown = runner.invoke(app, ["persona", "show", "keeper"])
    assert shown.exit_code == 0 and "lighthouse" in shown.output


def test_persona_import_writes_a_loadable_file(shared_cards, tmp_path):
    result = runner.invoke(
        app, ["persona", "import", str(shared_cards / "c3po.character.json"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    persona = load_persona(tmp_path / "c-3po.yaml")
    assert persona.name == "C-3PO"
    again = runner.invoke(
        app, ["persona", "import", str(shared_cards / "c3po.character.json"), "--out", str(tmp_path)]
    )
    assert again.exit_code == 1 and "--force" in again.output  # never overwrites silently


def test_persona_import_of_a_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    result = runner.invoke(app, ["persona", "import", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "not a JSON character card" in result.output


def test_slug():
    assert slug("Coding Sensei") == "coding-sensei"
    assert slug("守灯人") == "persona"


def test_init_then_doctor_then_chat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", "proj"]).exit_code == 0
    assert (tmp_path / "proj" / ".env.example").is_file()
    config = yaml.safe_load((tmp_path / "proj/config/personas/mentor.yaml").read_text())
    assert config["name"] == "Mentor"
    monkeypatch.chdir(tmp_path / "proj")
    doctor = runner.invoke(app, ["doctor"])
    assert doctor.exit_code == 0, doctor.output
    assert "persona mentor" in doctor.output and "echo" in doctor.output
    echo = runner.invoke(app, ["chat", "-p", "mentor", "--provider", "fake", "-m", "/echo fog horn"])
    assert echo.stdout.strip() == "fog horn"  # the scaffolded folder plugin is live
    second = runner.invoke(app, ["init", "."])
    assert "skipped" in second.output  # existing files are kept


def test_doctor_reports_problems_and_fixes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bots.toml").write_text(
        '[llm]\nprovider = "openai"\nmodel = "gpt-4o-mini"\napi_key_env = "NO_SUCH_KEY_VAR"\n'
        '[[bots]]\nname = "x"\npersona = "ghost"\n[[bots.channels]]\ntype = "carrier-pigeon"\n'
    )
    env = tmp_path / ".env"
    env.write_text("SOMETHING=1\n")
    os.chmod(env, 0o644)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    for expected in ("NO_SUCH_KEY_VAR", "persona ghost", "carrier-pigeon", "chmod 600"):
        assert expected in result.output, expected


def test_doctor_on_a_broken_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bots.toml").write_text("[llm]\nprovder = 'x'\n")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1 and "llm.provder" in result.output


def test_the_env_example_names_the_variables_the_channels_read():
    example = (files("bots") / "scaffold" / "dot.env.example").read_text()
    for name in (
        "TELEGRAM_BOT_TOKEN",
        "DISCORD_BOT_TOKEN",
        "WECOM_BOT_TOKEN",
        "WECOM_PUSH_KEY",
        "OPENAI_API_KEY",
    ):
        assert f"# {name}=" in example
    assert "TELEGRAM_TOKEN=" not in example and "DISCORD_TOKEN=" not in example


def test_init_says_what_to_run_with_the_venvs_bots_and_the_ingest(tmp_path, monkeypatch):
    deep = "/a-rather/deeply/nested/checkout/of/the/project/.venv/bin/bots"  # CI's paths are long
    monkeypatch.setattr("bots.cli.shutil.which", lambda name: deep)
    result = runner.invoke(app, ["init", str(tmp_path / "proj")])
    assert result.exit_code == 0
    hint = result.output[result.output.index("Next:") :]
    assert "cp .env.example .env" in hint and " ingest " in hint and "chat --persona mentor" in hint
    assert f"{deep} doctor && {deep} ingest && {deep} chat --persona mentor" in hint  # unbroken
