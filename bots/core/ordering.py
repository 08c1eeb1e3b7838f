"""Per-chat order: what a bot does in one chat happens one thing at a time, in arrival order.

Every event takes a :class:`Turn` in its chat's queue the moment it reaches the host (before the
inbox write, so the queue order is the platform's order); handling it waits until the turns before
it are over. Replies therefore leave a chat in the order of the messages they answer, the parts of
one reply are never interleaved with another's, and a rate limit or a retried send delays the
chat's queue without reordering it. Different chats are independent and run concurrently.

Posts a bot makes on its own (schedules, plugins) take a turn too; a post made while handling an
event of the same chat is part of that event's turn (see :func:`current_turn`).
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from types import TracebackType

ChatKey = tuple[str, str, str]  # (bot, channel name, canonical chat id)

_current: ContextVar[Turn | None] = ContextVar("current_turn", default=None)


def current_turn() -> Turn | None:
    """The turn the running task holds (handling an event), if any."""
    return _current.get()


class Turn:
    """One place in a chat's queue: ``async with turn:`` waits for it and releases it after."""

    def __init__(self, order: ChatOrder, key: ChatKey, before: asyncio.Future[None] | None) -> None:
        self.key = key
        self._order = order
        self._before = before
        self.over: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> Turn:
        try:
            before = self._before
            if before is not None and not before.done():
                # a waiter of our own: cancelling this wait never cancels the turn before this one
                # (asyncio.wait does the same at several times the cost)
                waiter = asyncio.get_running_loop().create_future()
                before.add_done_callback(lambda _f: waiter.done() or waiter.set_result(None))
                await waiter
        except BaseException:
            self.release()
            raise
        self._before = None
        self._token = _current.set(self)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _current.reset(self._token)
        self.release()

    def release(self) -> None:
        """Let the next turn go (idempotent). A turn given up before its own came (a duplicate,
        a cancelled wait) passes the queue on only when the turn before it is over."""
        before, self._before = self._before, None
        if before is not None and not before.done():
            before.add_done_callback(lambda _f: self._over())
        else:
            self._over()

    def _over(self) -> None:
        if not self.over.done():
            self.over.set_result(None)
        self._order._forget(self)


class ChatOrder:
    def __init__(self) -> None:
        self._last: dict[ChatKey, Turn] = {}  # each chat's last turn; chats without one are idle

    def turn(self, key: ChatKey) -> Turn:
        """A new turn at the end of ``key``'s queue (synchronous: call order is queue order)."""
        last = self._last.get(key)
        turn = Turn(self, key, last.over if last is not None else None)
        self._last[key] = turn
        return turn

    def _forget(self, turn: Turn) -> None:
        if self._last.get(turn.key) is turn:
            del self._last[turn.key]

    @property
    def busy_chats(self) -> int:
        return len(self._last)
