"""The numbers of the status page: channels, queues and the last hour's traffic."""

from __future__ import annotations

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


@dataclass
class HostStatus:
    channels: list[ChannelState]
    queues: dict[str, int]  # what is waiting, by queue
    last_hour: dict[str, int]  # traffic in the last hour
    errors: dict[str, list[str]]  # the last errors, by bot
    gate: dict[str, int]  # the quality gate's verdicts since start
    lines: list[str] = field(default_factory=list)  # /status, as operators read it in chat
    metrics: dict[str, float] = field(default_factory=dict)  # the host's exported counters, if any


def channel_up(host: Host, adapter: Any) -> bool:
    """Up: started by the host and, for a channel that says so, connected to its platform."""
    connected = getattr(adapter, "connected", None)
    if isinstance(connected, bool):
        return connected and host.in_service(adapter)
    return host.in_service(adapter)


async def host_status(host: Host, now: datetime | None = None) -> HostStatus:
    moment = now or datetime.now(UTC)
    hour_ago = moment - timedelta(hours=1)
    channels = [
        ChannelState(bot.name, adapter.name, adapter.platform, channel_up(host, adapter))
        for bot in host.bots.values()
        for adapter in bot.adapters
    ]
    async with host.db.session() as session:
        unfinished = await session.scalar(select(func.count()).where(InboxEntry.state == "accepted"))
        unsent = await session.scalar(select(func.count()).where(OutboxEntry.state == "pending"))
        received = await session.scalar(select(func.count()).where(InboxEntry.received_at >= hour_ago))
        sent = await session.scalar(
            select(func.count()).where(OutboxEntry.state == "sent", OutboxEntry.created_at >= hour_ago)
        )
        failed = await session.scalar(
            select(func.count()).where(OutboxEntry.state == "failed", OutboxEntry.created_at >= hour_ago)
        )
    drafts = 0
    if host.control.scheduling is not None:
        drafts = len(await host.control.scheduling.review.pending())
    return HostStatus(
        channels=channels,
        queues={
            "events in flight": host.in_flight,
            "messages not finished (inbox)": int(unfinished or 0),
            "message parts not sent (outbox)": int(unsent or 0),
            "drafts waiting for review": drafts,
        },
        last_hour={
            "messages in": int(received or 0),
            "message parts out": int(sent or 0),
            "sends failed": int(failed or 0),
        },
        errors={bot.name: list(bot.pipeline.errors) for bot in host.bots.values()},
        gate=host.gate_stats.snapshot(),
        lines=host.control.status(),
    )
