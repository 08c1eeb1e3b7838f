"""`bots run` with the WeCom channels: both start from config, secrets from the env, clear errors."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures.configs import write_bot_config
from typer.testing import CliRunner

from bots.assembly import build_host
from bots.cli import app
from bots.core.config import Secrets, load_config
from bots.core.events import ChannelKind, ChannelRef, Outbound
from bots.testing import FakeLLM
from bots.testing.harness import TEST_PERSONA
from bots.testing.wecom_server import WeComPushServer, WeComServer

ENV = ("WECOM_BOT_TOKEN", "WECOM_BOT_AES_KEY", "WECOM_PUSH_KEY")


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def write_config(tmp_path: Path, push_url: str = "http://127.0.0.1:9") -> Path:
    return write_bot_config(
        tmp_path,
        f"""
[[bots.channels]]
type = "wecom"
name = "wecom"
bot_name = "Persona"
listen = "127.0.0.1"
port = 0
[[bots.channels]]
type = "wecom_push"
name = "push"
base_url = "{push_url}"
""",
    )


def run(config: Path) -> tuple[int, str]:
    """`bots run`'s exit code and output, on one line (the console wraps long lines)."""
    result = CliRunner().invoke(app, ["run", "--config", str(config)])
    return result.exit_code, " ".join(result.output.split())


def test_run_names_each_missing_or_malformed_key(tmp_path, no_keys, monkeypatch):
    config = write_config(tmp_path)
    code, out = run(config)
    assert code == 1 and "WECOM_BOT_TOKEN" in out and "Traceback" not in out
    monkeypatch.setenv("WECOM_BOT_TOKEN", "QDG6eK")
    code, out = run(config)
    assert code == 1 and "WECOM_BOT_AES_KEY" in out
    monkeypatch.setenv("WECOM_BOT_AES_KEY", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2")  # 42 characters
    code, out = run(config)
    assert code == 1
    assert "WECOM_BOT_AES_KEY: the EncodingAESKey must be 43 characters, got 42" in out
    assert "jWmYm7qr5nMoAUwZ" not in out
    monkeypatch.setenv("WECOM_BOT_AES_KEY", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C")
    monkeypatch.setenv("WECOM_PUSH_KEY", "")
    code, out = run(config)
    assert code == 1 and "WECOM_PUSH_KEY" in out
    monkeypatch.setenv("WECOM_PUSH_KEY", "key with spaces")
    code, out = run(config)
    assert code == 1 and "WECOM_PUSH_KEY is not a webhook key" in out
    assert "Traceback" not in out


@pytest.fixture
async def platforms(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[WeComServer, WeComPushServer]]:
    async with WeComServer(bot_name="Persona") as wecom, WeComPushServer() as push:
        monkeypatch.setenv("WECOM_BOT_TOKEN", wecom.token)
        monkeypatch.setenv("WECOM_BOT_AES_KEY", wecom.aes_key)
        monkeypatch.setenv("WECOM_PUSH_KEY", push.key)
        yield wecom, push


async def test_both_wecom_channels_start_from_config_and_work(tmp_path, platforms):
    wecom, push = platforms
    config = load_config(write_config(tmp_path, push.base_url))
    host = build_host(config, Secrets(), personas={"tester": TEST_PERSONA}, llm=FakeLLM(default="hi!"))
    async with host:
        bot = host.bots["tester"]
        assert [(a.name, a.platform) for a in bot.adapters] == [("wecom", "wecom"), ("push", "wecom")]
        wecom.callback_url = f"http://127.0.0.1:{bot.channel('wecom').port}/wecom"  # type: ignore[attr-defined]
        assert await wecom.verified()
        chat = await wecom.send_text("alice", "hello?")
        assert (await chat.wait()).strip() == "hi!"
        group = ChannelRef("wecom", "wrGroup01", ChannelKind.GROUP)
        await host.send("tester", Outbound(group, "the evening digest"), channel="push")
        assert (await push.next_message()).content == "the evening digest"
    assert wecom.errors == []


def test_posts_of_the_bots_own_go_through_the_push_channel():
    from bots.core.host import Bot
    from bots.testing import FakeAdapter

    class AnswersOnly(FakeAdapter):
        platform = "wecom"

    class Push(FakeAdapter):
        platform = "wecom"

    answers, push = AnswersOnly("wecom"), Push("push")
    answers.capabilities = dataclasses.replace(answers.capabilities, proactive=False)
    bot = Bot(name="b", pipeline=None, adapters=[answers, push])  # type: ignore[arg-type]
    assert bot.adapter_for("wecom") is push
