"""Knowledge (collections, upload, re-ingest with progress, search) and personas (view, try a
message, run the persona eval), over :mod:`bots.runtime` and :mod:`bots.evaluation`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from bots.core.config import ConfigError
from bots.web.console.base import Console, Operator, Refused
from bots.web.console.tasks import Task

MAX_EVAL_QUESTIONS = 100


def _runtime(console: Console) -> Any:
    runtime = console.host.control.runtime
    if runtime is None:
        raise Refused(404, "This host cannot change bots at run time.")
    return runtime


def rich_table(table: Any) -> dict[str, Any]:
    """A rich Table (what the CLI prints) as a title, headers and rows of text for a template."""
    headers = [str(column.header) for column in table.columns]
    columns = [[str(cell) for cell in column.cells] for column in table.columns]
    return {"title": str(table.title or ""), "headers": headers, "rows": list(zip(*columns, strict=True))}


def routes(console: Console) -> APIRouter:
    router = APIRouter()

    # -- knowledge -------------------------------------------------------------------------------
    @router.get("/knowledge", response_class=HTMLResponse)
    async def knowledge(
        request: Request, bot: str = "", q: str = "", collection: str = "", method: str = "fused"
    ) -> Response:
        who = await console.operator(request)
        name = console.pick_bot(bot)
        runtime = _runtime(console)
        problem, details, hits = "", [], []
        try:
            details = await asyncio.to_thread(runtime.kb_details, name)
            if q and collection:
                if method not in ("fused", "keyword", "dense"):
                    method = "fused"
                hits = await runtime.kb_search(name, collection, q, 5, method)
        except (ConfigError, LookupError, ValueError) as exc:
            problem = str(exc).strip("'\"")
        tasks = [t for t in console.tasks.recent("ingest") if t.title.startswith(f"{name}/")][:5]
        return console.page(
            request,
            who,
            "knowledge.html",
            title="Knowledge",
            bot=name,
            details=details,
            problem=problem,
            q=q,
            collection=collection,
            method=method,
            hits=hits,
            tasks=tasks,
            upload_limit_mib=console.upload_limit / 2**20,
        )

    @router.post("/knowledge/upload")
    async def upload(request: Request) -> Response:
        who, form = await console.acting(request, "kb upload")
        bot, collection = console.pick_bot(str(form.get("bot") or "")), str(form.get("collection") or "")
        file = form.get("file")
        if not isinstance(file, UploadFile) or not file.filename:
            console.flash(who, "Choose a file to upload.")
            return console.back(f"/knowledge?bot={bot}")
        # read one byte past the limit: enough to refuse an oversize file without holding it all
        data = await file.read(console.upload_limit + 1)
        args = f"{collection} {file.filename} ({len(data)} bytes)"
        try:
            stored = await asyncio.to_thread(
                _runtime(console).kb_upload, bot, collection, file.filename, data, console.upload_limit
            )
        except (ConfigError, LookupError, ValueError) as exc:
            await console.audit(who, "kb upload", args, f"refused: {exc}"[:255], bot=bot)
            console.flash(who, f"Not uploaded: {str(exc).strip(chr(39) + chr(34))}")
            return console.back(f"/knowledge?bot={bot}")
        await console.audit(who, "kb upload", args, "ok", bot=bot)
        task = _start_ingest(console, who, bot, collection)
        console.flash(who, f"{stored} is in {collection}; indexing it now.")
        return console.back(f"/knowledge?bot={bot}&task={task.id}")

    @router.post("/knowledge/ingest")
    async def ingest(request: Request) -> Response:
        who, form = await console.acting(request, "kb ingest")
        bot, collection = console.pick_bot(str(form.get("bot") or "")), str(form.get("collection") or "")
        task = _start_ingest(console, who, bot, collection)
        return console.back(f"/knowledge?bot={bot}&task={task.id}")

    @router.get("/tasks/{task_id}")
    async def task_state(request: Request, task_id: int) -> Response:
        await console.operator(request)
        task = console.tasks.get(task_id)
        if task is None:
            raise Refused(404, f"no task {task_id}")
        return JSONResponse(task.as_json(), headers={"Cache-Control": "no-store"})

    # -- personas --------------------------------------------------------------------------------
    @router.get("/personas", response_class=HTMLResponse)
    async def personas(request: Request, bot: str = "") -> Response:
        who = await console.operator(request)
        return _personas_page(console, request, who, console.pick_bot(bot))

    @router.post("/personas/try", response_class=HTMLResponse)
    async def try_message(request: Request) -> Response:
        who, form = await console.acting(request, "persona try")
        bot = console.pick_bot(str(form.get("bot") or ""))
        text = str(form.get("text") or "").strip()[: console.config.memory.max_input_chars]
        if not text:
            console.flash(who, "Type a message to try.")
            return console.back(f"/personas?bot={bot}")
        from bots.evaluation import invocation

        agent = _runtime(console).bots[bot].agent
        reply = await agent.answer(invocation(text, f"console-{uuid.uuid4().hex[:8]}", 0))
        await console.audit(who, "persona try", text, reply.mode, bot=bot)
        return _personas_page(console, request, who, bot, tried=text, reply=reply)

    @router.post("/personas/eval")
    async def run_eval(request: Request) -> Response:
        who, form = await console.acting(request, "persona eval")
        bot = console.pick_bot(str(form.get("bot") or ""))
        from bots.evaluation import parse_questions

        try:
            questions = parse_questions(str(form.get("questions") or ""), "the questions")
            if len(questions) > MAX_EVAL_QUESTIONS:
                raise ValueError(f"at most {MAX_EVAL_QUESTIONS} questions at a time")
        except ValueError as exc:
            console.flash(who, str(exc))
            return console.back(f"/personas?bot={bot}")
        persona_id = _runtime(console).bots[bot].persona_id
        task = console.tasks.start(
            "eval",
            f"{bot}/{persona_id}",
            who.id,
            lambda task: _eval(console, task, persona_id, questions),
            on_end=lambda task: console.audit(
                who, "persona eval", f"{persona_id}: {len(questions)} questions", task.state, bot=bot
            ),
        )
        task.total = len(questions)
        return console.back(f"/personas?bot={bot}&task={task.id}")

    return router


def _personas_page(console: Console, request: Request, who: Operator, bot: str, **extra: Any) -> Response:
    runtime = _runtime(console)
    live = runtime.bots[bot]
    evals = [t for t in console.tasks.recent("eval") if t.title.startswith(f"{bot}/")][:3]
    latest = next((t for t in evals if t.state == "done"), None)
    return console.page(
        request,
        who,
        "personas.html",
        title="Personas",
        bot=bot,
        persona_id=live.persona_id,
        persona=live.agent.persona,
        summary=runtime.persona_show(bot),
        others=runtime.library.ids(),
        evals=evals,
        tables=[rich_table(t) for t in _eval_tables(latest)],
        notes=latest.result.notes if latest else [],
        **extra,
    )


def _eval_tables(latest: Task | None) -> list[Any]:
    from bots.evaluation import tables

    return tables(latest.result) if latest is not None else []


def _start_ingest(console: Console, who: Operator, bot: str, collection: str) -> Task:
    runtime = _runtime(console)

    async def work(task: Task) -> str:
        info = next(
            (d for d in await asyncio.to_thread(runtime.kb_details, bot) if d["collection"] == collection),
            None,
        )
        task.total = info["files"] if info else 0

        def progress(what: str, count: int) -> None:  # called from the ingest's thread
            if what == "files":
                task.done += count
            else:
                task.chunks += count

        return await runtime.kb_ingest(bot, collection, progress=progress)

    async def record(task: Task) -> None:
        await console.audit(
            who,
            "kb ingest",
            collection,
            task.state if task.state == "done" else f"failed: {task.message}",
            bot=bot,
        )

    return console.tasks.start("ingest", f"{bot}/{collection}", who.id, work, on_end=record)


async def _eval(console: Console, task: Task, persona_id: str, questions: list[Any]) -> str:
    """``bots persona eval`` for the bot's persona: the same agent wiring, run and scoring."""
    from bots.evaluation import Report, add_style, agent_answers, run

    persona = _runtime(console).library.get(persona_id)

    def progress(_result: Any) -> None:
        task.done += 1

    async with agent_answers(console.config, console.secrets, persona_id, persona) as answer:
        frames = [*persona.answer_openings, *persona.answer_closings]
        report = Report(await run(questions, answer, exclude=frames, on_result=progress))
    await asyncio.to_thread(add_style, report, console.config, persona, None)
    task.result = report
    return f"{len(report.results)} questions asked"
