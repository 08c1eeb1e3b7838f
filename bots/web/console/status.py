"""The numbers of the status page: channels, queues and the last hour's traffic."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from bots.core.host import Host
from bots.core.storage import InboxEntry, OutboxEntry


@dataclass
class ChannelState:
    bot: str
    name: str
    platform: str
    up: bool


# what the host exports on /metrics (sample names), as the status page names them
TRAFFIC = {
    "bots_messages_received_total": "messages received",
    "bots_messages_sent_total": "messages sent",
    "bots_model_calls_total:ok": "model calls",
    "bots_model_calls_total:error": "model call errors",
    "bots_model_tokens_total": "model tokens",
    "bots_messages_replayed_total": "messages replayed after a restart",
}
HOUR = 3600.0


def exported_totals(registry: Any) -> dict[str, float]:
    """The host's exported counters summed over their labels (model calls kept by outcome), and
    the gauges, from the registry ``/metrics`` serves."""
    totals: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            key = sample.name
            if key == "bots_model_calls_total":
                key += ":" + sample.labels.get("outcome", "")
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


@dataclass
class Rates:
    """Per-hour rates of the exported counters: over the last hour once the console has a reading
    that old, else averaged since the host started (counters start at zero with the host)."""

    started: float = field(default_factory=time.monotonic)
    readings: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)

    def per_hour(self, totals: dict[str, float], now: float | None = None) -> tuple[dict[str, float], str]:
        moment = time.monotonic() if now is None else now
        self.readings.append((moment, totals))
        while len(self.readings) > 1 and moment - self.readings[1][0] >= HOUR:
            self.readings.popleft()  # keep one reading at least an hour old, none older
        then, before = self.readings[0]
        if moment - then >= HOUR:
            window, label = moment - then, "last hour"
        else:
            then, before = self.started, {}
            window = moment - then
            label = f"average over the {max(window / 60, 1):.0f} min since start"
        window = max(window, 60.0)  # a first look right after start is no basis for a rate
        return {k: (v - before.get(k, 0.0)) * HOUR / window for k, v in totals.items()}, label


@dataclass
class HostStatus:
    channels: list[ChannelState]
    queues: dict[str, int]  # what is waiting, by queue
    traffic: list[tuple[str, float, float]]  # (what, since start, per hour), from /metrics' numbers
    rate_window: str  # what "per hour" is measured over
    failures: dict[str, float]
    errors: dict[str, list[str]]  # the last errors, by bot
    gate: dict[str, int]  # the quality gate's verdicts since start
    lines: list[str] = field(default_factory=list)  # /status, as operators read it in chat


def channel_up(host: Host, adapter: Any) -> bool:
    """Up: started by the host and, for a channel that says so, connected to its platform."""
    connected = getattr(adapter, "connected", None)
    if isinstance(connected, bool):
        return connected and host.in_service(adapter)
    return host.in_service(adapter)


async def host_status(host: Host, registry: Any, rates: Rates) -> HostStatus:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    channels = [
        ChannelState(bot.name, adapter.name, adapter.platform, channel_up(host, adapter))
        for bot in host.bots.values()
        for adapter in bot.adapters
    ]
    async with host.db.session() as session:
        unfinished = await session.scalar(select(func.count()).where(InboxEntry.state == "accepted"))
        unsent = await session.scalar(select(func.count()).where(OutboxEntry.state == "pending"))
        failed = await session.scalar(
            select(func.count()).where(OutboxEntry.state == "failed", OutboxEntry.created_at >= hour_ago)
        )
    drafts = 0
    if host.control.scheduling is not None:
        drafts = len(await host.control.scheduling.review.pending())
    totals = exported_totals(registry)
    per_hour, window = rates.per_hour({key: totals.get(key, 0.0) for key in TRAFFIC})
    handled = totals.get("bots_message_handling_seconds_count", 0.0)
    return HostStatus(
        channels=channels,
        queues={
            "events in flight": int(totals.get("bots_events_in_flight", host.in_flight)),
            "chats with work waiting": int(totals.get("bots_chats_busy", 0)),
            "messages not finished (inbox)": int(unfinished or 0),
            "message parts not sent (outbox)": int(unsent or 0),
            "drafts waiting for review": drafts,
        },
        traffic=[(name, totals.get(key, 0.0), per_hour[key]) for key, name in TRAFFIC.items()],
        rate_window=window,
        failures={
            "messages abandoned, never answered (inbox keep window)": totals.get(
                "bots_messages_abandoned", 0.0
            ),
            "sends failed in the last hour (outbox)": float(failed or 0),
            "mean handling time, s": totals.get("bots_message_handling_seconds_sum", 0.0) / handled
            if handled
            else 0.0,
        },
        errors={bot.name: list(bot.pipeline.errors) for bot in host.bots.values()},
        gate=host.gate_stats.snapshot(),
        lines=host.control.status(),
    )
