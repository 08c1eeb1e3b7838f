"""What every console page shares: the operator behind a request, CSRF, rendering, auditing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData
from starlette.types import Message

from bots.core.config import AppConfig
from bots.core.host import Host
from bots.core.permissions import Role
from bots.web.console.auth import COOKIE, LoginLinks, Session, Sessions
from bots.web.console.status import Rates
from bots.web.console.tasks import Tasks

PREFIX = "/console"
HERE = Path(__file__).parent
FORM_ALLOWANCE = 64 * 1024  # a form's fields besides an uploaded file
PAGES = [  # (path, title): the navigation bar
    ("/", "Status"),
    ("/review", "Review"),
    ("/jobs", "Jobs"),
    ("/audit", "Audit log"),
    ("/knowledge", "Knowledge"),
    ("/personas", "Personas"),
    ("/roles", "Roles"),
]
# No inline script or style anywhere: the page may load only what this app serves.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request the console turns down; rendered as an error page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _TooLarge(Exception):
    """The body went past its limit while it was read."""


async def read_form(
    request: Request, limit: int, what: str, *, max_files: int = 0, max_fields: int = 20
) -> FormData:
    """The request's form, refused (413) once its body is over ``limit`` bytes: by its declared
    Content-Length before anything is read, else while it is read (a chunked body has none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"The request is over the {what}.")
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
        return message

    try:  # a Request over the bounded receive: the form parser reads through it
        return await Request(request.scope, receive).form(max_files=max_files, max_fields=max_fields)
    except _TooLarge:
        raise Refused(413, f"The request is over the {what}.") from None


@dataclass
class Operator:
    """The person behind a request, with their role as the host's permissions say now."""

    id: str
    role: Role
    session: Session
    sid: str

    @property
    def key(self) -> str:
        return hashlib.sha256(self.sid.encode()).hexdigest()


@dataclass
class Console:
    host: Host
    config: AppConfig
    secrets: Any
    upload_limit: int
    registry: Any  # what /metrics serves: the status page shows the same numbers
    links: LoginLinks = field(init=False)
    sessions: Sessions = field(init=False)
    tasks: Tasks = field(default_factory=Tasks)
    rates: Rates = field(default_factory=Rates)
    templates: Jinja2Templates = field(init=False)
    _flash: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.links = LoginLinks(self.host.db)
        self.sessions = Sessions(self.host.db)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # -- who is asking -------------------------------------------------------------------------
    async def current(self, request: Request) -> Operator | None:
        """Whoever the session cookie says, whatever their role; None without a live session."""
        sid = request.cookies.get(COOKIE)
        session = await self.sessions.get(sid)
        if session is None or sid is None:
            return None
        return Operator(session.operator, self.host.permissions.role_of(session.operator), session, sid)

    async def operator(self, request: Request, need: Role = Role.OPERATOR, what: str = "") -> Operator:
        """The logged-in operator, or :class:`Refused`: 401 without a session, 403 below ``need``
        (audited, with ``what`` they tried)."""
        who = await self._session_holder(request)
        await self._allow(who, need, what or f"view {request.url.path}")
        return who

    async def _session_holder(self, request: Request) -> Operator:
        who = await self.current(request)
        if who is None:
            raise Refused(401, "Not logged in. Run `bots console-link` on the host and open the link.")
        return who

    async def _allow(self, who: Operator, need: Role, what: str) -> None:
        if who.role < need:
            await self.audit(who, what, "", "refused")
            role, needed = who.role.name.lower(), need.name.lower()
            raise Refused(403, f"{who.id} has the role {role}: this needs {needed} rights.")

    async def acting(self, request: Request, what: str, need: Role = Role.OPERATOR) -> tuple[Operator, Any]:
        """For a POST: the operator (as :meth:`operator`) and the form, after its CSRF token was
        checked (403 without it, audited). Without a session nothing of the body is read (401)."""
        who = await self._session_holder(request)
        limit = f"{self.upload_limit // 2**20} MiB upload limit"
        form = await read_form(request, self.upload_limit + FORM_ALLOWANCE, limit, max_files=1)
        if not who.session.csrf_ok(str(form.get("csrf") or "")):
            await self.audit(who, what, "", "refused: no CSRF token")
            raise Refused(403, "This form has expired or did not come from the console (CSRF). Reload it.")
        await self._allow(who, need, what)
        return who, form

    # -- pages ---------------------------------------------------------------------------------
    def bot_names(self) -> list[str]:
        return list(self.host.bots)

    def pick_bot(self, name: str | None) -> str:
        names = self.bot_names()
        if not names:
            raise Refused(404, "This host runs no bots.")
        if name and name not in names:
            raise Refused(404, f"No bot {name!r}.")
        return name or names[0]

    def flash(self, who: Operator, message: str) -> None:
        self._flash[who.key] = message

    def page(
        self, request: Request, who: Operator | None, template: str, status: int = 200, **data: Any
    ) -> HTMLResponse:
        context = {
            "prefix": PREFIX,
            "nav": PAGES,
            "operator": who,
            "role": who.role.name.lower() if who else "",
            "csrf": who.session.csrf if who else "",
            "flash": self._flash.pop(who.key, "") if who else "",
            "bots": self.bot_names(),
            **data,
        }
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def back(self, path: str) -> RedirectResponse:
        """After a POST: see the page again (303, so a reload does not post twice)."""
        response = RedirectResponse(PREFIX + path, status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def audit(self, who: Operator | str, command: str, args: str, result: str, bot: str = "*") -> None:
        actor = who if isinstance(who, str) else who.id
        await self.host.audit.record(
            bot=bot, actor=actor, channel="web", command=command[:64], args=args, result=result[:255]
        )
