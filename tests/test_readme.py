"""The README's configuration examples work as written: each ```toml block is valid TOML, validates
with the real config loader, and the bots it describes can be built (plugins found, channels known,
model settings coherent), so the README cannot drift from the code again."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bots.agent.persona import Persona
from bots.assembly import build_host, select_plugins
from bots.core.config import AppConfig, Secrets
from bots.plugins.manager import discover
from bots.testing import FakeLLM

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
COLLECTION_KEYS = {"title", "role", "include", "chunk_size"}  # a collection.toml, not bots.toml
SECRETS = {  # well-formed values for the variables the examples' channels read
    "TELEGRAM_BOT_TOKEN": "123456:ABC-def_ghi",
    "TELEGRAM_WEBHOOK_SECRET": "s3cret-token_for_webhooks",
    "DISCORD_BOT_TOKEN": "x" * 59,
    "WECOM_BOT_TOKEN": "Token123",
    "WECOM_BOT_AES_KEY": "a" * 43,
    "WECOM_PUSH_KEY": "0a1b2c3d-0000-1111-2222-333344445555",
    "ONEBOT_ACCESS_TOKEN": "bridge-token",
    "DEEPSEEK_API_KEY": "sk-test",
    "OPENAI_API_KEY": "sk-test",
}


def as_app_config(data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A README snippet as a whole bots.toml: a lone [[bots.channels]] or [[bots.schedules]] table
    belongs to one bot; paths go to a temporary folder."""
    if isinstance(data.get("bots"), dict):
        data["bots"] = [{"name": "b", "persona": "p", **data["bots"]}]
    return {**data, "data_dir": tmp_path / "var", "personas_dir": tmp_path, "plugin_dirs": []}


def test_the_readme_has_config_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[f"toml-{i}" for i in range(len(BLOCKS))])
def test_each_config_example_validates_and_builds(block, tmp_path, monkeypatch):
    data = tomllib.loads(block)
    if COLLECTION_KEYS & set(data):
        pytest.skip("a collection.toml example (checked by the knowledge tests' loader)")
    config = AppConfig.model_validate(as_app_config(data, tmp_path))
    if config.llm.provider == "local":
        assert config.llm.model is None or config.llm.model.endswith(".gguf"), "a local model is a GGUF path"
    found = discover()
    for name in config.plugins:  # a [plugins.NAME] table for a plugin nobody has is a silent no-op
        assert name in found, f"[plugins.{name}]: no such plugin (found: {sorted(found)})"
    for bot in config.bots:
        select_plugins(config, bot)  # every plugin a bot names exists
    for variable, value in SECRETS.items():  # channels are built as `bots run` builds them
        monkeypatch.setenv(variable, value)
    personas = {
        bot.persona: Persona(name=bot.persona, system_prompt="A test persona.") for bot in config.bots
    }
    build_host(config, Secrets(), personas=personas, llm=FakeLLM(), scheduler=False)
