"""The host's own counts, kept as plain numbers (no metrics library in core).

``bots.web.metrics`` exports them to Prometheus at scrape time; ``/status`` and the console read
the same numbers. Counts are per process and start at zero with the host.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# seconds from a message's arrival to the end of its handling (the reply sent, or dropped)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Histogram:
    """Observations counted per bucket (``counts[i]``: at most ``bounds[i]``; the last: above all)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at most that) pairs, ending with (inf, count)."""
        running, pairs = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs


@dataclass
class ModelStats:
    """One bot's model calls (each try counts) and the tokens they report."""

    calls: Counter[str] = field(default_factory=Counter)  # "ok" | "error"
    tokens: Counter[str] = field(default_factory=Counter)  # "prompt" | "completion"

    def record(self, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.calls["ok" if ok else "error"] += 1
        self.tokens["prompt"] += prompt_tokens
        self.tokens["completion"] += completion_tokens


@dataclass
class HostMetrics:
    """Messages in and out per (bot, platform), handling latency per bot, model use per bot, and
    messages replayed after a restart."""

    received: Counter[tuple[str, str]] = field(default_factory=Counter)  # accepted, not duplicates
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # replies and posts (messages)
    latency: dict[str, Histogram] = field(default_factory=dict)
    models: dict[str, ModelStats] = field(default_factory=dict)
    replayed: Counter[str] = field(default_factory=Counter)

    def message_in(self, bot: str, platform: str) -> None:
        self.received[bot, platform] += 1

    def message_out(self, bot: str, platform: str) -> None:
        self.sent[bot, platform] += 1

    def handled(self, bot: str, seconds: float) -> None:
        histogram = self.latency.get(bot)
        if histogram is None:
            histogram = self.latency[bot] = Histogram()
        histogram.observe(seconds)

    def model(self, bot: str) -> ModelStats:
        """The bot's model counts (the agent records into it)."""
        stats = self.models.get(bot)
        if stats is None:
            stats = self.models[bot] = ModelStats()
        return stats
