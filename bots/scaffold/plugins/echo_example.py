"""An example plugin: files in plugins/ are discovered automatically."""

from bots.plugins import Invocation, Plugin, command


class EchoPlugin(Plugin):
    name = "echo"

    @command("echo", help="Repeat what you say", usage="<text>")
    async def echo(self, inv: Invocation) -> None:
        await inv.reply(inv.args or "(nothing to echo)")
