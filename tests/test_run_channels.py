"""`bots run` with Telegram and Discord channels: both start from config, tokens from the env."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures.configs import write_bot_config
from typer.testing import CliRunner

from bots.assembly import build_host
from bots.cli import app
from bots.core.config import ConfigError, Secrets, load_config
from bots.testing import FakeLLM
from bots.testing.discord_server import DiscordServer
from bots.testing.harness import TEST_PERSONA
from bots.testing.telegram_server import TelegramServer

TG_TOKEN = "123456:TEST-token_abc"
DC_TOKEN = "MTIz.emulator.token-abc"


def write_config(
    tmp_path: Path, telegram_url: str | None = "http://127.0.0.1:9", discord: DiscordServer | None = None
) -> Path:
    """Telegram (unless ``telegram_url`` is None) and Discord, pointed at ``discord`` by its
    api_base_url and gateway_url keys when given: no patching, so a `bots run` subprocess reaches it."""
    channels = ""
    if telegram_url:
        channels += f'[[bots.channels]]\ntype = "telegram"\nbase_url = "{telegram_url}"\npoll_timeout = 5\n'
    channels += '[[bots.channels]]\ntype = "discord"\nready_timeout = 10\n'
    if discord is not None:
        channels += "".join(f'{key} = "{url}"\n' for key, url in discord.channel_options().items())
    return write_bot_config(tmp_path, channels)


@pytest.fixture
def no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_run_names_the_missing_token(tmp_path, no_tokens, monkeypatch):
    config = write_config(tmp_path)
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "TELEGRAM_BOT_TOKEN" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TG_TOKEN)
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1 and "DISCORD_BOT_TOKEN" in result.output


async def test_run_stops_with_a_clear_message_on_a_rejected_token(tmp_path, no_tokens):
    async with TelegramServer(token=TG_TOKEN) as tg:
        config = write_config(tmp_path, tg.base_url)
        env = {**os.environ, "TELEGRAM_BOT_TOKEN": "999:wrong-token", "DISCORD_BOT_TOKEN": DC_TOKEN}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bots", "run", "--config", str(config),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = output.decode()
    assert proc.returncode == 1, text
    assert "Telegram rejected the token in TELEGRAM_BOT_TOKEN" in text
    assert "wrong-token" not in text and "Traceback" not in text


@pytest.fixture
async def platforms(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TelegramServer, DiscordServer]]:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TG_TOKEN)
    monkeypatch.setenv("DISCORD_BOT_TOKEN", DC_TOKEN)
    async with TelegramServer(token=TG_TOKEN) as tg, DiscordServer(token=DC_TOKEN) as dc:
        yield tg, dc


async def test_both_channels_start_from_config_and_answer(tmp_path, platforms):
    tg, dc = platforms
    config = load_config(write_config(tmp_path, tg.base_url, dc))
    host = build_host(config, Secrets(), personas={"tester": TEST_PERSONA}, llm=FakeLLM(default="hi!"))
    async with host:
        assert sorted(a.platform for a in host.bots["tester"].adapters) == ["discord", "telegram"]
        tg.private_message("alice", "hello?")
        await dc.dm(dc.alice, "hello?")
        assert (await tg.next_sent())["text"] == "hi!"
        assert (await dc.next_sent()).content == "hi!"


async def test_a_rejected_discord_token_stops_the_start(tmp_path, platforms, monkeypatch):
    tg, dc = platforms
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "MTIz.wrong.token")
    config = load_config(write_config(tmp_path, tg.base_url, dc))
    host = build_host(config, Secrets(), personas={"tester": TEST_PERSONA}, llm=FakeLLM())
    with pytest.raises(ConfigError, match="Discord rejected the token in DISCORD_BOT_TOKEN"):
        await host.start()
    assert not host.bots["tester"].adapters[0]._poller  # the started Telegram channel was stopped


async def test_bots_run_reaches_a_discord_server_named_in_the_config(tmp_path, no_tokens):
    async with DiscordServer(token=DC_TOKEN) as dc:
        config = write_config(tmp_path, None, dc)
        env = {**os.environ, "DISCORD_BOT_TOKEN": DC_TOKEN}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bots", "run", "--config", str(config),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            await dc.wait_identified(1, timeout=60)
            await dc.dm(dc.alice, "/ping")
            assert (await dc.next_sent(timeout=30)).content == "pong"
        finally:
            proc.terminate()
            output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert "Traceback" not in output.decode(), output.decode()


def test_doctor_checks_each_channel_without_connecting(tmp_path, no_tokens, monkeypatch):
    config = write_config(tmp_path)
    monkeypatch.setenv("DISCORD_BOT_TOKEN", DC_TOKEN)
    result = CliRunner().invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    assert "TELEGRAM_BOT_TOKEN" in result.output and DC_TOKEN not in result.output
