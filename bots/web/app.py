"""``create_app``: the host's one ASGI app.

Routes: ``GET /health``; the OpenAI-compatible chat channel under ``/v1`` (when a bot has a
channel of type ``openai``); Prometheus ``GET /metrics`` (``[web] metrics``); the operators'
console, mounted by :func:`_mount_console` from :mod:`bots.web.console` (its ``mount(app, ctx)``).
"""

from __future__ import annotations

from fastapi import FastAPI

from bots.web.context import WebContext


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="persona-bots", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, object]:
        return {"status": "ok", "bots": sorted(ctx.host.bots), "in_flight": ctx.host.in_flight}

    _mount_console(app, ctx)
    return app


def _mount_console(app: FastAPI, ctx: WebContext) -> None:
    """The operators' console (pages, login, CSRF) lives in :mod:`bots.web.console`, which
    provides ``mount(app: FastAPI, ctx: WebContext) -> None``."""
    try:
        from bots.web import console
    except ImportError as exc:
        if exc.name != "bots.web.console":  # a broken console is an error, not a missing one
            raise
        return
    mount = getattr(console, "mount", None)
    if mount is not None:
        mount(app, ctx)
