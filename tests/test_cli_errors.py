"""A new user's setup mistakes get one clear line and an exit code, never a traceback.

Each test runs ``python -m bots`` as a subprocess, as the user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _write_config(tmp_path: Path, knowledge: str = "") -> Path:
    notes = tmp_path / "knowledge" / "notes"
    notes.mkdir(parents=True)
    (notes / "fog.md").write_text("# Fog\n\nOn foggy nights the keeper sounds the horn every minute.\n")
    config = tmp_path / "bots.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\nknowledge_dir = "{tmp_path / "knowledge"}"\n'
        + (f"[knowledge]\n{knowledge}\n" if knowledge else "")
    )
    return config


def _bots(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # COLUMNS: rich wraps at 80 columns when not on a terminal; keep each message on one line
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOTS_LOG_LEVEL": "WARNING", "COLUMNS": "300"}
    result = subprocess.run(
        [sys.executable, "-m", "bots", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def _with_config(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _bots(tmp_path, *args, "--config", str(config))


# -- 1. embed-server: bad --device / --model fail fast -------------------------------------------
def test_embed_server_cuda_on_a_cpu_torch(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA")
    result = _bots(tmp_path, "embed-server", "--device", "cuda")
    assert result.returncode == 1
    assert f"error: --device cuda: this torch has no CUDA (torch {torch.__version__})" in result.stderr


def test_embed_server_missing_model_folder(tmp_path):
    missing = tmp_path / "models" / "nope"
    result = _bots(tmp_path, "embed-server", "--model", str(missing), "--device", "cpu")
    assert result.returncode == 1
    assert f"error: --model {missing}: no such model folder" in result.stderr


def test_embed_server_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _bots(tmp_path, "embed-server", "--model", "./empty", "--device", "cpu")
    assert result.returncode == 1
    assert "error: --model ./empty: not a sentence-transformers model folder or name" in result.stderr


# -- 2. a bad [knowledge] embedding_model: ingest fails the collection, doctor reports it ---------
@pytest.mark.parametrize(
    ("model", "message"),
    [("/no/such/path", "/no/such/path: no such model folder"),
     ("no-such-org/no-such-model", "'no-such-org/no-such-model' could not be loaded")],
)  # fmt: skip
def test_bad_embedding_model(tmp_path, model, message):
    config = _write_config(tmp_path, f'embedding_model = "{model}"')

    ingest = _with_config(tmp_path, config, "ingest", "notes")
    assert ingest.returncode == 1
    assert "error: collection 'notes': " in ingest.stderr and message in ingest.stderr

    stats = _with_config(tmp_path, config, "knowledge", "stats", "notes")
    assert stats.returncode == 0
    assert "indexed: False" in stats.stdout  # not recorded as indexed with 0 chunks

    doctor = _with_config(tmp_path, config, "doctor")
    assert doctor.returncode == 1
    assert "embedding model" in doctor.stdout and message in doctor.stdout
    assert "all good" not in doctor.stdout


# -- 3. search: say when nothing matched, and which collections exist -----------------------------
def test_search_reports_no_match_and_unknown_collections(tmp_path):
    config = _write_config(tmp_path)
    (tmp_path / "knowledge" / "drafts").mkdir()  # a folder, never ingested

    assert _with_config(tmp_path, config, "ingest", "notes").returncode == 0
    found = _with_config(tmp_path, config, "search", "notes", "horn", "--method", "keyword")
    assert found.returncode == 0 and "Fog" in found.stdout

    nothing = _with_config(tmp_path, config, "search", "notes", "zebra", "--method", "keyword")
    assert nothing.returncode == 0
    assert "nothing in 'notes' matched 'zebra'" in nothing.stdout

    unknown = _with_config(tmp_path, config, "search", "nosuch", "q")
    assert unknown.returncode == 1
    assert "error: no collection 'nosuch'" in unknown.stderr
    assert "(collections: drafts, notes)" in unknown.stderr
    assert "bots ingest" not in unknown.stderr

    unindexed = _with_config(tmp_path, config, "search", "drafts", "q")
    assert unindexed.returncode == 1
    assert "bots ingest drafts" in unindexed.stderr


def test_a_plugin_table_for_no_plugin_is_named_as_written_by_doctor_and_run(tmp_path, repo_root):
    config = tmp_path / "bots.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\npersonas_dir = "{repo_root / "config/personas"}"\n'
        f'knowledge_dir = "{repo_root / "knowledge"}"\n[llm]\nprovider = "fake"\n'
        '[plugins.counter]\nstep = 5\n[[bots]]\nname = "b"\npersona = "keeper"\n'
    )
    doctor = _with_config(tmp_path, config, "doctor")
    assert doctor.returncode == 1 and "no plugin of that name: [plugins.counter]" in doctor.stdout
    run = _with_config(tmp_path, config, "run")
    assert run.returncode == 1 and "error: [plugins.counter]: no plugin of that name" in run.stderr
