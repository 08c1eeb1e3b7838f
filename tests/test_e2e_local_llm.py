"""End to end with the real embedded model (SmolLM2-135M on llama.cpp), no fakes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bots.agent.persona import PersonaLibrary
from bots.agent.providers import build_llm
from bots.agent.providers.local import LlamaCppChatModel, bundled_model_path
from bots.core.config import LLMConfig, Secrets
from bots.testing import FakeAdapter

pytestmark = pytest.mark.llm


def test_cli_chat_prints_a_real_reply(repo_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOTS_LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-m", "bots", "chat", "--persona", "keeper", "--message", "hi",
         "--data-dir", str(tmp_path)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = result.stdout.strip()
    assert reply, result.stderr
    apology = PersonaLibrary(repo_root / "config/personas").get("keeper").apology_text
    assert reply != apology  # the model answered; this is not the error path


async def test_pipeline_streams_a_real_answer_and_remembers_it(harness, repo_root):
    llm = build_llm(LLMConfig(provider="local", max_tokens=48, temperature=0.0), Secrets())
    assert isinstance(llm, LlamaCppChatModel)
    assert bundled_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    keeper = PersonaLibrary(repo_root / "config/personas").get("keeper")
    h = await harness(persona=keeper, llm=llm, adapter=FakeAdapter(streaming=True))
    # a real model on a busy 2-core machine: wait for the answer, however long it takes
    replies = await h.ask("What do you do on foggy nights?", timeout=300)
    assert len(replies) == 1, f"no answer from the local model within 300 s: {replies}"
    [reply] = replies
    assert reply.text.strip() and reply.text != keeper.apology_text
    turns = await h.host.bots["testbot"].pipeline.responder.memory.recent("fake:u1")
    assert [t.role for t in turns] == ["human", "ai"] and turns[1].content == reply.text.strip()


def test_sample_persona_answers_from_its_knowledge_with_a_citation(repo_root, tmp_path):
    config = tmp_path / "bots.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\n'
        f'personas_dir = "{repo_root / "config/personas"}"\n'
        f'knowledge_dir = "{repo_root / "knowledge"}"\n'
        "[llm]\nmax_tokens = 64\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BOTS_LOG_LEVEL": "WARNING"}

    def bots(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bots", *args, "--config", str(config)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    ingest = bots("ingest", "lighthouse")
    assert ingest.returncode == 0, ingest.stderr
    answer = bots("chat", "--persona", "keeper", "--message", "雾天你怎么值班？")
    assert answer.returncode == 0, answer.stderr
    assert "出处：[1] 雾中的灯 (fog.md, line" in answer.stdout  # composed: cited at its lines
