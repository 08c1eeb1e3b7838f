"""`bots run` with a OneBot v11 channel: started from config, access token from the env."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from fixtures.configs import write_bot_config
from typer.testing import CliRunner

from bots.assembly import build_host
from bots.cli import app
from bots.core.config import Secrets, load_config
from bots.testing import FakeLLM
from bots.testing.harness import TEST_PERSONA
from bots.testing.onebot_bridge import OneBotBridge

TOKEN = "onebot-run-t0ken"


@pytest.fixture
def no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEBOT_ACCESS_TOKEN", raising=False)


def write_config(tmp_path: Path, *, port: int = 0, channel: str = "") -> Path:
    return write_bot_config(
        tmp_path,
        f"""
[[bots.channels]]
type = "onebot"
name = "qq"
port = {port}
reconnect_wait = 5
{channel}
""",
    )


def test_run_names_the_missing_access_token(tmp_path, no_token):
    result = CliRunner().invoke(app, ["run", "--config", str(write_config(tmp_path))])
    assert result.exit_code == 1
    assert "ONEBOT_ACCESS_TOKEN" in result.output and "Traceback" not in result.output


def test_run_refuses_an_open_bridge_on_a_public_address(tmp_path, no_token):
    config = write_config(tmp_path, channel='listen = "0.0.0.0"\nrequire_token = false')
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "without an access token" in result.output and "ONEBOT_ACCESS_TOKEN" in result.output


async def test_the_channel_starts_from_config_and_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBOT_ACCESS_TOKEN", TOKEN)
    config = load_config(write_config(tmp_path))
    host = build_host(config, Secrets(), personas={"tester": TEST_PERSONA}, llm=FakeLLM(default="hi!"))
    async with host, OneBotBridge(token=TOKEN, heartbeat_interval=None) as bridge:
        adapter = host.bots["tester"].adapters[0]
        assert adapter.platform == "qq" and adapter.name == "qq"
        await bridge.connect(adapter.url)
        await bridge.private_message(42, "hello?")
        assert (await bridge.next_sent())["text"] == "hi!"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _connect_when_up(bridge: OneBotBridge, url: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await bridge.connect(url)
                return
            except aiohttp.ClientConnectorError:  # the CLI is still starting
                await asyncio.sleep(0.1)


async def test_bots_run_serves_the_bridge_until_stopped(tmp_path):
    port = _free_port()
    config = write_config(tmp_path, port=port)
    env = {**os.environ, "ONEBOT_ACCESS_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "run", "--config", str(config),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with OneBotBridge(token=TOKEN, heartbeat_interval=None) as bridge:
            await _connect_when_up(bridge, f"ws://127.0.0.1:{port}/onebot/v11/ws", timeout=60)
            await bridge.group_message(5001, 42, "/ping")
            assert (await bridge.next_sent(timeout=10))["text"] == "pong"
            proc.send_signal(signal.SIGINT)
            await bridge.wait_closed(timeout=20)  # the host closed the connection on its way out
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, output.decode()
    assert TOKEN not in output.decode()
