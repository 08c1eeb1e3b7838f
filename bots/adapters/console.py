"""The console channel: an interactive REPL in the terminal, or one message for scripts."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict

from bots.core.adapter import Capabilities, EventSink, NotAccepted
from bots.core.config import channel_options
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound, SentRef, UserRef
from bots.core.logs import clear_prompt, show_prompt

EXIT_WORDS = {"/quit", "/exit", ":q"}
PROMPT = "you> "


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
        self._read_line = read_line  # None: stdin, read by :class:`_StdinLines`
        self._stdin = _StdinLines()
        self._prompting = False
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
        if self._prompting:  # stopped (Ctrl-C) while the prompt waited: end its line
            self._prompting = False
            clear_prompt()
            self._out.write("\n")
            self._out.flush()

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
        if self._read_line is None:
            self._prompting = True
            show_prompt(PROMPT, self._out)
            line = await self._stdin.readline()
            clear_prompt()
            self._prompting = False
            return line
        return await self._call_read_line()

    async def _call_read_line(self) -> str:
        """Call the given ``read_line`` in a daemon thread, so the loop never waits for it."""
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


class _StdinLines:
    """Lines typed into stdin, read with ``os.read`` on its file descriptor when the event loop
    says it is readable. Nothing blocks in a thread on ``sys.stdin``: a thread blocked there holds
    the buffer's lock, and at exit (Ctrl-C, SIGTERM) Python then dies with "Fatal Python error:
    _enter_buffered_busy". Where the loop cannot watch the descriptor (a regular file, Windows),
    a daemon thread reads it, still with ``os.read``, which holds no lock."""

    def __init__(self) -> None:
        self._pending = b""
        self._eof = False

    async def readline(self) -> str:
        """The next line with its "\\n" (the last one may lack it); "" at end of input."""
        while True:
            if b"\n" in self._pending:
                line, _, self._pending = self._pending.partition(b"\n")
                return _decode(line) + "\n"
            if self._eof:
                line, self._pending = self._pending, b""
                return _decode(line)
            chunk = await self._read()
            if chunk:
                self._pending += chunk
            else:
                self._eof = True

    async def _read(self) -> bytes:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):  # no stdin at all, or closed
            return b""
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if got.done():  # level-triggered: called again before the reader is removed
                return
            try:
                got.set_result(os.read(fd, 65536))
            except BlockingIOError:  # someone else took it: wait for more
                pass
            except OSError:  # a broken terminal ends the session
                got.set_result(b"")

        try:
            loop.add_reader(fd, readable)
        except (NotImplementedError, OSError):
            return await self._read_in_thread(fd, loop, got)
        try:
            return await got
        finally:
            loop.remove_reader(fd)

    @staticmethod
    async def _read_in_thread(fd: int, loop: asyncio.AbstractEventLoop, got: asyncio.Future[bytes]) -> bytes:
        def read() -> None:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(lambda: got.done() or got.set_result(chunk))

        threading.Thread(target=read, name="console-input", daemon=True).start()
        return await got


def _decode(line: bytes) -> str:
    encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
    return line.decode(encoding, errors="replace").removesuffix("\r")
