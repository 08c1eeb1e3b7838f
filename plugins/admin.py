"""Operator commands, built on the public plugin API. DM-only; every use is audited."""

from __future__ import annotations

from bots.plugins import Invocation, Plugin, Role, command

USAGE = "Usage: /{name} {usage}"


def _canonical(value: str) -> bool:
    platform, _, local = value.partition(":")
    return bool(platform and local)


class AdminPlugin(Plugin):
    name = "admin"
    description = "status, mute, ban, roles, link, say, plugins, audit (operators only)"

    async def _usage(self, inv: Invocation, usage: str) -> None:
        await inv.reply(USAGE.format(name=inv.command, usage=usage))

    @command("status", permission=Role.OPERATOR, dm_only=True, help="Bots, channels, last errors")
    async def status(self, inv: Invocation) -> None:
        await inv.reply("\n".join(self.ctx.host.status()))

    @command(
        "mute", usage="<chat>", permission=Role.OPERATOR, dm_only=True, help="Silence the bots in a chat"
    )
    async def mute(self, inv: Invocation) -> None:
        if len(inv.argv) != 1 or not _canonical(inv.argv[0]):
            return await self._usage(inv, "<chat id like telegram:-100123>")
        await self.ctx.host.mute(inv.argv[0])
        await inv.reply(f"muted {inv.argv[0]}")

    @command("unmute", usage="<chat>", permission=Role.OPERATOR, dm_only=True, help="Undo /mute")
    async def unmute(self, inv: Invocation) -> None:
        if len(inv.argv) != 1 or not _canonical(inv.argv[0]):
            return await self._usage(inv, "<chat id>")
        await self.ctx.host.unmute(inv.argv[0])
        await inv.reply(f"unmuted {inv.argv[0]}")

    @command("ban", usage="<user>", permission=Role.OPERATOR, dm_only=True, help="Ignore a user everywhere")
    async def ban(self, inv: Invocation) -> None:
        if len(inv.argv) != 1 or not _canonical(inv.argv[0]):
            return await self._usage(inv, "<user id like telegram:123>")
        target = inv.argv[0]
        if self.ctx.host.role_of(target) >= inv.role:
            return await inv.reply("You cannot ban someone of your own rank or above.")
        await self.ctx.host.set_role(target, Role.BANNED, by=inv.event.author.canonical)
        await inv.reply(f"banned {target}")

    @command("unban", usage="<user>", permission=Role.OPERATOR, dm_only=True, help="Undo /ban")
    async def unban(self, inv: Invocation) -> None:
        if len(inv.argv) != 1 or not _canonical(inv.argv[0]):
            return await self._usage(inv, "<user id>")
        await self.ctx.host.clear_role(inv.argv[0])
        await inv.reply(
            f"unbanned {inv.argv[0]} (role now {self.ctx.host.role_of(inv.argv[0]).name.lower()})"
        )

    @command(
        "roles", usage="grant <user> operator|member | revoke <user> | show <user>",
        permission=Role.OWNER, dm_only=True, help="Give or take operator rights",
    )  # fmt: skip
    async def roles(self, inv: Invocation) -> None:
        argv = inv.argv
        if (
            len(argv) == 3
            and argv[0] == "grant"
            and _canonical(argv[1])
            and argv[2] in ("operator", "member")
        ):
            await self.ctx.host.set_role(argv[1], Role[argv[2].upper()], by=inv.event.author.canonical)
        elif len(argv) == 2 and argv[0] == "revoke" and _canonical(argv[1]):
            await self.ctx.host.clear_role(argv[1])
        elif not (len(argv) == 2 and argv[0] == "show" and _canonical(argv[1])):
            return await self._usage(inv, "grant <user> operator|member | revoke <user> | show <user>")
        await inv.reply(f"{argv[1]}: {self.ctx.host.role_of(argv[1]).name.lower()}")

    @command(
        "link", usage="<user> <person>", permission=Role.OWNER, dm_only=True, help="One person, many ids"
    )
    async def link(self, inv: Invocation) -> None:
        if len(inv.argv) != 2 or not _canonical(inv.argv[0]):
            return await self._usage(inv, "<user id> <person name>")
        await self.ctx.host.link(inv.argv[0], inv.argv[1])
        await inv.reply(f"{inv.argv[0]} is {inv.argv[1]}")

    @command("say", usage="<chat> <text>", permission=Role.OPERATOR, dm_only=True, help="Post as the bot")
    async def say(self, inv: Invocation) -> None:
        chat, _, text = inv.args.partition(" ")
        if not _canonical(chat) or not text.strip():
            return await self._usage(inv, "<chat id> <text>")
        try:
            await self.ctx.host.say(self.ctx.bot, chat, text.strip())
        except LookupError as exc:
            return await inv.reply(str(exc))
        await inv.reply(f"sent to {chat}")

    @command("plugins", permission=Role.OPERATOR, dm_only=True, help="The plugins this bot runs")
    async def plugins(self, inv: Invocation) -> None:
        await inv.reply("plugins: " + ", ".join(self.ctx.host.plugins(self.ctx.bot)))

    @command("audit", usage="[n]", permission=Role.OPERATOR, dm_only=True, help="The last admin commands")
    async def audit(self, inv: Invocation) -> None:
        limit = int(inv.argv[0]) if inv.argv and inv.argv[0].isdigit() else 10
        entries = await self.ctx.host.audit(min(limit, 50))
        lines = [f"{e.at:%m-%d %H:%M} {e.actor} /{e.command} {e.args} -> {e.result}" for e in entries]
        await inv.reply("\n".join(lines) or "the audit log is empty")
