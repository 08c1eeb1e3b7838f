"""A host with temporary storage, a FakeAdapter and a FakeLLM, for pipeline tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from bots.agent.persona import Persona
from bots.agent.retrieval import NoRetrieval, Retriever
from bots.assembly import build_host
from bots.core.adapter import Adapter
from bots.core.config import AppConfig, Secrets
from bots.core.events import MessageEvent, Outbound
from bots.core.host import Host
from bots.plugins.api import Plugin
from bots.plugins.manager import discover
from bots.testing.fakes import FakeAdapter, FakeLLM

TEST_PERSONA = Persona(
    name="Tester",
    system_prompt="You are Tester, a patient test persona.",
    style=["Short answers."],
)
BOT = "testbot"


class Harness:
    def __init__(self, host: Host, adapter: Any, llm: Any, config: AppConfig) -> None:
        self.host = host
        self.adapter = adapter
        self.llm = llm
        self.config = config

    async def push(self, text: str | MessageEvent, **kwargs: Any) -> MessageEvent:
        return await self.adapter.push(text, **kwargs)

    async def next_sent(self, timeout: float = 5.0) -> Outbound:
        return await self.adapter.next_sent(timeout)

    async def drain(self, timeout: float = 10.0) -> None:
        await self.host.drain(timeout=timeout)

    async def ask(self, text: str, *, timeout: float = 10.0, **kwargs: Any) -> list[Outbound]:
        """Push a message, wait until it is handled (at most ``timeout`` seconds: a real model on a
        busy machine needs more), and return everything sent meanwhile."""
        await self.push(text, **kwargs)
        await self.drain(timeout)
        if self.host.in_flight:
            raise TimeoutError(f"{text!r} was still being handled after {timeout} s (ask(timeout=...))")
        return self.adapter.take_sent()


class HarnessFactory:
    """``await harness(...)`` builds and starts a host; all are stopped when the test ends."""

    def __init__(self, tmp_path: Path, database_url: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url  # every host's state store (None: SQLite in its data_dir)
        self._hosts: list[Host] = []

    async def __call__(
        self,
        *,
        persona: Persona = TEST_PERSONA,
        plugins: Sequence[str | type[Plugin]] = ("basics",),
        llm: BaseChatModel | None = None,
        adapter: Adapter | None = None,
        data_dir: Path | None = None,
        bot: dict[str, Any] | None = None,
        llm_settings: dict[str, Any] | None = None,
        plugin_config: dict[str, dict[str, Any]] | None = None,
        retriever: Retriever | None = None,
        start: bool = True,
        **config: Any,
    ) -> Harness:
        """``config`` keys are top-level ``bots.toml`` keys (roles=..., rate_limits=..., ...);
        ``llm_settings`` is the ``[llm]`` table (timeouts, retries) applied around the fake LLM;
        ``plugin_config`` holds the ``[plugins.<name>]`` tables; ``start=False`` leaves starting
        the host to the test. ``adapter`` may be any channel
        (a FakeAdapter by default; a real adapter pointed at an emulator in channel tests)."""
        app = AppConfig.model_validate(
            {
                "data_dir": data_dir or self.tmp_path / "var",
                "llm": {"provider": "fake", **(llm_settings or {})},
                "plugins": plugin_config or {},
                "database_url": self.database_url,
                **config,
                "bots": [{"name": BOT, "persona": "test", **(bot or {})}],
            }
        )
        llm = llm or FakeLLM()
        adapter = adapter or FakeAdapter()
        host = build_host(
            app,
            Secrets(),
            personas={"test": persona},
            llm=llm,
            adapters={BOT: [adapter]},
            plugin_classes=_plugin_classes(plugins),
            retriever=retriever or NoRetrieval(),
        )
        self._hosts.append(host)
        if start:
            await host.start()
        return Harness(host, adapter, llm, app)

    async def close(self) -> None:
        for host in reversed(self._hosts):
            await host.stop()
        self._hosts.clear()


def _plugin_classes(plugins: Sequence[str | type[Plugin]]) -> list[type[Plugin]]:
    names = [p for p in plugins if isinstance(p, str)]
    found = discover() if names else {}
    classes = []
    for plugin in plugins:
        if isinstance(plugin, str):
            if plugin not in found:
                raise LookupError(f"no installed plugin named {plugin!r} (found: {sorted(found)})")
            classes.append(found[plugin])
        else:
            classes.append(plugin)
    return classes


__all__ = ["BOT", "TEST_PERSONA", "Harness", "HarnessFactory"]
