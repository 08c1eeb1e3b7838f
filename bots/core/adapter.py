"""The adapter seam. Adapters translate a platform to :mod:`bots.core.events` and back; nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from bots.core.events import ChannelRef, MessageEvent, Outbound, SentRef

# The host's sink returns once the event is durably accepted (None for a duplicate), with a
# future that completes once the event has been handled; adapters that must answer in order (the
# console) await it, the others ignore it. It raises (NotAccepted, or a storage error) when the
# event was not recorded: the adapter must then not acknowledge it to the platform.
EventSink = Callable[[MessageEvent], Awaitable["asyncio.Future[None] | None"]]
LengthUnit = Literal["chars", "utf16", "utf8"]


class NotAccepted(RuntimeError):
    """The host did not take the event (it is stopping); let the platform deliver it again."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    max_length: int | None = None  # longest single message the platform accepts
    length_unit: LengthUnit = "chars"  # Telegram counts UTF-16 units, WeCom counts bytes
    markup: frozenset[str] = frozenset({"plain"})
    streaming: bool = False  # can show a reply while it is generated
    edits: bool = False
    threads: bool = False
    proactive: bool = True  # can post without a message to answer (the WeCom AI bot cannot)


@runtime_checkable
class Adapter(Protocol):
    name: str  # the configured channel name, unique within a bot
    platform: str  # the prefix of canonical ids ("telegram", "console", ...)
    capabilities: Capabilities

    async def start(self, sink: EventSink) -> None:
        """Connect and begin delivering events to ``sink``; return once running."""

    async def send(self, outbound: Outbound) -> SentRef: ...

    async def stop(self) -> None: ...


class AdapterFactory(Protocol):
    """What an entry point in the ``bots.adapters`` group names: a class with ``from_config``.

    ``options`` are the channel's adapter-specific keys from ``[[bots.channels]]`` (validate
    them with a strict pydantic model); ``secrets`` hands out tokens by env var name.
    """

    def from_config(self, name: str, options: dict[str, Any], secrets: Any) -> Adapter: ...


@runtime_checkable
class StreamingAdapter(Adapter, Protocol):
    """A channel that shows a reply while it is generated (edits, typing streams, a terminal).

    The pipeline hands it the reply sentence by sentence; keeping within the platform's length
    limit (rolling over to a new message) is the adapter's job, as it owns the message being
    edited.
    """

    async def send_stream(
        self, target: ChannelRef, chunks: AsyncIterator[str], reply_to: str | None = None
    ) -> SentRef: ...


@runtime_checkable
class TypingAdapter(Adapter, Protocol):
    """A channel with a typing indicator; the pipeline keeps it on while the model writes."""

    async def typing(self, channel: ChannelRef) -> None:
        """Show the indicator once (platforms drop it after a few seconds). Never raises."""
