"""Host lifecycle and the console channel."""

from __future__ import annotations

import asyncio
import io
from typing import ClassVar

import pytest

from bots.adapters.console import ConsoleAdapter
from bots.assembly import build_host
from bots.core import gate
from bots.core.adapter import NotAccepted
from bots.core.config import AppConfig, Secrets
from bots.plugins import Plugin
from bots.testing import FakeAdapter, FakeLLM
from bots.testing.harness import TEST_PERSONA


class Lifecycle(Plugin):
    name = "lifecycle"
    events: ClassVar[list[str]] = []

    async def setup(self) -> None:
        Lifecycle.events.append("setup")

    async def teardown(self) -> None:
        Lifecycle.events.append("teardown")


async def test_clean_start_and_stop(harness):
    Lifecycle.events = []
    h = await harness(plugins=["basics", Lifecycle])
    assert h.adapter.started and Lifecycle.events == ["setup"]
    await h.ask("hello")
    await h.host.stop()
    assert not h.adapter.started and Lifecycle.events == ["setup", "teardown"]
    with pytest.raises(NotAccepted):  # so the adapter does not acknowledge it to the platform
        await h.push("after stop")
    await asyncio.sleep(0)
    assert h.adapter.take_sent() == []


async def test_stop_waits_for_messages_in_flight(harness):
    h = await harness(llm=FakeLLM(default="slow answer", delay_s=0.2))
    await h.push("question")
    await h.host.stop()  # drains before closing storage
    assert [o.text for o in h.adapter.take_sent()] == ["slow answer"]


async def test_several_bots_in_one_host(tmp_path):
    config = AppConfig.model_validate(
        {
            "data_dir": tmp_path,
            "llm": {"provider": "fake"},
            "bots": [{"name": "a", "persona": "t"}, {"name": "b", "persona": "t", "command_prefix": "!"}],
        }
    )
    adapters = {"a": [FakeAdapter("chan-a")], "b": [FakeAdapter("chan-b")]}
    llm = FakeLLM(default="hi")
    host = build_host(config, Secrets(), personas={"t": TEST_PERSONA}, llm=llm, adapters=adapters)
    async with host:
        await adapters["a"][0].push("/ping")
        await adapters["b"][0].push("!ping")
        await adapters["b"][0].push("/ping")  # not b's prefix: a plain message to the agent
        await host.drain()
    assert [o.text for o in adapters["a"][0].sent] == ["pong"]
    assert [o.text for o in adapters["b"][0].sent] == ["pong", "hi"]


async def test_console_repl_answers_in_order_then_exits(tmp_path):
    lines = iter(["/ping\n", "\n", "how are you?\n", "/quit\n"])
    output = io.StringIO()
    console = ConsoleAdapter(speaker="Tester", output=output, read_line=lambda: next(lines))
    config = AppConfig.model_validate(
        {"data_dir": tmp_path, "llm": {"provider": "fake"}, "bots": [{"name": "c", "persona": "t"}]}
    )
    host = build_host(
        config,
        Secrets(),
        personas={"t": TEST_PERSONA},
        llm=FakeLLM(default="Fine, thank you."),
        adapters={"c": [console]},
    )
    console.on_exit = host.request_stop
    await asyncio.wait_for(host.serve_forever(), timeout=10)
    assert output.getvalue().splitlines() == ["Tester> pong", "Tester> Fine, thank you."]


class BrokenAdapter(FakeAdapter):
    async def start(self, sink) -> None:
        raise ConnectionError("gateway unreachable")


async def test_a_failed_start_undoes_what_had_started(tmp_path):
    Lifecycle.events = []
    config = AppConfig.model_validate(
        {"data_dir": tmp_path, "llm": {"provider": "fake"}, "bots": [{"name": "b", "persona": "t"}]}
    )
    good, broken = FakeAdapter("good"), BrokenAdapter("broken")
    host = build_host(
        config,
        Secrets(),
        personas={"t": TEST_PERSONA},
        llm=FakeLLM(),
        adapters={"b": [good, broken]},
        plugin_classes=[Lifecycle],
    )
    with pytest.raises(ConnectionError):
        await host.start()
    assert not good.started  # the channel that did start was stopped again
    assert Lifecycle.events == ["setup", "teardown"]
    memory = host.bots["b"].pipeline.responder.memory
    assert memory._writer is None  # the memory writer is not left running


class GateWatchingAdapter(FakeAdapter):
    """Notes whether the quality gate's tables were loaded when the host started it."""

    async def start(self, sink) -> None:
        self.gate_ready = gate._common_characters.cache_info().currsize == 1
        await super().start(sink)


async def test_the_gate_tables_load_off_the_loop_before_any_channel_starts(harness):
    """Loading them (a second or more of CPU) at the first message stalled every chat."""
    gate._common_characters.cache_clear()
    h = await harness(adapter=GateWatchingAdapter())
    assert h.adapter.gate_ready
