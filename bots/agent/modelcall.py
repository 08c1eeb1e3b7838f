"""One model call, through langchain's cheap path when nothing observes it.

``BaseChatModel.ainvoke`` builds a callback manager, a run, a signature check of the model's
``_agenerate`` and pydantic results for every call: about 0.6 ms of CPU per call on the 2-core
dev box, where the model's own ``_agenerate`` (a provider's request, or FakeLLM) costs what it
costs. With no callbacks, tracing, cache, rate limiter or streaming configured, all of that
serves no one, so :func:`complete` calls the model's ``_agenerate`` directly, as langchain itself
does at the end of that path. Anything configured (a LangSmith trace, a handler, ``set_debug``,
a cache) and the call goes through ``ainvoke`` as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.globals import get_debug, get_llm_cache, get_verbose
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableBinding

try:  # where langchain keeps what may observe a call (private: re-checked on upgrades)
    from langchain_core.runnables.config import var_child_runnable_config
    from langchain_core.tracers.context import _configure_hooks, tracing_v2_callback_var
    from langchain_core.utils.env import env_var_is_set
    from langsmith.run_helpers import get_tracing_context
    from langsmith.utils import tracing_is_enabled
except ImportError:  # pragma: no cover - a langchain without them: always the full path
    _configure_hooks = None  # type: ignore[assignment]


async def complete(llm: Runnable, messages: Sequence[BaseMessage]) -> BaseMessage:
    """The model's answer to ``messages`` (``llm`` a chat model, or one with bound arguments)."""
    model, kwargs = _unwrap(llm)
    if model is not None and _unobserved(model, kwargs, messages):
        result = await model._agenerate(list(messages), **kwargs)
        return result.generations[0].message
    return await llm.ainvoke(list(messages))


def _unwrap(llm: Runnable) -> tuple[BaseChatModel | None, dict[str, Any]]:
    """The chat model and the arguments bound to it (``llm.bind(temperature=...)``)."""
    if isinstance(llm, BaseChatModel):
        return llm, {}
    if (
        isinstance(llm, RunnableBinding)
        and isinstance(llm.bound, BaseChatModel)
        and not llm.config
        and not llm.config_factories
    ):
        return llm.bound, dict(llm.kwargs)
    return None, {}


def _unobserved(model: BaseChatModel, kwargs: dict[str, Any], messages: Sequence[BaseMessage]) -> bool:
    """Whether ``ainvoke`` would do nothing but call ``_agenerate``: no handler, trace, cache,
    rate limiter, streaming or content conversion."""
    if _configure_hooks is None or "stop" in kwargs:
        return False
    if model.callbacks or model.verbose or model.rate_limiter is not None:
        return False
    if model.cache is not False and (model.cache is not None or get_llm_cache() is not None):
        return False
    if model.output_version not in (None, "v0") or model._should_stream(async_api=True, **kwargs):
        return False
    if get_debug() or get_verbose():
        return False
    # langchain's _tracing_v2_is_enabled(), with the tracing context read once for both checks
    # (langsmith reads its environment variables once per process itself: get_env_var is cached)
    tracing = get_tracing_context()
    if tracing["parent"] or tracing_v2_callback_var.get() is not None or tracing_is_enabled(tracing):
        return False
    inherited = var_child_runnable_config.get() or {}  # called inside a chain with callbacks
    if inherited.get("callbacks"):
        return False
    for variable, _inheritable, handler_class, env_var in _configure_hooks:
        if variable.get() is not None or (handler_class and env_var and env_var_is_set(env_var)):
            return False
    for message in messages:  # noqa: SIM110 - a plain loop: a prompt holds dozens of turns
        if not isinstance(message.content, str):
            return False
    return True
