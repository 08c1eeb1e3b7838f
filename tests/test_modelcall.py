"""A model call skips langchain's run machinery only when nothing observes it."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.globals import set_debug
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tracers.context import collect_runs
from pydantic import Field

from bots.agent.modelcall import complete
from bots.testing import FakeLLM

MESSAGES = [SystemMessage("You are the lighthouse keeper."), HumanMessage("When does the light turn?")]


class CountingLLM(FakeLLM):
    """FakeLLM that counts calls through langchain's run machinery and the arguments it got."""

    managed_calls: int = 0
    kwargs_seen: list[dict[str, Any]] = Field(default_factory=list)

    async def agenerate(self, *args: Any, **kwargs: Any) -> Any:
        self.managed_calls += 1
        return await super().agenerate(*args, **kwargs)

    async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        self.kwargs_seen.append(kw)
        return await super()._agenerate(messages, stop, run_manager, **kw)


class Seen(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.starts = 0

    async def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1


async def test_unobserved_call_goes_straight_to_the_model() -> None:
    llm = CountingLLM(default="Every ten seconds.")
    answer = await complete(llm, MESSAGES)
    assert isinstance(answer, AIMessage) and answer.content == "Every ten seconds."
    assert llm.managed_calls == 0, "no callbacks or tracing: langchain's run machinery was skipped"
    assert llm.last_prompt == MESSAGES


async def test_bound_arguments_reach_the_model() -> None:
    llm = CountingLLM(default="ok")
    await complete(llm.bind(temperature=0.2), MESSAGES)
    assert llm.managed_calls == 0
    assert llm.kwargs_seen == [{"temperature": 0.2}]


async def test_a_callback_on_the_model_is_honoured() -> None:
    seen = Seen()
    llm = CountingLLM(default="ok", callbacks=[seen])
    assert (await complete(llm, MESSAGES)).content == "ok"
    assert llm.managed_calls == 1 and seen.starts == 1


async def test_a_trace_in_the_context_is_honoured() -> None:
    llm = CountingLLM(default="ok")
    with collect_runs() as runs:
        await complete(llm, MESSAGES)
    assert llm.managed_calls == 1
    assert [run.run_type for run in runs.traced_runs] == ["llm"]


@pytest.fixture
def debug() -> Any:
    set_debug(True)
    yield
    set_debug(False)


async def test_langchain_debug_is_honoured(debug: None) -> None:
    llm = CountingLLM(default="ok")
    await complete(llm, MESSAGES)
    assert llm.managed_calls == 1


async def test_errors_pass_through_either_way() -> None:
    llm = CountingLLM().queue(TimeoutError("slow"), TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        await complete(llm, MESSAGES)
    with pytest.raises(TimeoutError):
        await complete(llm.bind(temperature=0.2).with_config(callbacks=[Seen()]), MESSAGES)
    assert llm.managed_calls == 1
