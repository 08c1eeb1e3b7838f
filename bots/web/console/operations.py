"""Status, review queue, jobs, audit log and roles: the pages over the scheduler and the host.

Every action calls what the admin plugin's chat commands call (the scheduler service, the host's
control); nothing here decides anything the chat commands would decide differently.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from bots.core.permissions import Role
from bots.web.console.base import Console, Refused
from bots.web.console.status import host_status

AUDIT_PAGE = 50
LAST_AUDIT_PAGE = 10**6  # a page number past it is read as this one (the database's integers end)


def _scheduling(console: Console) -> Any:
    scheduling = console.host.control.scheduling
    if scheduling is None:
        raise Refused(404, "This host runs no scheduler.")
    return scheduling


def _draft_id(raw: str) -> int:
    if not raw.isdigit():
        raise Refused(400, f"{raw!r} is not a draft number.")
    return int(raw)


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    # -- status ------------------------------------------------------------------------------
    @router.get("/", response_class=HTMLResponse)
    async def status(request: Request) -> Response:
        who = await console.operator(request)
        return console.page(
            request,
            who,
            "status.html",
            title="Status",
            status_data=await host_status(console.host, console.registry, console.rates),
        )

    # -- review queue --------------------------------------------------------------------------
    @router.get("/review", response_class=HTMLResponse)
    async def review(request: Request) -> Response:
        who = await console.operator(request)
        scheduling = _scheduling(console)
        drafts = await scheduling.review.pending()
        return console.page(request, who, "review.html", title="Review", drafts=drafts)

    @router.post("/review/{draft}/{action}")
    async def review_action(request: Request, draft: str, action: str) -> Response:
        if action not in ("approve", "edit", "regenerate", "reject"):
            raise Refused(404, f"no such action {action!r}")
        who, form = await console.acting(request, f"review {action}")
        draft_id = _draft_id(draft)
        scheduling = _scheduling(console)
        args, bot = f"#{draft_id}", "*"
        try:
            bot = (await scheduling.review.get(draft_id)).bot
            if action == "approve":
                raw = str(form.get("version") or "")
                version = int(raw) if raw.isdigit() else None
                args += f" version {version}" if version else ""
                outcome = await scheduling.approve(draft_id, who.id, version)
                message = f"Draft #{draft_id}: {outcome}."
            elif action == "reject":
                await scheduling.reject(draft_id, who.id)
                message = f"Draft #{draft_id}: rejected; nothing will be posted."
            elif action == "edit":
                text = str(form.get("text") or "").strip()
                if not text:
                    raise ValueError("an edit needs the new text")
                args += f" {text}"
                await scheduling.edit(draft_id, text, who.id)
                message = f"Draft #{draft_id}: your version is now the one to approve."
            else:
                await scheduling.regenerate(draft_id, who.id)
                message = f"Draft #{draft_id}: the job wrote another version."
        except (LookupError, ValueError) as exc:
            await console.audit(who, f"review {action}", args, f"error: {exc}", bot=bot)
            console.flash(who, str(exc).strip("'\""))
            return console.back("/review")
        await console.audit(who, f"review {action}", args, "ok", bot=bot)
        console.flash(who, message)
        return console.back("/review")

    # -- jobs ------------------------------------------------------------------------------------
    @router.get("/jobs", response_class=HTMLResponse)
    async def jobs(request: Request) -> Response:
        who = await console.operator(request)
        scheduling = _scheduling(console)
        rows = []
        for job in scheduling.jobs():
            last = await scheduling.ledger.recent(job.id, limit=1)
            rows.append((job, last[0] if last else None))
        return console.page(request, who, "jobs.html", title="Jobs", jobs=rows)

    @router.post("/jobs/{action}")
    async def job_action(request: Request, action: str) -> Response:
        if action not in ("run", "pause", "resume"):
            raise Refused(404, f"no such action {action!r}")
        who, form = await console.acting(request, f"jobs {action}")
        job_id = str(form.get("job") or "")
        scheduling = _scheduling(console)
        try:
            if action == "run":
                outcome = await scheduling.run_now(job_id)
            else:
                getattr(scheduling, action)(job_id)
                outcome = f"{action}d"
        except LookupError:
            await console.audit(who, f"jobs {action}", job_id, "error: no such job")
            console.flash(who, f"No job {job_id!r}.")
            return console.back("/jobs")
        await console.audit(who, f"jobs {action}", job_id, outcome, bot=job_id.partition(":")[0])
        console.flash(who, f"{job_id}: {outcome}")
        return console.back("/jobs")

    # -- audit log -------------------------------------------------------------------------------
    @router.get("/audit", response_class=HTMLResponse)
    async def audit(
        request: Request, actor: str = "", command: str = "", bot: str = "", result: str = "", page: int = 1
    ) -> Response:
        who = await console.operator(request)
        page = min(max(page, 1), LAST_AUDIT_PAGE)
        entries, total = await console.host.audit.search(
            actor=actor,
            command=command,
            bot=bot,
            result=result,
            limit=AUDIT_PAGE,
            offset=(page - 1) * AUDIT_PAGE,
        )
        filters = {"actor": actor, "command": command, "bot": bot, "result": result}
        pages = max(1, -(-total // AUDIT_PAGE))
        return console.page(
            request,
            who,
            "audit.html",
            title="Audit log",
            entries=entries,
            total=total,
            filters=filters,
            page=page,
            pages=pages,
        )

    # -- roles ---------------------------------------------------------------------------------
    @router.get("/roles", response_class=HTMLResponse)
    async def roles(request: Request) -> Response:
        who = await console.operator(request)
        permissions = console.host.permissions
        ids = sorted({*permissions.configured(), *permissions.grants()})
        rows = [
            (i, permissions.role_of(i).name.lower(), _origin(permissions, i), permissions.person_of(i))
            for i in ids
        ]
        return console.page(
            request,
            who,
            "roles.html",
            title="Roles",
            rows=rows,
            people=permissions.people(),
            can_change=who.role >= Role.OWNER,
        )

    @router.post("/roles/{action}")
    async def role_action(request: Request, action: str) -> Response:
        if action not in ("grant", "revoke"):
            raise Refused(404, f"no such action {action!r}")
        who, form = await console.acting(request, f"roles {action}", need=Role.OWNER)  # as /roles in chat
        user = str(form.get("user") or "").strip()
        platform, _, local = user.partition(":")
        if not (platform and local):
            console.flash(who, f"{user!r} is not an id like telegram:123.")
            return console.back("/roles")
        args = user
        if action == "grant":
            role = str(form.get("role") or "")
            if role not in ("operator", "member"):
                console.flash(who, "A role is operator or member.")
                return console.back("/roles")
            args += f" {role}"
            await console.host.control.set_role(user, Role[role.upper()], by=who.id)
        else:
            await console.host.control.clear_role(user)
        now = console.host.permissions.role_of(user).name.lower()
        await console.audit(who, f"roles {action}", args, "ok")
        console.flash(who, f"{user}: {now}")
        return console.back("/roles")

    return router


def _origin(permissions: Any, canonical_id: str) -> str:
    granted = permissions.grants().get(canonical_id)
    configured = permissions.configured().get(canonical_id)
    parts = []
    if configured is not None:
        parts.append(f"config: {configured.name.lower()}")
    if granted is not None:
        parts.append(f"granted: {granted.name.lower()}")
    return ", ".join(parts)
