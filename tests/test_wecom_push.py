"""The WeCom group push channel: our adapter, a real Host, the webhook emulator over real HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bots.adapters.wecom_push import WeComPushAdapter, WeComPushError, parse_key
from bots.core.config import ConfigError, Secrets
from bots.core.events import ChannelKind, ChannelRef, Outbound
from bots.core.splitting import split_message
from bots.testing import FakeLLM
from bots.testing.harness import BOT
from bots.testing.wecom_server import WeComPushServer

TARGET = ChannelRef("wecom", "wrGroup01", ChannelKind.GROUP)
RATE = 3  # posts per second in these tests (WeCom: 20 a minute)


@pytest.fixture
async def push() -> AsyncIterator[WeComPushServer]:
    async with WeComPushServer(limit=RATE, window_s=1.0) as server:
        yield server


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, push: WeComPushServer) -> Secrets:
    monkeypatch.setenv("WECOM_PUSH_KEY", push.key)
    return Secrets()


def make_adapter(push: WeComPushServer, secrets: Secrets, **options: Any) -> WeComPushAdapter:
    settings = {"base_url": push.base_url, "rate": f"{RATE}/second", "retry_after_s": 0.3, **options}
    return WeComPushAdapter.from_config("push", settings, secrets)


async def start(harness: Any, push: WeComPushServer, secrets: Secrets, **options: Any) -> Any:
    return await harness(adapter=make_adapter(push, secrets, **options), llm=FakeLLM())


def digest(paragraphs: int) -> str:
    lines = [
        f"第{i}条：今天群里讨论了灯塔的维护计划，大家同意每周检查一次灯泡和发电机，并记录在共享文档里。"
        "Alice proposed a rota for the night shifts; Bob will check the foghorn on Fridays. "
        for i in range(1, paragraphs + 1)
    ]
    return "今日群聊摘要 Daily digest\n\n" + "\n\n".join(lines)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


async def test_a_long_digest_is_split_to_2048_bytes_and_paced_to_the_rate(harness, push, secrets):
    h = await start(harness, push, secrets)
    text = digest(56)
    expected = split_message(text, 2048, "utf8")
    assert len(expected) >= 7
    began = time.monotonic()
    refs = await h.host.send(BOT, Outbound(TARGET, text))
    assert len(refs) == len(expected) and all(ref.channel_id == "wrGroup01" for ref in refs)
    parts = push.received
    assert [p.content for p in parts] == expected  # all parts, in order
    assert all(p.msgtype == "text" and len(p.content.encode()) <= 2048 for p in parts)
    assert _squeeze("".join(p.content for p in parts)) == _squeeze(text)
    assert push.answers == [0] * len(expected)  # the emulator never had to say 45009
    # never more than RATE posts within one second, and the later ones waited for room
    gaps = [later.at - earlier.at for earlier, later in zip(parts, parts[RATE:], strict=False)]
    assert min(gaps) >= 0.95, gaps
    assert time.monotonic() - began >= (len(parts) - 1) // RATE * 0.95


async def test_markdown_posts_take_4096_bytes(harness, push, secrets):
    h = await start(harness, push, secrets, markup="markdown")
    assert h.adapter.capabilities.max_length == 4096 and h.adapter.capabilities.length_unit == "utf8"
    text = "# 专栏\n\n" + "**灯塔**手记：夜里的海面很安静。\n\n" * 200
    await h.host.send(BOT, Outbound(TARGET, text))
    assert all(p.msgtype == "markdown" and len(p.content.encode()) <= 4096 for p in push.received)
    assert len(push.received) == len(split_message(text, 4096, "utf8")) >= 2


async def test_a_markdown_outbound_goes_as_markdown_on_a_text_channel(harness, push, secrets):
    h = await start(harness, push, secrets)
    await h.host.send(BOT, Outbound(TARGET, "**bold** news", markup="markdown"))
    assert (await push.next_message()).msgtype == "markdown"


async def test_45009_waits_and_retries(harness, push, secrets):
    h = await start(harness, push, secrets)
    push.fail_next(45009)
    began = time.monotonic()
    await h.host.send(BOT, Outbound(TARGET, "hello group"))
    assert time.monotonic() - began >= 0.3  # retry_after_s
    assert push.answers == [45009, 0]
    assert [p.content for p in push.received] == ["hello group"]


async def test_still_limited_after_the_retries_is_an_error(harness, push, secrets):
    h = await start(harness, push, secrets, max_retries=1, retry_after_s=0.05)
    push.fail_next(45009)
    push.fail_next(45009)
    with pytest.raises(WeComPushError, match="45009"):
        await h.host.send(BOT, Outbound(TARGET, "hello"))
    assert push.received == []


async def test_a_bad_key_is_a_clear_error_without_the_key(harness, push, monkeypatch):
    monkeypatch.setenv("WECOM_PUSH_KEY", "00000000-1111-2222-3333-444444444444")
    h = await start(harness, push, Secrets())
    with pytest.raises(WeComPushError, match="rejected the key in WECOM_PUSH_KEY") as info:
        await h.host.send(BOT, Outbound(TARGET, "hello"))
    assert "00000000-1111" not in str(info.value) and "93000" in str(info.value)


async def test_an_unreachable_webhook_fails_without_leaking_the_key(harness, push, secrets):
    adapter = WeComPushAdapter.from_config(
        "push", {"base_url": "http://127.0.0.1:9", "max_retries": 1}, secrets
    )
    h = await harness(adapter=adapter, llm=FakeLLM())
    with pytest.raises(WeComPushError, match="posting to WeCom failed") as info:
        await h.host.send(BOT, Outbound(TARGET, "hello"))
    assert push.key not in str(info.value)


def test_config_errors(monkeypatch, push):
    monkeypatch.setenv("WECOM_PUSH_KEY", "")
    with pytest.raises(ConfigError, match="WECOM_PUSH_KEY"):
        make_adapter(push, Secrets())
    monkeypatch.setenv("WECOM_PUSH_KEY", "not a key!")
    with pytest.raises(ConfigError, match="WECOM_PUSH_KEY is not a webhook key") as info:
        make_adapter(push, Secrets())
    assert "not a key!" not in str(info.value)
    monkeypatch.setenv("WECOM_PUSH_KEY", push.key)
    with pytest.raises(ConfigError, match="rate"):
        make_adapter(push, Secrets(), rate="often")
    with pytest.raises(ConfigError, match="markup"):
        make_adapter(push, Secrets(), markup="html")


def test_the_key_may_be_given_as_the_whole_webhook_url(push):
    assert parse_key(push.webhook_url) == push.key
    assert parse_key(f"  {push.key}\n") == push.key
    assert parse_key("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=") is None
