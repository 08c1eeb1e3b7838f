"""``create_app``: the host's one ASGI app.

Routes: ``GET /health``; the OpenAI-compatible chat channel under ``/v1`` (the bots that have a
channel of type ``openai``; :mod:`bots.adapters.openai_compat`); Prometheus ``GET /metrics``
(``[web] metrics``; :mod:`bots.web.metrics`); the operators' console under ``/console``
(:mod:`bots.web.console`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bots.adapters.openai_compat import ApiKeys, OpenAIChannel, http_error, openai_router
from bots.core.config import ConfigError
from bots.web.console import mount as mount_console
from bots.web.context import WebContext
from bots.web.metrics import exposition, registry_for


def create_app(ctx: WebContext) -> FastAPI:
    app = FastAPI(title="persona-bots", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, object]:
        return {"status": "ok", "bots": sorted(ctx.host.bots), "in_flight": ctx.host.in_flight}

    web = ctx.config.web
    app.state.api_keys = ApiKeys(ctx.database)
    app.include_router(
        openai_router(
            openai_channels(ctx), app.state.api_keys, key_rate=web.key_rate, max_body=web.max_body_kb * 1024
        )
    )

    async def routing_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path == "/v1" or request.url.path.startswith("/v1/"):
            return http_error(request, exc)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(StarletteHTTPException, routing_error)
    app.state.registry = registry_for(ctx.host)
    if web.metrics:

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            body, content_type = exposition(app.state.registry)
            return Response(body, media_type=content_type)

    mount_console(app, ctx)
    return app


def openai_channels(ctx: WebContext) -> dict[str, OpenAIChannel]:
    """The bots behind the OpenAI-compatible endpoint, by model id (the channel's ``model``, else
    the bot's name)."""
    channels: dict[str, OpenAIChannel] = {}
    for bot in ctx.host.bots.values():
        for adapter in bot.adapters:
            if isinstance(adapter, OpenAIChannel):
                model = adapter.model or bot.name
                if model in channels:
                    raise ConfigError(
                        f"bots.{bot.name}.channels: two openai channels serve the model {model!r}"
                    )
                channels[model] = adapter
    return channels
