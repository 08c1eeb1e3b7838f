"""Prometheus ``/metrics``: the host's own counts (:mod:`bots.core.metrics`, the gate's verdicts,
the inbox), read at scrape time into a registry of the app's own (never the global one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bots.core.host import Host


class HostCollector(Collector):
    """The numbers ``/status`` shows, as metrics; nothing is counted twice."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        host, m = self.host, self.host.metrics
        received = CounterMetricFamily(
            "bots_messages_received", "messages accepted from the channels (duplicates not counted)",
            labels=["bot", "platform"],
        )  # fmt: skip
        for (bot, platform), n in sorted(m.received.items()):
            received.add_metric([bot, platform], n)
        yield received
        sent = CounterMetricFamily(
            "bots_messages_sent", "messages the bots sent: replies and posts", labels=["bot", "platform"]
        )
        for (bot, platform), n in sorted(m.sent.items()):
            sent.add_metric([bot, platform], n)
        yield sent
        latency = HistogramMetricFamily(
            "bots_message_handling_seconds", "from a message's arrival to the end of its handling",
            labels=["bot"],
        )  # fmt: skip
        for bot, histogram in sorted(m.latency.items()):
            buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in histogram.cumulative()]
            latency.add_metric([bot], buckets, histogram.total)
        yield latency
        calls = CounterMetricFamily("bots_model_calls", "model calls (each try)", labels=["bot", "outcome"])
        tokens = CounterMetricFamily(
            "bots_model_tokens",
            "tokens the model reported (providers that report usage)",
            labels=["bot", "kind"],
        )
        for bot, stats in sorted(m.models.items()):
            for outcome in ("ok", "error"):
                calls.add_metric([bot, outcome], stats.calls[outcome])
            for kind in ("prompt", "completion"):
                tokens.add_metric([bot, kind], stats.tokens[kind])
        yield calls
        yield tokens
        verdicts = CounterMetricFamily(
            "bots_gate_verdicts", "the quality gate's verdicts by kind of text", labels=["kind", "verdict"]
        )
        reasons = CounterMetricFamily(
            "bots_gate_failures", "failed verdicts by reason", labels=["kind", "reason"]
        )
        by_reason: Counter[tuple[str, str]] = Counter()
        for name, n in host.gate_stats.snapshot().items():
            kind, _, rest = name.partition(".")
            if rest in ("passed", "failed"):
                verdicts.add_metric([kind, rest], n)
            elif rest.startswith("failed."):  # "failed.quote: not in the corpus: '...'": the kind only
                by_reason[kind, rest.removeprefix("failed.").split(":")[0].strip()] += n
        for (kind, reason), n in sorted(by_reason.items()):
            reasons.add_metric([kind, reason], n)
        yield verdicts
        yield reasons
        replayed = CounterMetricFamily(
            "bots_messages_replayed", "messages replayed at start (an earlier run stopped before answering)",
            labels=["bot"],
        )  # fmt: skip
        for bot, n in sorted(m.replayed.items()):
            replayed.add_metric([bot], n)
        yield replayed
        yield GaugeMetricFamily(
            "bots_messages_abandoned",
            "messages given up on, never answered, within the inbox's keep window (see bots doctor)",
            value=host.inbox.abandoned,
        )
        yield GaugeMetricFamily(
            "bots_events_in_flight", "events accepted and not yet handled", value=host.in_flight
        )
        yield GaugeMetricFamily(
            "bots_chats_busy", "chats with an event being handled or waiting", value=host.order.busy_chats
        )


def registry_for(host: Host) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(HostCollector(host))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
