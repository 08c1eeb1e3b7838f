"""`bots serve` and `bots api-key` as an operator runs them: real processes, real HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from fixtures.configs import write_bot_config
from typer.testing import CliRunner

from bots.cli import app
from bots.core.config import ConfigError
from bots.testing.servers import free_port
from bots.web import web_service

ANSWER = "The lamp is lit at dusk."


def write_config(tmp_path: Path, port: int, web: str = "") -> Path:
    config = write_bot_config(tmp_path, 'plugins = ["basics"]\n[[bots.channels]]\ntype = "openai"\n')
    text = config.read_text(encoding="utf-8").replace(
        'provider = "fake"', f'provider = "fake"\nmodel = "{ANSWER}"\n[web]\nport = {port}\n{web}'
    )
    config.write_text(text, encoding="utf-8")
    return config


async def serving_url(proc: asyncio.subprocess.Process, log: list[str], limit_s: float = 120) -> str:
    """The address ``bots serve`` says it serves on (it picked a free port: ``port = 0``); the
    lines it printed meanwhile go to ``log``."""

    async def read() -> str:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            log.append(line)
            if found := re.search(r"web: serving on (http://\S+)", line):
                return found.group(1)
        raise AssertionError(f"bots serve exited with {await proc.wait()}:\n{''.join(log)}")

    try:
        return await asyncio.wait_for(read(), limit_s)
    except TimeoutError:
        said = "".join(log)
        raise AssertionError(f"bots serve did not say where it serves within {limit_s} s:\n{said}") from None


async def test_serve_answers_with_a_key_from_the_cli_and_stops_on_sigterm(tmp_path):
    config = write_config(tmp_path, 0)  # a free port, bound by the server itself: no race for it
    runner = CliRunner()  # in a thread: the commands run their own event loop
    created = await asyncio.to_thread(
        runner.invoke, app, ["api-key", "create", "ops", "--config", str(config)]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[0]
    assert key.startswith("sk-bots-")
    listed = await asyncio.to_thread(runner.invoke, app, ["api-key", "list", "--config", str(config)])
    assert "ops" in listed.stdout and key not in listed.stdout
    env = {**os.environ, "BOTS_LOG_LEVEL": "INFO"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots", "serve", "--config", str(config),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log: list[str] = []
    try:
        base = await serving_url(proc, log)
        assert base.startswith("http://127.0.0.1:") and not base.endswith(":0")
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0) as client:
            reply = await client.chat.completions.create(
                model="tester", messages=[{"role": "user", "content": "When is the lamp lit?"}]
            )
        assert reply.choices[0].message.content == ANSWER
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{base}/metrics")).text
        assert 'bots_messages_received_total{bot="tester",platform="openai"} 1.0' in metrics
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = "".join(log) + output.decode()
    assert proc.returncode == 0, text
    assert key not in text and key[8:] not in text  # keys never reach the log
    assert "web: serving on" in text


def test_run_refuses_an_openai_channel_without_the_web_app(tmp_path):
    config = write_config(tmp_path, free_port(), web="enabled = false\n")
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    assert result.exit_code == 1
    assert "an openai channel needs the web app" in result.output


async def test_a_port_in_use_is_named(harness):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        h = await harness(start=False, web={"port": port})
        web_service(h.host, h.config)
        with pytest.raises(ConfigError, match=rf"\[web\]: cannot listen on 127.0.0.1:{port}"):
            await h.host.start()


def test_a_port_out_of_range_is_refused_by_the_command_line(tmp_path):
    config = write_config(tmp_path, free_port())
    result = CliRunner().invoke(app, ["serve", "--config", str(config), "--port", "70000"])
    assert result.exit_code == 2 and "65535" in result.output


def test_the_address_of_an_ipv6_listener_has_brackets():
    from fastapi import FastAPI

    from bots.web import WebServer

    assert WebServer(FastAPI(), "::1", 8700).url == "http://[::1]:8700"
    assert WebServer(FastAPI(), "127.0.0.1", 8700).url == "http://127.0.0.1:8700"


def test_revoke_and_unknown_names(tmp_path):
    config = write_config(tmp_path, free_port())
    runner = CliRunner()
    assert runner.invoke(app, ["api-key", "create", "a b", "--config", str(config)]).exit_code == 1
    assert runner.invoke(app, ["api-key", "create", "ops", "--config", str(config)]).exit_code == 0
    assert runner.invoke(app, ["api-key", "revoke", "ops", "--config", str(config)]).exit_code == 0
    again = runner.invoke(app, ["api-key", "revoke", "ops", "--config", str(config)])
    assert again.exit_code == 1 and "no key named 'ops'" in again.output


def test_doctor_says_when_the_endpoint_is_not_served_or_has_no_keys(tmp_path):
    from bots.core.config import Secrets
    from bots.doctor import run_checks

    config = write_config(tmp_path, 8700, web="enabled = false\n")
    checks = {c.name: c for c in run_checks(config, Secrets())}
    assert checks["openai endpoint"].status == "warn" and "bots serve" in checks["openai endpoint"].detail
    assert checks["openai keys"].status == "warn"
    assert CliRunner().invoke(app, ["api-key", "create", "ops", "--config", str(config)]).exit_code == 0
    config.write_text(config.read_text(encoding="utf-8").replace("enabled = false", "enabled = true"))
    checks = {c.name: c for c in run_checks(config, Secrets())}
    assert checks["openai endpoint"].status == "ok" and "models tester" in checks["openai endpoint"].detail
    assert (checks["openai keys"].status, checks["openai keys"].detail) == (
        "ok",
        "1 client key(s) (bots api-key list)",
    )
