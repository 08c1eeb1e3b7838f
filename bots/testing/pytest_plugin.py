"""pytest fixtures of the test kit (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from bots.testing.fakes import FakeAdapter, FakeLLM
from bots.testing.harness import HarnessFactory
from bots.testing.postgres import PG_BIN_CANDIDATES, PostgresCluster, postgres_cluster
from bots.testing.redis_server import redis_server
from bots.testing.servers import require_program


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster, started once per test run (on first use; a few seconds).
    Skips without PostgreSQL installed; fails instead in CI (``BOTS_REQUIRE_SERVERS=1``)."""
    initdb = require_program("initdb", *(f"{d}/initdb" for d in PG_BIN_CANDIDATES))
    with postgres_cluster(initdb) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_server: PostgresCluster) -> str:
    """The ``postgresql+asyncpg://`` URL of a fresh, empty database of its own for each test."""
    return postgres_server.new_database()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis server of its own for the test (``redis://127.0.0.1:PORT/0``, nothing saved), stopped
    after it. Skips without ``redis-server``; fails instead in CI (``BOTS_REQUIRE_SERVERS=1``)."""
    with redis_server(require_program("redis-server")) as url:
        yield url
