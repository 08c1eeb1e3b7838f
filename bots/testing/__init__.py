"""The test kit for this project and for users' own plugin tests (a pytest plugin).

async def test_ping(harness):
    h = await harness(plugins=["basics"])
    await h.push("/ping")
    assert (await h.next_sent()).text == "pong"
"""

from bots.testing.fakes import FakeAdapter, FakeLLM
from bots.testing.harness import Harness, HarnessFactory

__all__ = ["FakeAdapter", "FakeLLM", "Harness", "HarnessFactory"]
