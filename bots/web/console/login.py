"""Logging in with a one-time link, and out."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from bots.core.permissions import Role
from bots.web.console.auth import COOKIE, LOGIN_COOKIE, SESSION_TTL
from bots.web.console.base import FORM_ALLOWANCE, PREFIX, SECURITY_HEADERS, Console, Refused, read_form


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    @router.get("/login", response_class=HTMLResponse)
    async def confirm(request: Request, token: str = "") -> Response:
        """The link shows a button; only the button's POST uses the link up. Chat apps and mail
        scanners that fetch a pasted link to preview it neither spend it nor get the session."""
        check = secrets.token_urlsafe(24)  # the form's CSRF token before there is a session
        response = console.templates.TemplateResponse(
            request, "confirm.html", {"prefix": PREFIX, "token": token, "csrf": check, "nav": [], "bots": []}
        )
        response.headers.update(SECURITY_HEADERS)
        _cookie(response, request, LOGIN_COOKIE, check, 15 * 60, f"{PREFIX}/login")
        return response

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await read_form(request, FORM_ALLOWANCE, "size of a login form", max_fields=5)
        check = request.cookies.get(LOGIN_COOKIE, "")
        sent = str(form.get("csrf") or "")
        if not (check and sent and hmac.compare_digest(check.encode(), sent.encode())):
            await console.audit("unknown", "console login", "", "refused: no CSRF token")
            raise Refused(403, "This login form did not come from the console (CSRF). Open the link again.")
        operator = await console.links.consume(str(form.get("token") or ""))
        if operator is None:
            await console.audit("unknown", "console login", "", "refused: unknown, used or expired link")
            raise Refused(401, "This login link is unknown, used or expired. Run `bots console-link` again.")
        role = console.host.permissions.role_of(operator)
        if role < Role.OPERATOR:
            await console.audit(operator, "console login", "", f"refused: {role.name.lower()}")
        else:
            await console.audit(operator, "console login", "", "ok")
        await console.sessions.close(request.cookies.get(COOKIE))  # a session it replaces ends
        sid, _session = await console.sessions.open(operator)
        response = console.back("/")  # the console (a same-site redirect: the Strict cookie goes along)
        _cookie(response, request, COOKIE, sid, int(SESSION_TTL.total_seconds()), PREFIX)
        response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
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


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int, path: str) -> None:
    """HttpOnly, SameSite=Strict, and Secure when the console is served over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
