"""pytest fixtures of the test kit (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bots.testing.fakes import FakeAdapter, FakeLLM
from bots.testing.harness import HarnessFactory


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    factory = HarnessFactory(tmp_path)
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture
def fake_llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def fake_adapter() -> FakeAdapter:
    return FakeAdapter()
