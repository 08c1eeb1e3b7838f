"""The long-running commands' event loop: uvloop by default, asyncio's when asked, clear errors."""

from __future__ import annotations

import asyncio
import sys
import warnings

import pytest

from bots.core import eventloop
from bots.core.config import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_by_default_asyncio_when_asked(monkeypatch):
    monkeypatch.delenv("BOTS_EVENT_LOOP", raising=False)
    assert eventloop.serve(_loop_module()).startswith("uvloop")
    monkeypatch.setenv("BOTS_EVENT_LOOP", "asyncio")
    assert eventloop.serve(_loop_module()).startswith("asyncio")


def test_auto_falls_back_to_asyncio_without_uvloop_and_uvloop_required_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    assert eventloop.serve(_loop_module(), "auto").startswith("asyncio")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine never run is closed, not left to warn
        with pytest.raises(ConfigError, match="pip install uvloop"):
            eventloop.serve(_loop_module(), "uvloop")


def test_an_unknown_choice_is_a_config_error(monkeypatch):
    monkeypatch.setenv("BOTS_EVENT_LOOP", "tokio")
    with pytest.raises(ConfigError, match="use one of auto, uvloop, asyncio"):
        eventloop.serve(_loop_module())
