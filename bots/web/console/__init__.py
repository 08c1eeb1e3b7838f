"""The operators' web console: server-rendered pages under ``/console`` (Jinja2, a little plain
JavaScript, no build step) over the same parts the admin plugin's chat commands use.

Security: login by a one-time link (``bots console-link``); an HttpOnly, SameSite=Strict session
cookie (Secure over https); a CSRF token on every form, and every POST without it refused (403);
roles from the host's permissions (members and banned people see nothing: 403); every action,
refused or not, in the audit log with the operator's id; uploads checked for size and type and
read through the loaders' guards before they land in a collection.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from bots.core.permissions import Role
from bots.web.console.base import HERE, PREFIX, Console, Refused

__all__ = ["Console", "mount"]


def mount(app: FastAPI, ctx: Any, *, upload_limit: int | None = None) -> Console:
    """Add the console's routes to ``app``. ``ctx`` carries the running ``host``, its ``config``
    and ``secrets`` (the web app's shared context)."""
    from bots.web.console import content, login, operations

    limit = upload_limit or ctx.config.web.upload_max_mb * 2**20
    registry = getattr(app.state, "registry", None)
    if registry is None:  # an app without /metrics: the same collector over the same host
        from bots.web.metrics import registry_for

        registry = registry_for(ctx.host)
    console = Console(
        host=ctx.host,
        config=ctx.config,
        secrets=getattr(ctx, "secrets", None),
        upload_limit=limit,
        registry=registry,
    )
    for module in (login, operations, content):
        app.include_router(module.routes(console), prefix=PREFIX, include_in_schema=False)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")

    async def refused(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, Refused)
        who = await console.current(request)
        if who is not None and who.role < Role.OPERATOR:
            who = None  # members see nothing, not even the list of pages
        return console.page(
            request,
            who,
            "error.html",
            status=exc.status,
            title={401: "Log in", 403: "Not allowed"}.get(exc.status, "Problem"),
            message=exc.message,
        )

    app.add_exception_handler(Refused, refused)
    app.state.console = console
    ctx.host.services.append(_Lifetime(console))  # a host that starts later also stops its tasks
    return console


class _Lifetime:
    """A host Service: at the host's stop, the console's background tasks (an eval) end too."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def start(self) -> None:
        """Nothing to load."""

    async def ready(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        await self.console.tasks.stop()
