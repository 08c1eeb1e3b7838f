"""`bots ingest` as a user runs it: a subprocess on a small folder, judged by its output and exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """bots.toml and knowledge/docs/ with one good file; tests add the bad ones."""
    (tmp_path / "bots.toml").write_text(
        f'data_dir = "{(tmp_path / "var").as_posix()}"\n'
        f'knowledge_dir = "{(tmp_path / "knowledge").as_posix()}"\n'
    )
    docs = tmp_path / "knowledge" / "docs"
    docs.mkdir(parents=True)
    (docs / "fog.md").write_text("# Fog\n\nThe keeper lights the lamp early when the fog rolls in.\n")
    return tmp_path


def ingest(workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOTS_LOG_LEVEL": "WARNING", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bots", "ingest", *args, "--config", str(workspace / "bots.toml")],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_bad_and_empty_files_are_skipped_quietly_and_a_rerun_exits_0(workspace: Path) -> None:
    docs = workspace / "knowledge" / "docs"
    (docs / "broken.pdf").write_bytes(b"not a pdf at all")
    (docs / "empty.txt").write_bytes(b"")
    (docs / "blank.md").write_text("  \n\n\t \n")

    first = ingest(workspace)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output
    assert "Traceback" not in output
    # pypdf's own log lines about the broken file stay off the screen ...
    assert "invalid pdf header" not in output and "EOF marker" not in output
    # ... our one line about it stays
    assert "skipped" in first.stderr and "broken.pdf: not a readable PDF" in first.stderr
    assert "docs: 1 added, 0 changed, 0 unchanged, 0 removed, 3 skipped" in first.stdout
    assert "broken.pdf unreadable" in first.stdout
    assert "empty.txt empty" in first.stdout and "blank.md empty" in first.stdout

    again = ingest(workspace)  # nothing changed: the same warning, and no failure
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
    assert "docs: 0 added, 0 changed, 1 unchanged, 0 removed, 3 skipped" in again.stdout


def test_many_skipped_files_list_only_a_few_names(workspace: Path) -> None:
    docs = workspace / "knowledge" / "docs"
    for i in range(5):
        (docs / f"empty{i}.txt").write_bytes(b"")
    result = ingest(workspace)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 skipped (empty0.txt empty, empty1.txt empty, empty2.txt empty, 2 more)" in result.stdout
    assert "empty4.txt" not in result.stdout


def test_a_collection_that_cannot_be_indexed_exits_1_in_one_line(workspace: Path) -> None:
    (workspace / "knowledge" / "docs" / "collection.toml").write_text("include = [unclosed\n")
    broken_settings = ingest(workspace)
    assert broken_settings.returncode == 1
    assert "error:" in broken_settings.stderr and "Traceback" not in broken_settings.stderr

    (workspace / "knowledge" / "docs" / "collection.toml").unlink()
    with (workspace / "bots.toml").open("a") as config:
        config.write(f'[knowledge]\nembedding_model = "{(workspace / "no-such-model").as_posix()}"\n')
    no_model = ingest(workspace)
    assert no_model.returncode == 1
    assert "error:" in no_model.stderr and "no-such-model" in no_model.stderr
    assert "Traceback" not in no_model.stdout + no_model.stderr


def test_help_states_the_exit_code_rule(workspace: Path) -> None:
    result = ingest(workspace, "--help")
    assert result.returncode == 0
    assert "Exit code: 0 when every readable file is indexed" in " ".join(result.stdout.split())
