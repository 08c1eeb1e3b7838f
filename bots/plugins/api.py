"""The public plugin API: a plugin is a class whose methods are tagged with decorators.

    class Greeter(Plugin):
        name = "greeter"

        @command("hello", help="Say hello")
        async def hello(self, inv: Invocation) -> None:
            await inv.reply(f"hello, {inv.event.author.display}")

Decorators only tag methods; the manager registers them, per bot, when it loads the plugin.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from bots.core.config import ScheduleConfig
from bots.core.control import HostControl
from bots.core.events import ChannelRef, Outbound, SentRef
from bots.core.permissions import Role
from bots.core.routing import CommandEntry, Dispatch
from bots.core.storage import KeyValueStore

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

COMMAND_TAG = "__bots_command__"
LISTENER_TAG = "__bots_listener__"
SCHEDULED_TAG = "__bots_scheduled__"


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    help: str = ""
    usage: str = ""
    aliases: tuple[str, ...] = ()
    permission: Role = Role.MEMBER
    dm_only: bool = False


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    priority: int = 100
    addressed_only: bool = False


def command(
    name: str | None = None,
    *,
    help: str = "",
    usage: str = "",
    aliases: tuple[str, ...] = (),
    permission: Role = Role.MEMBER,
    dm_only: bool = False,
) -> Callable[[F], F]:
    """Tag a method as a chat command (``/name args`` or ``@bot name args``)."""

    def tag(fn: F) -> F:
        spec = CommandSpec(
            name=(name or fn.__name__).lower(),
            help=help or _first_line(fn.__doc__),
            usage=usage,
            aliases=tuple(a.lower() for a in aliases),
            permission=permission,
            dm_only=dm_only,
        )
        setattr(fn, COMMAND_TAG, spec)
        return fn

    return tag


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def on_message(*, priority: int = 100, addressed_only: bool = False) -> Callable[[F], F]:
    """Tag a method that sees every message; return True from it to stop propagation."""

    def tag(fn: F) -> F:
        setattr(fn, LISTENER_TAG, ListenerSpec(priority=priority, addressed_only=addressed_only))
        return fn

    return tag


@dataclass(frozen=True, slots=True)
class ScheduledSpec:
    id: str
    schedule: dict[str, Any]  # ScheduleConfig fields

    def as_schedule(self) -> ScheduleConfig:
        return ScheduleConfig.model_validate(self.schedule)


def scheduled(
    *,
    id: str,
    cron: str | None = None,
    every_minutes: int | None = None,
    timezone: str = "UTC",
    target: str = "",
    missed: str = "run_once_late",
    review: bool = False,
    options: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Tag a method as a scheduled job: ``async def fn(self, ctx: JobContext) -> str | None``.

    The returned text is posted to ``target`` (or sent for review); return None after sending
    yourself, or to skip. The job id is ``<bot>:<plugin>.<id>``; config reconciles it at start.
    """

    def tag(fn: F) -> F:
        schedule = {
            "id": id,
            "job": f"{fn.__module__}:{fn.__qualname__}",
            "cron": cron,
            "every_minutes": every_minutes,
            "timezone": timezone,
            "target": target,
            "missed": missed,
            "review": review,
            "options": options or {},
        }
        ScheduleConfig.model_validate(schedule)  # a bad cron fails at import, not at start
        setattr(fn, SCHEDULED_TAG, ScheduledSpec(id, schedule))
        return fn

    return tag


class NoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginContext:
    """What a plugin may use: logger, its own storage, its typed config, and a way to send."""

    def __init__(
        self,
        *,
        bot: str,
        plugin: str,
        storage: KeyValueStore,
        config: BaseModel,
        sender: Callable[[Outbound], Awaitable[list[SentRef]]],
        dispatch: Dispatch,
        command_prefix: str,
        control: HostControl | None = None,
    ) -> None:
        self.bot = bot
        self.plugin = plugin
        self.logger = logging.getLogger(f"bots.plugin.{plugin}")
        self.storage = storage
        self.config = config
        self.command_prefix = command_prefix
        self._sender = sender
        self._dispatch = dispatch
        self._control = control

    @property
    def host(self) -> HostControl:
        """Operator controls (roles, mutes, audit, status); for admin plugins."""
        if self._control is None:
            raise RuntimeError("this plugin runs without a host")
        return self._control

    async def send(self, target: ChannelRef, text: str, *, markup: str = "plain") -> list[SentRef]:
        return await self._sender(Outbound(target, text, markup=markup))

    def commands(self) -> list[CommandEntry]:
        """Every command this bot knows, for help listings."""
        return self._dispatch.commands()


class Plugin:
    """Base class of every plugin, built-in or third-party."""

    name: ClassVar[str] = ""  # defaults to the lower-cased class name
    description: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = NoConfig  # validates the [plugins.<name>] table

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx

    @classmethod
    def plugin_name(cls) -> str:
        return cls.name or cls.__name__.lower().removesuffix("plugin")

    def dm_only(self, spec: CommandSpec) -> bool:
        """Whether a command works only in a direct message (override to make it configurable)."""
        return spec.dm_only

    async def setup(self) -> None:
        """Called once when the host starts, before any message arrives."""

    async def teardown(self) -> None:
        """Called once when the host stops."""
