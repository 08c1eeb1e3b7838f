"""What operators may steer at run time, as the admin plugin sees it (through PluginContext)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from bots.core.events import ChannelKind, ChannelRef, Outbound
from bots.core.permissions import Role
from bots.core.storage import AuditEntry, KeyValueStore

if TYPE_CHECKING:
    from bots.core.host import Host


class HostControl:
    def __init__(self, host: Host) -> None:
        self._host = host
        self._state = KeyValueStore(host.db, "host")
        self.scheduling: Any = None  # the scheduler service, when the host has one (jobs, review)
        self.runtime: Any = None  # persona, plugins and knowledge of running bots (bots.runtime)

    def status(self) -> list[str]:
        lines = []
        for bot in self._host.bots.values():
            channels = ", ".join(f"{a.name} ({a.platform})" for a in bot.adapters) or "none"
            lines.append(f"{bot.name}: channels {channels}; plugins {', '.join(self.plugins(bot.name))}")
            lines += [f"  last error: {error}" for error in bot.pipeline.errors]
            if bot.pipeline.loops.stops:
                lines.append(f"  bot-to-bot loops stopped: {bot.pipeline.loops.stops}")
        lines.append(f"events in flight: {self._host.in_flight}; muted chats: {len(self._host.muted)}")
        m = self._host.metrics  # the numbers /metrics exports
        calls = sum((stats.calls for stats in m.models.values()), Counter())
        lines.append(
            f"since start: {m.received.total()} messages in, {m.sent.total()} out; "
            f"model calls {calls['ok']} ok, {calls['error']} failed"
        )
        inbox = self._host.inbox
        if inbox.abandoned:
            days = inbox.keep.days
            lines.append(f"messages abandoned, never answered (last {days} days): {inbox.abandoned}")
        gate = self._host.gate_stats.snapshot()
        if gate:
            lines.append("quality gate: " + ", ".join(f"{name} {count}" for name, count in gate.items()))
        return lines

    def plugins(self, bot: str) -> list[str]:
        return sorted({entry.plugin for entry in self._host.bots[bot].pipeline.dispatch.commands()})

    async def load_mutes(self) -> None:
        self._host.muted |= set(await self._state.get("muted", []))

    async def mute(self, chat: str) -> None:
        self._host.muted.add(chat)
        await self._state.set("muted", sorted(self._host.muted))

    async def unmute(self, chat: str) -> None:
        self._host.muted.discard(chat)
        await self._state.set("muted", sorted(self._host.muted))

    async def set_role(self, user: str, role: Role, by: str) -> None:
        await self._host.permissions.grant(user, role, by)

    async def clear_role(self, user: str) -> None:
        await self._host.permissions.revoke(user)

    async def link(self, user: str, person: str) -> None:
        await self._host.permissions.link(user, person)

    def role_of(self, user: str) -> Role:
        return self._host.permissions.role_of(user)

    async def say(self, bot: str, chat: str, text: str) -> None:
        platform, _, chat_id = chat.partition(":")
        await self._host.send(bot, Outbound(ChannelRef(platform, chat_id, ChannelKind.GROUP), text))

    async def audit(self, limit: int = 20) -> list[AuditEntry]:
        return await self._host.audit.recent(limit)
