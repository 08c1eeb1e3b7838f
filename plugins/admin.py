"""Operator commands, built on the public plugin API. DM-only unless `[plugins.admin] dm_only = false`;
every use is audited."""

from __future__ import annotations

from collections.abc import Awaitable

from pydantic import BaseModel, ConfigDict, ValidationError

from bots.core.config import ConfigError, ScheduleConfig
from bots.plugins import Invocation, Plugin, Role, command
from bots.plugins.api import CommandSpec

USAGE = "Usage: /{name} {usage}"


async def _attempt(action: Awaitable[str]) -> str:
    """The action's answer, or what went wrong in words an operator can act on."""
    try:
        return await action
    except ConfigError as exc:
        return f"not done: {exc}"
    except (LookupError, ValueError) as exc:
        return str(exc).strip("'\"")


def _canonical(value: str) -> bool:
    platform, _, local = value.partition(":")
    return bool(platform and local)


class AdminConfig(BaseModel):
    """``[plugins.admin]``: ``dm_only = false`` lets operators use the commands in groups too."""

    model_config = ConfigDict(extra="forbid")
    dm_only: bool = True


class AdminPlugin(Plugin):
    name = "admin"
    Config = AdminConfig
    description = "status, mute, ban, roles, link, say, plugins, audit, jobs, review (operators only)"

    def dm_only(self, spec: CommandSpec) -> bool:
        return spec.dm_only and self.ctx.config.dm_only  # type: ignore[attr-defined]

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

    @command(
        "plugins",
        usage="[enable|disable|reload <plugin>]",
        permission=Role.OPERATOR,
        dm_only=True,
        help="The plugins this bot runs; switch one off or on, or load its code again",
    )
    async def plugins(self, inv: Invocation) -> None:
        runtime = self.ctx.host.runtime
        argv = inv.argv
        if not argv or argv == ["list"]:
            names = runtime.plugins(self.ctx.bot) if runtime else self.ctx.host.plugins(self.ctx.bot)
            return await inv.reply("plugins: " + ", ".join(names))
        if runtime is None or len(argv) != 2 or argv[0] not in ("enable", "disable", "reload"):
            return await self._usage(inv, "[enable|disable|reload <plugin>]")
        if argv[0] == "reload" and inv.role < Role.OWNER:
            return await inv.reply("Reloading code is for owners.")
        action = getattr(runtime, f"plugin_{argv[0]}")
        await inv.reply(await _attempt(action(self.ctx.bot, argv[1])))

    @command(
        "persona",
        usage="[show | reload | use <persona id>]",
        permission=Role.OPERATOR,
        dm_only=True,
        help="The persona this bot speaks as: show it, reload its file, or switch",
    )
    async def persona(self, inv: Invocation) -> None:
        runtime, argv = self.ctx.host.runtime, inv.argv
        if runtime is None:
            return await inv.reply("This host cannot change personas at run time.")
        if not argv or argv == ["show"]:
            return await inv.reply(runtime.persona_show(self.ctx.bot))
        if argv == ["reload"]:
            return await inv.reply(await _attempt(runtime.persona_reload(self.ctx.bot)))
        if len(argv) == 2 and argv[0] == "use":
            return await inv.reply(await _attempt(runtime.persona_use(self.ctx.bot, argv[1])))
        await self._usage(inv, "[show | reload | use <persona id>]")

    @command(
        "kb",
        usage="[stats | ingest <collection>]",
        permission=Role.OPERATOR,
        dm_only=True,
        help="The bot's knowledge collections: index state, or ingest changed files",
    )
    async def kb(self, inv: Invocation) -> None:
        runtime, argv = self.ctx.host.runtime, inv.argv
        if runtime is None:
            return await inv.reply("This host has no knowledge support.")
        if not argv or argv == ["stats"]:
            try:
                return await inv.reply("\n".join(runtime.kb_stats(self.ctx.bot)))
            except (LookupError, ValueError) as exc:
                return await inv.reply(str(exc))
        if len(argv) == 2 and argv[0] == "ingest":
            if argv[1] in runtime.collections(self.ctx.bot):
                await inv.reply(f"ingesting {argv[1]}; this can take a while")
            return await inv.reply(await _attempt(runtime.kb_ingest(self.ctx.bot, argv[1])))
        await self._usage(inv, "[stats | ingest <collection>]")

    @command("audit", usage="[n]", permission=Role.OPERATOR, dm_only=True, help="The last admin commands")
    async def audit(self, inv: Invocation) -> None:
        limit = int(inv.argv[0]) if inv.argv and inv.argv[0].isdigit() else 10
        entries = await self.ctx.host.audit(min(limit, 50))
        lines = [f"{e.at:%m-%d %H:%M} {e.actor} /{e.command} {e.args} -> {e.result}" for e in entries]
        await inv.reply("\n".join(lines) or "the audit log is empty")

    # -- scheduled posts -----------------------------------------------------------------------
    @command(
        "jobs",
        usage='[run|pause|resume|remove <job id> | add <id> <module:function> <target> "<cron>" [tz]]',
        permission=Role.OPERATOR,
        dm_only=True,
        help="Scheduled jobs: list, add, run now, pause, resume, remove",
    )
    async def jobs(self, inv: Invocation) -> None:
        scheduling = self.ctx.host.scheduling
        if scheduling is None:
            return await inv.reply("This host runs no scheduler.")
        argv = inv.argv
        if argv[:1] == ["add"]:
            return await self._add_job(inv, scheduling, argv[1:])
        if not argv or argv == ["list"]:
            lines = [
                f"{job.id}: {job.func} {job.trigger}; next {job.next_run_text}" for job in scheduling.jobs()
            ]
            return await inv.reply("\n".join(lines) or "No scheduled jobs.")
        if len(argv) != 2 or argv[0] not in ("run", "pause", "resume", "remove"):
            return await self._usage(inv, "[run|pause|resume|remove <job id>]")
        action, job_id = argv
        try:
            if action == "run":
                return await inv.reply(f"{job_id}: {await scheduling.run_now(job_id)}")
            getattr(scheduling, action)(job_id)
        except LookupError:
            return await inv.reply(f"No job {job_id!r}. Try /jobs.")
        await inv.reply(f"{job_id}: {action}d")

    async def _add_job(self, inv: Invocation, scheduling: object, argv: list[str]) -> None:
        if len(argv) not in (4, 5):
            return await self._usage(inv, 'add <id> <module:function> <target> "<cron>" [timezone]')
        fields = {"id": argv[0], "job": argv[1], "target": argv[2], "cron": argv[3]}
        if len(argv) == 5:
            fields["timezone"] = argv[4]
        try:
            schedule = ScheduleConfig.model_validate(fields)
            job_id = scheduling.add(self.ctx.bot, schedule)  # type: ignore[attr-defined]
        except ValidationError as exc:
            return await inv.reply("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))
        except (LookupError, ValueError) as exc:
            return await inv.reply(str(exc))
        await inv.reply(f"{job_id}: added")

    @command(
        "review",
        usage="[show|approve|reject|regen <draft> | edit <draft> <text>]",
        permission=Role.OPERATOR,
        dm_only=True,
        help="Drafts of scheduled posts waiting for approval",
    )
    async def review(self, inv: Invocation) -> None:
        scheduling = self.ctx.host.scheduling
        if scheduling is None:
            return await inv.reply("This host runs no scheduler.")
        action, _, rest = inv.args.strip().partition(" ")
        if action in ("", "list"):
            return await inv.reply("\n".join(await scheduling.drafts()) or "No drafts waiting.")
        draft_arg, _, text = rest.strip().partition(" ")
        if action not in ("show", "approve", "reject", "regen", "edit") or not draft_arg.isdigit():
            return await self._usage(inv, "[show|approve|reject|regen <draft> | edit <draft> <text>]")
        draft_id, by = int(draft_arg), inv.event.author.canonical
        try:
            if action == "show":
                reply = await scheduling.show(draft_id)
            elif action == "approve":
                version = int(text) if text.strip().isdigit() else None
                reply = f"draft #{draft_id}: {await scheduling.approve(draft_id, by, version)}"
            elif action == "reject":
                await scheduling.reject(draft_id, by)
                reply = f"draft #{draft_id}: rejected; nothing will be posted"
            elif action == "regen":
                await scheduling.regenerate(draft_id, by)
                reply = await scheduling.show(draft_id)
            else:
                if not text.strip():
                    return await self._usage(inv, "edit <draft> <text>")
                await scheduling.edit(draft_id, text.strip(), by)
                reply = await scheduling.show(draft_id)
        except (LookupError, ValueError) as exc:
            reply = str(exc)
        await inv.reply(reply)
