"""help, ping and whoami: the smallest useful plugin, and an example of the API."""

from __future__ import annotations

from bots.plugins import Invocation, Plugin, Role, command


class BasicsPlugin(Plugin):
    name = "basics"
    description = "help, ping and whoami"

    @command("help", help="List the commands you can use", aliases=("commands",))
    async def help(self, inv: Invocation) -> None:
        prefix = self.ctx.command_prefix
        lines = [
            f"{prefix}{entry.name}{' ' + entry.usage if entry.usage else ''}: {entry.help}".rstrip(": ")
            for entry in self.ctx.commands()
            if inv.role >= entry.permission
        ]
        await inv.reply("Commands:\n" + "\n".join(lines))

    @command("ping", help="Check that the bot is alive")
    async def ping(self, inv: Invocation) -> None:
        await inv.reply("pong")

    @command("whoami", help="Show your canonical id and role")
    async def whoami(self, inv: Invocation) -> None:
        author = inv.event.author
        await inv.reply(
            f"{author.display}: {author.canonical} (role: {Role(inv.role).name.lower()}), "
            f"chat {inv.event.channel.canonical}"
        )
