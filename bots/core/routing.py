"""Dispatch tables (commands and message listeners) and the context handlers receive."""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bots.core.events import MessageEvent
from bots.core.permissions import Role

Handler = Callable[["Invocation"], Awaitable[Any]]
ReplyFn = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class Invocation:
    """What a command or listener gets: the event, its cleaned text and a way to reply."""

    event: MessageEvent
    text: str  # the message text without the bot's own @mention
    addressed: bool  # DM, @mention, reply to the bot, keyword or policy
    role: Role
    command: str | None = None  # set when the message is a command
    args: str = ""
    command_for_other: bool = False  # "/cmd@otherbot": not ours
    replies: int = 0  # replies sent so far; numbers each reply's outbox key
    replay: bool = False  # handled again after a restart: earlier replies may have gone out
    _reply: ReplyFn | None = field(default=None, repr=False)

    @property
    def argv(self) -> list[str]:
        try:
            return shlex.split(self.args)
        except ValueError:  # unbalanced quotes: fall back to whitespace
            return self.args.split()

    async def reply(self, text: str) -> None:
        if self._reply is None:
            raise RuntimeError("this invocation cannot reply")
        await self._reply(text)


@dataclass(frozen=True, slots=True)
class CommandEntry:
    name: str
    handler: Handler
    plugin: str
    permission: Role = Role.MEMBER
    help: str = ""
    usage: str = ""
    aliases: tuple[str, ...] = ()
    dm_only: bool = False


@dataclass(frozen=True, slots=True)
class ListenerEntry:
    handler: Handler  # returns True to stop propagation to later listeners and the agent
    plugin: str
    priority: int = 100  # lower runs first
    addressed_only: bool = False


class Dispatch:
    """One bot's commands and listeners, filled by the plugin manager."""

    def __init__(self) -> None:
        self._commands: dict[str, CommandEntry] = {}
        self.listeners: list[ListenerEntry] = []

    def add_command(self, entry: CommandEntry) -> None:
        for name in (entry.name, *entry.aliases):
            key = name.lower()
            if key in self._commands:
                other = self._commands[key].plugin
                raise ValueError(f"command {name!r} of plugin {entry.plugin!r} clashes with {other!r}")
            self._commands[key] = entry

    def add_listener(self, entry: ListenerEntry) -> None:
        self.listeners.append(entry)
        self.listeners.sort(key=lambda item: item.priority)

    def remove_plugin(self, plugin: str) -> None:
        self._commands = {k: v for k, v in self._commands.items() if v.plugin != plugin}
        self.listeners = [item for item in self.listeners if item.plugin != plugin]

    def command(self, name: str) -> CommandEntry | None:
        return self._commands.get(name.lower())

    def commands(self) -> list[CommandEntry]:
        """Each command once, sorted by name."""
        unique = {entry.name: entry for entry in self._commands.values()}
        return [unique[name] for name in sorted(unique)]
