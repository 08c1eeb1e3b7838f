"""Logging in with a one-time link, and out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from bots.core.permissions import Role
from bots.web.console.auth import COOKIE, SESSION_TTL
from bots.web.console.base import PREFIX, SECURITY_HEADERS, Console, Refused


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    @router.get("/login", response_class=HTMLResponse)
    async def login(request: Request, token: str = "") -> Response:
        operator = await console.links.consume(token)
        if operator is None:
            await console.audit("unknown", "console login", "", "refused: unknown, used or expired link")
            raise Refused(401, "This login link is unknown, used or expired. Run `bots console-link` again.")
        role = console.host.permissions.role_of(operator)
        if role < Role.OPERATOR:
            await console.audit(operator, "console login", "", f"refused: {role.name.lower()}")
        else:
            await console.audit(operator, "console login", "", "ok")
        sid, _session = await console.sessions.open(operator)
        # a page, not a redirect: a SameSite=Strict cookie set on a navigation that came from
        # another site (a chat app's link) is only sent from the next same-site navigation on
        response = console.templates.TemplateResponse(
            request, "login.html", {"prefix": PREFIX, "operator_id": operator, "nav": [], "bots": []}
        )
        response.headers.update(SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(SESSION_TTL.total_seconds()),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        who, _form = await console.acting(request, "console logout", need=Role.BANNED)
        await console.sessions.close(who.sid)
        await console.audit(who, "console logout", "", "ok")
        response = console.back("/logged-out")
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    @router.get("/logged-out", response_class=HTMLResponse)
    async def logged_out(request: Request) -> Response:
        return console.page(
            request,
            None,
            "error.html",
            status=200,
            title="Logged out",
            message="You are logged out. Run `bots console-link` for a new link.",
        )

    return router
