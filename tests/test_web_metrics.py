"""/metrics reads the host's own counts: messages in and out, latency, model calls, the gate."""

from __future__ import annotations

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from prometheus_client import generate_latest

from bots.core.gate import Verdict
from bots.testing import FakeLLM
from bots.testing.harness import BOT
from bots.web.metrics import registry_for


async def test_the_exporter_reads_what_the_host_counted(harness):
    h = await harness(llm=FakeLLM().queue("Fine, thank you."))
    await h.ask("how are you?")
    await h.ask("/ping")
    h.host.gate_stats.record("digest", Verdict(("length: 5000 > 4000", "language: zh, wanted en")))
    h.host.gate_stats.record("digest", Verdict(("length: 4100 > 4000",)))
    text = generate_latest(registry_for(h.host)).decode()
    assert f'bots_messages_received_total{{bot="{BOT}",platform="fake"}} 2.0' in text
    assert f'bots_messages_sent_total{{bot="{BOT}",platform="fake"}} 2.0' in text  # the answer, pong
    assert f'bots_model_calls_total{{bot="{BOT}",outcome="ok"}} 1.0' in text
    assert f'bots_message_handling_seconds_count{{bot="{BOT}"}} 2.0' in text
    assert f'bots_message_handling_seconds_bucket{{bot="{BOT}",le="+Inf"}} 2.0' in text
    assert 'bots_gate_verdicts_total{kind="digest",verdict="failed"} 2.0' in text
    assert 'bots_gate_failures_total{kind="digest",reason="length"} 2.0' in text
    assert 'bots_gate_failures_total{kind="digest",reason="language"} 1.0' in text


async def test_failed_model_calls_are_counted_per_try(harness):
    h = await harness(
        llm=FakeLLM().queue(ConnectionError("down"), "Back again."), llm_settings={"max_retries": 1}
    )
    await h.ask("hello?")
    text = generate_latest(registry_for(h.host)).decode()
    assert f'bots_model_calls_total{{bot="{BOT}",outcome="error"}} 1.0' in text
    assert f'bots_model_calls_total{{bot="{BOT}",outcome="ok"}} 1.0' in text


async def test_two_apps_do_not_share_a_registry(harness, tmp_path):
    first, second = await harness(), await harness(data_dir=tmp_path / "second")
    await first.ask("hello")
    one = generate_latest(registry_for(first.host)).decode()
    two = generate_latest(registry_for(second.host)).decode()
    assert f'bots_messages_received_total{{bot="{BOT}",platform="fake"}} 1.0' in one
    assert "bots_messages_received_total{" not in two


async def test_status_shows_the_same_numbers(harness):
    h = await harness(plugins=["basics", "admin"], roles={"operators": ["fake:op"]})
    await h.ask("hello", user="op")
    status = (await h.ask("/status", user="op"))[0].text
    assert "since start: 2 messages in, 1 out; model calls 1 ok, 0 failed" in status  # /status is in


class CountingLLM(FakeLLM):
    """Reports token usage, as OpenAI-compatible providers do."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        usage = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
        message = AIMessage(self._next(messages), usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])


async def test_tokens_are_counted_where_the_model_reports_them(harness):
    h = await harness(llm=CountingLLM(default="Twelve in, five out."))
    await h.ask("count them")
    text = generate_latest(registry_for(h.host)).decode()
    assert f'bots_model_tokens_total{{bot="{BOT}",kind="prompt"}} 12.0' in text
    assert f'bots_model_tokens_total{{bot="{BOT}",kind="completion"}} 5.0' in text
