"""Plugin discovery (entry points and folders), typed config, storage and sending."""

from __future__ import annotations

import logging
import textwrap

import pytest

from bots.core.config import ConfigError
from bots.core.events import ChannelKind, ChannelRef
from bots.core.routing import Dispatch
from bots.plugins import Invocation, Plugin, command
from bots.plugins.manager import discover, load_plugins
from plugins.basics import BasicsPlugin


def test_entry_point_discovery_finds_the_builtin():
    assert discover()["basics"] is BasicsPlugin


def test_folder_discovery_and_broken_files(tmp_path, caplog):
    (tmp_path / "hello.py").write_text(
        textwrap.dedent(
            """
            from bots.plugins import Invocation, Plugin, command

            class HelloPlugin(Plugin):
                @command("hello")
                async def hello(self, inv: Invocation) -> None:
                    await inv.reply("hi " + inv.args)
            """
        )
    )
    (tmp_path / "broken.py").write_text("import this_module_does_not_exist\n")
    (tmp_path / "_private.py").write_text("raise SystemExit('must not be imported')\n")
    caplog.set_level(logging.ERROR)
    found = discover([tmp_path])
    assert "hello" in found and "basics" in found
    assert "broken.py" in caplog.text  # logged and skipped; discovery went on


async def test_folder_plugin_runs_in_the_host(harness, tmp_path):
    (tmp_path / "greet.py").write_text(
        textwrap.dedent(
            """
            from bots.plugins import Invocation, Plugin, command

            class GreetPlugin(Plugin):
                name = "greet"

                @command("greet", usage="<name>")
                async def greet(self, inv: Invocation) -> None:
                    await inv.reply(f"hello {' and '.join(inv.argv)}")
            """
        )
    )
    greet = discover([tmp_path])["greet"]
    h = await harness(plugins=["basics", greet])
    assert [o.text for o in await h.ask('/greet "Old Wen" Ada')] == ["hello Old Wen and Ada"]


class Counter(Plugin):
    name = "counter"

    class Config(Plugin.Config):
        step: int = 1

    @command("count")
    async def count(self, inv: Invocation) -> None:
        value = await self.ctx.storage.get("n", 0) + self.ctx.config.step
        await self.ctx.storage.set("n", value)
        await inv.reply(str(value))

    @command("announce")
    async def announce(self, inv: Invocation) -> None:
        await self.ctx.send(ChannelRef("fake", "town-square", ChannelKind.GROUP), inv.args)


async def test_config_storage_and_send(harness, tmp_path):
    data_dir = tmp_path / "state"
    h = await harness(plugins=[Counter], data_dir=data_dir, plugin_config={"counter": {"step": 5}})
    assert [o.text for o in await h.ask("/count")] == ["5"]
    assert [o.text for o in await h.ask("/count")] == ["10"]
    sent = await h.ask("/announce fog at dawn")
    assert sent[0].target.id == "town-square" and sent[0].text == "fog at dawn"
    await h.host.stop()
    again = await harness(plugins=[Counter], data_dir=data_dir, plugin_config={"counter": {"step": 5}})
    assert [o.text for o in await again.ask("/count")] == ["15"]  # storage persisted


def test_plugin_config_errors_name_the_plugin_and_key(tmp_path):
    from bots.core.storage import Database

    with pytest.raises(ConfigError, match=r"(?s)\[plugins.counter\].*step"):
        load_plugins(
            [Counter],
            bot="b",
            dispatch=Dispatch(),
            db=Database("sqlite+aiosqlite://"),
            configs={"counter": {"step": "lots"}},
            sender=None,  # type: ignore[arg-type]
        )


def test_command_names_must_not_clash():
    class Other(Plugin):
        name = "other"

        @command("ping")
        async def ping(self, inv: Invocation) -> None:
            await inv.reply("other pong")

    from bots.core.storage import Database

    with pytest.raises(ConfigError, match="'ping' of plugin 'other' clashes with 'basics'"):
        load_plugins(
            [BasicsPlugin, Other],
            bot="b",
            dispatch=Dispatch(),
            db=Database("sqlite+aiosqlite://"),
            configs={},
            sender=None,  # type: ignore[arg-type]
        )
