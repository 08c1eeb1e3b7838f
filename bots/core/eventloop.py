"""The event loop a long-running process serves on: uvloop where it is installed, else asyncio's.

uvloop (libuv) runs the same asyncio code with less overhead per callback, task and wake-up: in the
core bench's mixed burst about 8 % less CPU per message (bench/README.md). ``BOTS_EVENT_LOOP``
chooses: ``auto`` (the default: uvloop when it can be imported), ``uvloop`` (an error when it is
missing) or ``asyncio``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bots.core.config import ConfigError, EnvSettings

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop for ``choice``; None for asyncio's own."""
    if choice not in CHOICES:
        raise ConfigError(f"BOTS_EVENT_LOOP={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "BOTS_EVENT_LOOP=uvloop, but uvloop is not installed: pip install uvloop"
            ) from None
        return None
    return uvloop.new_event_loop


def loop_name(factory: Callable[[], asyncio.AbstractEventLoop] | None) -> str:
    return "asyncio" if factory is None else "uvloop"


def serve(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """Run ``main`` to the end on the chosen loop (``BOTS_EVENT_LOOP`` when ``choice`` is None)."""
    try:
        factory = loop_factory(choice or EnvSettings().event_loop)
    except ConfigError:
        main.close()  # never awaited: say so quietly, not with a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
