"""The console channel: an interactive REPL in the terminal, or one message for scripts."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict

from bots.core.adapter import Capabilities, EventSink, NotAccepted
from bots.core.config import channel_options
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound, SentRef, UserRef

EXIT_WORDS = {"/quit", "/exit", ":q"}


class ConsoleOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "console" may set."""

    model_config = ConfigDict(extra="forbid")
    speaker: str = ""  # printed before replies
    user: str | None = None  # the local id of whoever types (default "local")
    stream: bool = True


class ConsoleAdapter:
    platform = "console"
    self_id = "bot"

    def __init__(
        self,
        name: str = "console",
        *,
        speaker: str = "",
        user: str | None = None,
        interactive: bool = True,
        stream: bool = True,
        on_exit: Callable[[], None] | None = None,
        output: TextIO | None = None,
        read_line: Callable[[], str] | None = None,
    ) -> None:
        self.name = name
        self.speaker = speaker  # printed before replies in interactive mode
        # whoever sits at the terminal is "console:local" (config can make that id an owner)
        self.user = UserRef("console", user or "local", name=_login_name())
        self.channel = ChannelRef("console", self.user.id, ChannelKind.DM, name="terminal")
        self.interactive = interactive
        self.capabilities = Capabilities(max_length=None, streaming=stream, markup=frozenset({"plain"}))
        self.on_exit = on_exit
        self._out = output or sys.stdout
        self._read_line = read_line or _read_stdin
        self._ids = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> ConsoleAdapter:
        settings = channel_options(ConsoleOptions, name, "console", options)
        return cls(name, speaker=settings.speaker, user=settings.user, stream=settings.stream)

    def make_event(self, text: str) -> MessageEvent:
        return MessageEvent(
            platform=self.platform,
            message_id=f"{self._run}-{next(self._ids)}",  # unique across sessions (the inbox dedupes)
            author=self.user,
            channel=self.channel,
            text=text,
            self_id=self.self_id,
            to_me=True,
        )

    async def start(self, sink: EventSink) -> None:
        if self.interactive:
            self._task = asyncio.create_task(self._repl(sink))

    async def stop(self) -> None:
        if self._task and self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _repl(self, sink: EventSink) -> None:
        try:
            while True:
                line = await self._next_line()
                if line == "" or line.strip() in EXIT_WORDS:  # "" is end of input
                    break
                if not line.strip():
                    continue
                try:
                    handled = await sink(self.make_event(line.rstrip("\n")))
                except NotAccepted:  # the host is stopping
                    break
                if handled is not None:
                    await handled  # answer before prompting again
        finally:
            if self.on_exit:
                self.on_exit()

    async def _next_line(self) -> str:
        """Read a line in a daemon thread, so Ctrl-C never waits for the user to press Enter."""
        loop = asyncio.get_running_loop()
        line: asyncio.Future[str] = loop.create_future()

        def read() -> None:
            try:
                text = self._read_line()
            except Exception:  # a closed or broken terminal ends the session
                text = ""
            loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

        threading.Thread(target=read, name="console-input", daemon=True).start()
        return await line

    def _prefix(self) -> str:
        return f"{self.speaker}> " if self.interactive and self.speaker else ""

    async def send(self, outbound: Outbound) -> SentRef:
        self._out.write(f"{self._prefix()}{outbound.text}\n")
        self._out.flush()
        return SentRef(self.platform, outbound.target.id, str(next(self._ids)))

    async def send_stream(
        self, target: ChannelRef, chunks: AsyncIterator[str], reply_to: str | None = None
    ) -> SentRef:
        self._out.write(self._prefix())
        async for chunk in chunks:
            self._out.write(chunk)
            self._out.flush()
        self._out.write("\n")
        self._out.flush()
        return SentRef(self.platform, target.id, str(next(self._ids)))


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "local"


def _read_stdin() -> str:
    try:
        return input("you> ") + "\n"
    except EOFError:
        return ""
