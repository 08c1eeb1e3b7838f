"""The ``bots`` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from bots import __version__
from bots.core.config import (
    AppConfig,
    BotConfig,
    ConfigError,
    EnvSettings,
    Secrets,
    load_config,
)
from bots.core.logs import setup_logging

app = typer.Typer(help="Run persona chat bots in group chats.", no_args_is_help=True)
persona_app = typer.Typer(help="List, show and import personas.", no_args_is_help=True)
app.add_typer(persona_app, name="persona")
knowledge_app = typer.Typer(help="Knowledge collections: list and stats.", no_args_is_help=True)
app.add_typer(knowledge_app, name="knowledge")
jobs_app = typer.Typer(help="Scheduled jobs: list, run now, pause, resume, remove.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
review_app = typer.Typer(help="Drafts of scheduled posts: list, approve, reject.", no_args_is_help=True)
app.add_typer(review_app, name="review")
api_key_app = typer.Typer(
    help="Keys of the OpenAI-compatible endpoint (bots serve): create, list, revoke.", no_args_is_help=True
)
app.add_typer(api_key_app, name="api-key")
db_app = typer.Typer(help="The state database: migrate it to this version's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="bots.toml to use [default: $BOTS_CONFIG or config/bots.toml]"),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)  # "[plugins.x]" stays
    return typer.Exit(code)


def _config_path(option: Path | None) -> Path:
    return option or EnvSettings().config


def _load(option: Path | None, *, required: bool = True) -> AppConfig:
    """The config file; without one (and when allowed), the defaults relative to the cwd."""
    path = _config_path(option)
    if not path.is_file() and not required and option is None:
        return AppConfig().resolve_paths(Path.cwd())
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _secrets(option: Path | None) -> Secrets:
    path = _config_path(option)
    return Secrets([Path.cwd() / ".env", path.parent / ".env"])


def _version(value: bool) -> None:
    if value:
        out.print(f"bots {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time


# -- run -----------------------------------------------------------------------------------------
@app.command()
def run(config: ConfigOption = None) -> None:
    """Start the host with every configured bot and channel (and the web app when [web] enabled = true);
    stop with Ctrl-C."""
    _run_host(config, web=None)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on [default: [web] host]")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="TCP port [default: [web] port]")] = None,
) -> None:
    """Start the host as `bots run` does, always with the web app: the OpenAI-compatible endpoint,
    /metrics and the operators' console."""
    _run_host(config, web=True, listen={"host": host, "port": port})


def _run_host(config: Path | None, *, web: bool | None, listen: dict[str, Any] | None = None) -> None:
    """The host from the config; ``web``: with the web app (None: as [web] enabled says)."""
    from bots.adapters.console import ConsoleAdapter
    from bots.assembly import build_host
    from bots.core.looplag import loop_lag_from_env

    cfg = _load(config)
    given = {key: value for key, value in (listen or {}).items() if value is not None}
    if given:  # the command line's --host/--port over [web]
        cfg = cfg.model_copy(update={"web": cfg.web.model_copy(update=given)})
    secrets = _secrets(config)
    setup_logging(EnvSettings().log_level or cfg.log_level, lambda: secrets.handed_out)
    if not cfg.bots:
        raise _fail("the config has no [[bots]]; add one (see README.md)")
    try:
        host = build_host(cfg, secrets)
        if web or (web is None and cfg.web.enabled):
            from bots.web import web_service

            web_service(host, cfg, secrets)
        elif any(a.platform == "openai" for bot in host.bots.values() for a in bot.adapters):
            raise ConfigError("an openai channel needs the web app: [web] enabled = true, or bots serve")
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    for bot in host.bots.values():
        for adapter in bot.adapters:
            if isinstance(adapter, ConsoleAdapter):
                adapter.on_exit = host.request_stop  # end of terminal input stops the host

    async def serve() -> None:
        async with loop_lag_from_env():  # BOTS_LOOP_LAG_LOG=path: event-loop lag for benchmarks
            await host.serve_forever(settle_gc=True)  # the process is the host's: tune its GC

    try:
        asyncio.run(serve())
    except (ConfigError, ConnectionError) as exc:  # a rejected token, an unreachable platform
        raise _fail(str(exc)) from None


# -- api-key -------------------------------------------------------------------------------------
def _api_keys(config: Path | None, action: Any) -> Any:
    from bots.adapters.openai_compat import ApiKeys
    from bots.core.storage import Database

    cfg = _load(config, required=False)

    async def go() -> Any:
        db = Database.for_config(cfg, _secrets(config))
        await db.start()
        try:
            return await action(ApiKeys(db))
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except ValueError as exc:
        raise _fail(str(exc)) from None


@api_key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Argument(help="The client's name (letters, digits, . _ -)")],
    config: ConfigOption = None,
) -> None:
    """Make a key for a client (replacing its old one); the key is printed once, only its hash is kept."""
    key = _api_keys(config, lambda keys: keys.create(name))
    print(key)
    err.print(f"key for {name}: shown once, stored as a SHA-256 hash; a running host accepts it within 5 s")


@api_key_app.command("list")
def api_key_list(config: ConfigOption = None) -> None:
    """The clients that have a key (never the keys)."""
    table = Table("client", "created (UTC)")
    for name, created in _api_keys(config, lambda keys: keys.names()):
        table.add_row(name, created[:19].replace("T", " "))
    out.print(table)


@api_key_app.command("revoke")
def api_key_revoke(name: str, config: ConfigOption = None) -> None:
    """Remove a client's key; a running host refuses it within 5 s."""
    if not _api_keys(config, lambda keys: keys.revoke(name)):
        raise _fail(f"no key named {name!r} (see `bots api-key list`)")
    out.print(f"{name}: key revoked")


# -- gateway / worker (the split over Redis Streams; README "Growing past one machine") -----------
@app.command()
def gateway(
    config: ConfigOption = None,
    bot: Annotated[
        list[str] | None, typer.Option("--bot", help="Hold this bot's channels (repeat) [default: every bot]")
    ] = None,
    name: Annotated[str | None, typer.Option(help="This gateway's name [default: gateway-HOST-PID]")] = None,
) -> None:
    """Hold the platform connections: record each message, publish it for the workers, send
    what they hand back."""
    from redis.exceptions import RedisError

    from bots.scale.serve import serve_until_stopped
    from bots.scale_assembly import build_gateway

    cfg = _load(config)
    secrets = _secrets(config)
    setup_logging(EnvSettings().log_level or cfg.log_level, lambda: secrets.handed_out)
    try:
        service = build_gateway(cfg, secrets, bots=bot or (), name=name)
        asyncio.run(serve_until_stopped(service))
    except (ConfigError, ConnectionError, RuntimeError, RedisError) as exc:
        raise _fail(str(exc)) from None


@app.command()
def worker(
    config: ConfigOption = None,
    name: Annotated[str | None, typer.Option(help="This worker's name [default: worker-HOST-PID]")] = None,
    scheduler: Annotated[
        bool, typer.Option(help="Also run the scheduled posts (give this to one worker).")
    ] = False,
) -> None:
    """Run the bots' pipelines (agent, memory, outbox) for the messages the gateways publish."""
    from redis.exceptions import RedisError

    from bots.scale.serve import serve_until_stopped
    from bots.scale_assembly import build_worker

    cfg = _load(config)
    secrets = _secrets(config)
    setup_logging(EnvSettings().log_level or cfg.log_level, lambda: secrets.handed_out)
    if not cfg.bots:
        raise _fail("the config has no [[bots]]; add one (see README.md)")
    try:
        service = build_worker(cfg, secrets, name=name, scheduler=scheduler)
        asyncio.run(serve_until_stopped(service))
    except (ConfigError, ConnectionError, RuntimeError, RedisError) as exc:
        raise _fail(str(exc)) from None


# -- chat ----------------------------------------------------------------------------------------
@app.command()
def chat(
    persona: Annotated[str, typer.Option("--persona", "-p", help="Persona id (file name in personas_dir)")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Send one message, print the reply, exit.")
    ] = None,
    config: ConfigOption = None,
    provider: Annotated[str | None, typer.Option(help="Override llm.provider (local, openai, fake).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Override data_dir (memory lives here).")] = None,
    stream: Annotated[bool, typer.Option(help="Print the reply while it is generated.")] = True,
) -> None:
    """Chat with a persona in the terminal (interactive, or one message with --message)."""
    from bots.adapters.console import ConsoleAdapter
    from bots.agent.persona import PersonaLibrary
    from bots.assembly import build_host

    cfg = _load(config, required=False)
    secrets = _secrets(config)
    level = EnvSettings().log_level or "WARNING"  # keep the conversation readable
    setup_logging(level, lambda: secrets.handed_out)
    updates: dict = {"bots": [BotConfig(name=f"chat-{persona}", persona=persona)]}
    if provider:
        updates["llm"] = cfg.llm.model_copy(update={"provider": provider})
    if data_dir:
        updates["data_dir"] = data_dir.resolve()
    cfg = cfg.model_copy(update=updates)
    try:
        persona_obj = PersonaLibrary(cfg.personas_dir).get(persona)
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    one_shot = message is not None
    console = ConsoleAdapter(
        "console", speaker=persona_obj.name, interactive=not one_shot, stream=stream and not one_shot
    )
    try:
        host = build_host(
            cfg,
            secrets,
            personas={persona: persona_obj},
            adapters={f"chat-{persona}": [console]},
            scheduler=False,  # a terminal chat posts nothing on schedules
        )
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    async def main() -> None:
        if one_shot:
            async with host:
                await host.handle(f"chat-{persona}", console.make_event(message or ""), console)
            return
        console.on_exit = host.request_stop
        out.print(f"Chatting with [bold]{persona_obj.name}[/bold]. /help for commands, Ctrl-D to leave.")
        if persona_obj.greeting:
            out.print(f"{persona_obj.name}> {persona_obj.greeting}", markup=False, highlight=False)
        await host.serve_forever()

    asyncio.run(main())


# -- init ----------------------------------------------------------------------------------------
@app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Where to create the project")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Scaffold a config, a starter persona, a plugin example and .env.example into FOLDER."""
    scaffold = files("bots") / "scaffold"
    written = []
    for source, relative in _walk(scaffold):
        target = folder / relative
        if target.exists() and not force:
            err.print(f"skipped {target} (exists; --force overwrites)", highlight=False)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        written.append(target)
    for path in written:
        out.print(f"created {path}", highlight=False)
    where = shutil.which("bots") or str(Path(sys.executable).parent / "bots")  # the venv's, not on PATH
    out.print(
        f"Next: cd {folder} && cp .env.example .env (fill in tokens), then\n"
        f"  {where} doctor && {where} ingest && {where} chat --persona mentor",
        highlight=False,
        markup=False,
        soft_wrap=True,  # a command broken across lines does not paste
    )


def _walk(node, prefix: Path = Path()):
    for child in node.iterdir():
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _walk(child, prefix / child.name)
        else:
            yield child, prefix / child.name.replace("dot.", ".", 1)


# -- persona -------------------------------------------------------------------------------------
@persona_app.command("list")
def persona_list(config: ConfigOption = None) -> None:
    """List the personas in personas_dir."""
    from bots.agent.persona import PersonaLibrary

    cfg = _load(config, required=False)
    library = PersonaLibrary(cfg.personas_dir)
    table = Table("id", "name", "language", "group replies", "knowledge", "status")
    for persona_id in library.ids():
        try:
            p = library.get(persona_id)
            table.add_row(persona_id, p.name, p.language, p.group.reply, ", ".join(p.knowledge), "ok")
        except ConfigError as exc:
            table.add_row(persona_id, "", "", "", "", f"[red]{escape(str(exc).splitlines()[0])}[/red]")
    out.print(table)


@persona_app.command("show")
def persona_show(persona_id: str, config: ConfigOption = None) -> None:
    """Validate one persona and print it."""
    from bots.agent.persona import PersonaLibrary, dump_persona

    cfg = _load(config, required=False)
    try:
        persona = PersonaLibrary(cfg.personas_dir).get(persona_id)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    out.print(Syntax(dump_persona(persona), "yaml", word_wrap=True))


@persona_app.command("import")
def persona_import(
    card: Annotated[Path, typer.Argument(help="SillyTavern card (.json/.png) or ElizaOS character")],
    persona_id: Annotated[
        str | None, typer.Option("--id", help="Persona id [default: from the name]")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder [default: personas_dir]")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing persona file.")] = False,
    config: ConfigOption = None,
) -> None:
    """Convert a character card into a persona YAML file."""
    from bots.agent.cards import import_card
    from bots.agent.persona import PERSONA_ID, dump_persona

    try:
        persona = import_card(card)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    folder = out_dir or _load(config, required=False).personas_dir
    persona_id = persona_id or slug(persona.name)
    if not PERSONA_ID.match(persona_id):
        raise _fail(f"{persona_id!r} is not a persona id (a-z, 0-9, - and _); pass --id")
    target = folder / f"{persona_id}.yaml"
    if target.exists() and not force:
        raise _fail(f"{target} exists; pass --force to overwrite or --id to pick another id")
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_persona(persona), encoding="utf-8")
    out.print(f"imported {persona.name!r} -> {target} ({len(persona.examples)} example dialogues)")


def slug(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64]
    return text or "persona"


@persona_app.command("build")
def persona_build(
    persona_id: Annotated[str, typer.Argument(help="Persona id (the file name to write)")],
    source: Annotated[str, typer.Option("--from", help="Collection of the author's own texts")],
    contrast: Annotated[
        str | None, typer.Option(help="Collection of other authors on the same subjects (the reference)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The author's name [default: collection title]")] = None,
    exemplars: Annotated[int, typer.Option(min=1, max=40, help="How many style exemplars")] = 12,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder [default: personas_dir]")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing persona file.")] = False,
    config: ConfigOption = None,
) -> None:
    """Draft a persona from an author's texts: style profile, signature lines, exemplars."""
    from bots.agent.builder import author_name, build_persona, read_documents
    from bots.agent.persona import PERSONA_ID, dump_persona
    from bots.knowledge.collection import Collection

    if not PERSONA_ID.match(persona_id):
        raise _fail(f"{persona_id!r} is not a persona id (a-z, 0-9, - and _)")
    cfg = _load(config, required=False)
    target = (out_dir or cfg.personas_dir) / f"{persona_id}.yaml"
    if target.exists() and not force:
        raise _fail(f"{target} exists; pass --force to overwrite or pick another id")
    try:
        author = Collection(cfg.knowledge_dir, source)
        others = Collection(cfg.knowledge_dir, contrast) if contrast else None
        draft = build_persona(
            read_documents(author),
            collection=source,
            name=name or author_name(author),
            contrast=read_documents(others) if others else (),
            contrast_collection=contrast or "",
            exemplars=exemplars,
        )
    except (ConfigError, ValueError) as exc:
        raise _fail(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dump_persona(draft.persona), encoding="utf-8")
    p = draft.persona
    out.print(
        f"drafted {p.name!r} -> {target}: {draft.files} files, {draft.paragraphs} paragraphs, "
        f"language {p.language}, {len(p.style)} style rules, {len(p.answer_openings)} openings, "
        f"{len(p.answer_closings)} closings, {len(p.exemplars)} exemplars of {draft.candidates} candidates",
        highlight=False,
    )
    out.print(f"Edit it, then: bots ingest {source} && bots persona eval {persona_id} --questions FILE.jsonl")


@persona_app.command("eval")
def persona_eval(
    persona_id: Annotated[str, typer.Argument(help="Persona id")],
    questions: Annotated[Path, typer.Option(help='JSON Lines: {"q": ..., "source": ..., "lines": [a, b]}')],
    contrast: Annotated[
        str | None, typer.Option(help="Collection of other authors for the style classifier")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
    provider: Annotated[str | None, typer.Option(help="Override llm.provider (local, openai, fake).")] = None,
    config: ConfigOption = None,
) -> None:
    """Ask the persona's agent each question; score language, gate, grounding, citations, style."""
    import logging

    from bots.agent.persona import PersonaLibrary
    from bots.evaluation import (
        LEGEND,
        Report,
        add_style,
        agent_answers,
        load_questions,
        run,
        tables,
    )

    cfg = _load(config, required=False)
    secrets = _secrets(config)
    setup_logging(EnvSettings().log_level or "WARNING", lambda: secrets.handed_out)
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index it builds
    if provider:
        cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"provider": provider})})
    try:
        persona = PersonaLibrary(cfg.personas_dir).get(persona_id)
        asked = load_questions(questions)
    except (ConfigError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _require_indexed(cfg, secrets, persona.knowledge)

    def progress(result: Any) -> None:
        if not as_json:
            err.print(f"{result.question.id}: {result.mode}, {result.seconds:.1f}s", highlight=False)

    async def ask() -> list[Any]:
        async with agent_answers(cfg, secrets, persona_id, persona) as answer:
            frames = [*persona.answer_openings, *persona.answer_closings]
            return await run(asked, answer, exclude=frames, on_result=progress)

    try:
        report = Report(asyncio.run(ask()))
    except (ConfigError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    add_style(report, cfg, persona, contrast)
    if as_json:
        print(json.dumps(report.as_json(), ensure_ascii=False, indent=2))
        return
    for table in tables(report):
        out.print(table)
    out.print(LEGEND, highlight=False)
    for note in report.notes:
        out.print(note, highlight=False)


def _require_indexed(cfg: AppConfig, secrets: Secrets, collections: list[str]) -> None:
    if not collections:
        return
    from bots.knowledge.factory import build_knowledge

    kb = build_knowledge(cfg, secrets)
    for name in collections:
        try:
            indexed = kb.stats(name)["indexed"]
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        if not indexed:
            raise _fail(f"collection {name!r} is not indexed yet; run `bots ingest {name}` first")


# -- knowledge ---------------------------------------------------------------------------------
def _knowledge(config: Path | None):
    from bots.knowledge.factory import build_knowledge

    cfg = _load(config, required=False)
    return build_knowledge(cfg, _secrets(config))


@app.command()
def ingest(
    collections: Annotated[list[str] | None, typer.Argument(help="Collection names [default: all]")] = None,
    rebuild: Annotated[bool, typer.Option(help="Drop the index and build it again.")] = False,
    config: ConfigOption = None,
) -> None:
    """Index knowledge/<collection>/ (idempotent: unchanged files are not read again).

    Unreadable and empty files are skipped with a warning; the rest is indexed.

    Exit code: 0 when every readable file is indexed, even if some files were skipped (so a
    re-run with nothing new exits 0 too); 1 when a collection could not be indexed at all (bad
    config or collection.toml, index built with another model, the embedding model or service
    failing); the other collections are still indexed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bots.knowledge.store import KnowledgeError

    kb = _knowledge(config)
    names = collections or kb.names()
    if not names:
        raise _fail(f"no collections in {kb.root}")
    failed = False
    for name in names:
        try:
            files = len(kb.collection(name).files())
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[chunks]} chunks, {task.fields[rate]:.1f} chunks/s"),
                   TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(name, total=files, chunks=0, rate=0.0)
            started = time.perf_counter()

            def step(what: str, count: int, _task=task, _bar=bar, _started=started) -> None:
                if what == "files":
                    _bar.advance(_task, count)
                else:
                    done = _bar.tasks[0].fields["chunks"] + count
                    _bar.update(_task, chunks=done, rate=done / max(time.perf_counter() - _started, 1e-9))

            failure: str | None = None
            try:
                report = kb.ingest(name, rebuild=rebuild, progress=step)
            except KnowledgeError as exc:
                failure = str(exc)
            except Exception as exc:  # e.g. the embedding service unreachable: one line, not a traceback
                failure = f"collection {name!r} could not be indexed: {type(exc).__name__}: {exc}"
        if failure is not None:  # this collection failed (e.g. its model cannot load); the others still run
            failed = True
            err.print(f"[red]error:[/red] {escape(failure)}", highlight=False)
            continue
        out.print(
            f"[bold]{name}[/bold]: {len(report.added)} added, {len(report.changed)} changed, "
            f"{report.unchanged} unchanged, {len(report.removed)} removed, {_skipped(report.skipped)}; "
            f"{report.chunks_added} chunks indexed ({report.chunks_per_second:.1f}/s), "
            f"{report.chunks_removed} dropped, {report.boilerplate_lines} boilerplate lines; "
            f"{report.seconds:.1f}s",
            highlight=False,
        )
        for problem in report.errors:  # a warning, not a failure: the readable files are indexed
            err.print(f"[yellow]skipped[/yellow] {escape(problem)}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _skipped(skipped: dict[str, str], shown: int = 3) -> str:
    """The summary's part on skipped files, e.g. "2 skipped (a.pdf unreadable, b.txt empty)".

    Only the first few names: with hundreds of bad files the summary must stay readable.
    """
    if not skipped:
        return "0 skipped"
    names = [f"{source} {why}" for source, why in list(skipped.items())[:shown]]
    more = f", {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{len(skipped)} skipped ({', '.join(names)}{more})"


@app.command()
def search(
    collection: Annotated[str, typer.Argument(help="Collection name")],
    query: Annotated[str, typer.Argument(help="What to look for")],
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="How many hits")] = 5,
    method: Annotated[str, typer.Option(help="fused | keyword | dense")] = "fused",
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON")] = False,
    config: ConfigOption = None,
) -> None:
    """Search one collection; --json prints source, start_line, end_line, score, text."""
    from bots.knowledge.store import KnowledgeError

    if method not in ("fused", "keyword", "dense"):
        raise _fail("--method must be fused, keyword or dense")
    kb = _knowledge(config)
    if not (kb.root / collection).is_dir():  # `bots ingest NAME` would fail too: say what exists
        names = ", ".join(kb.names()) or "none"
        raise _fail(f"no collection {collection!r}: no folder {kb.root / collection} (collections: {names})")
    try:
        hits = kb.search([collection], query, k=k, method=method)  # type: ignore[arg-type]
    except (KnowledgeError, ConfigError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        rows = [
            {"source": h.source, "start_line": h.start_line, "end_line": h.end_line, "page": h.page,
             "score": round(h.score, 6), "text": h.text}
            for h in hits
        ]  # fmt: skip
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not hits:  # an empty screen reads as a hang or a crash
        out.print(f"nothing in {collection!r} matched {query!r} (--method {method})", highlight=False)
        return
    for rank, hit in enumerate(hits, 1):
        out.print(f"[bold]{rank}. {hit.title}[/bold] ({hit.location}) score {hit.score:.4f}", highlight=False)
        out.print(hit.text.strip(), markup=False, highlight=False)
        out.print()


@knowledge_app.command("list")
def knowledge_list(config: ConfigOption = None) -> None:
    """The collections under knowledge_dir and whether they are indexed."""
    kb = _knowledge(config)
    table = Table("collection", "title", "role", "files", "indexed chunks", "model")
    for name in kb.names():
        try:
            info = kb.stats(name)
        except ConfigError as exc:
            table.add_row(name, f"[red]{escape(str(exc))}[/red]", "", "", "", "")
            continue
        table.add_row(name, info["title"], info["role"], str(info["files"]),
                      str(info.get("chunks", "not indexed")), info.get("embedding_model") or "")  # fmt: skip
    out.print(table)


@knowledge_app.command("stats")
def knowledge_stats(collection: str, config: ConfigOption = None) -> None:
    """Details of one collection's index."""
    try:
        info = _knowledge(config).stats(collection)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    for key, value in info.items():
        out.print(f"{key}: {value}", highlight=False)


# -- embedding service ---------------------------------------------------------------------------
@app.command("embed-server")
def embed_server(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8088,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Model to serve: a sentence-transformers name or path, multilingual-e5-small or "
            "use-multilingual-v3; repeat to serve several (the request's model picks; the first is "
            "the default) [default: the bundled MiniLM]"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    api_key_env: Annotated[str, typer.Option(help="Env var holding the bearer token (unset: no auth)")] = (
        "BOTS_EMBED_API_KEY"
    ),
    max_batch: Annotated[
        int | None, typer.Option(help="Texts per encoded batch [default: 64 on CUDA, 4 on CPU]")
    ] = None,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch may wait to fill up")] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Texts waiting before 429")] = 4096,
    max_inputs: Annotated[int, typer.Option(help="Texts per request")] = 2048,
    max_chars: Annotated[int, typer.Option(help="Characters per text")] = 8192,
    oversize: Annotated[
        str, typer.Option(help="reject (413, as OpenAI does) | truncate texts over --max-chars")
    ] = "reject",
) -> None:
    """Serve OpenAI-compatible /v1/embeddings (micro-batched; CUDA fp16 when present)."""
    from bots.embedserver.server import serve
    from bots.knowledge.embeddings import EmbedderError, device_problem, model_problem

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise _fail("--device must be auto, cpu or cuda")
    if oversize not in ("truncate", "reject"):
        raise _fail("--oversize must be truncate or reject")
    # fail fast, before loading the model: a bad path or device is a one-line error, not a traceback
    if bad_device := device_problem(device):
        raise _fail(f"--{bad_device}")
    for name in model or []:
        if bad_model := model_problem(name):
            raise _fail(f"--model {bad_model}")
    secrets = Secrets([Path.cwd() / ".env"])
    setup_logging(EnvSettings().log_level or "INFO", lambda: secrets.handed_out)
    api_key = secrets.get(api_key_env)
    try:  # serve() loads the model before it listens: a name unknown offline fails here
        serve(
            host, port, model, device,
            api_key=api_key.get_secret_value() if api_key else None,
            max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
            max_inputs=max_inputs, max_chars=max_chars, oversize=oversize,
        )  # fmt: skip
    except EmbedderError as exc:
        raise _fail(str(exc)) from None


# -- database ----------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create or migrate the database (SQLite in data_dir, or database_url) to the newest schema.
    `bots run` does this at start too; run it alone before starting several hosts on a new version."""
    from sqlalchemy.exc import SQLAlchemyError

    from bots.core.migrations import current
    from bots.core.storage import Database, masked

    cfg = _load(config, required=False)
    try:
        db = Database.for_config(cfg, _secrets(config))
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    async def upgrade() -> str | None:
        try:
            await db.start()
            async with db.engine.connect() as conn:
                return await conn.run_sync(current)
        finally:
            await db.close()

    try:
        revision = asyncio.run(upgrade())
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise _fail(f"the database could not be migrated: {type(exc).__name__}: {exc}") from None
    out.print(f"{masked(db.url)}: at revision {revision} (the newest)")


# -- audit -------------------------------------------------------------------------------------
@app.command()
def audit(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many entries, newest first")] = 50,
    config: ConfigOption = None,
) -> None:
    """The audit log of admin commands (read-only)."""
    from bots.core.audit import AuditLog
    from bots.core.storage import Database

    cfg = _load(config, required=False)

    async def read() -> list:
        db = Database.for_config(cfg, _secrets(config))
        await db.start()
        try:
            return await AuditLog(db).recent(limit)
        finally:
            await db.close()

    table = Table("when (UTC)", "bot", "who", "where", "command", "arguments", "result")
    for e in asyncio.run(read()):
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.bot, e.actor, e.channel, e.command, e.args, e.result)
    out.print(table)


# -- jobs and review -----------------------------------------------------------------------------
# These change the database; a running host picks the change up within [scheduler] tick_seconds
# (it posts approved drafts and runs what is due). Each change is written to the audit log.
def _scheduling(config: Path | None, action: Any, audit: tuple[str, str] | None = None) -> Any:
    from bots.core.audit import AuditLog
    from bots.core.storage import Database
    from bots.scheduler.service import job_store

    cfg = _load(config, required=False)

    async def go() -> Any:
        db = Database.for_config(cfg, _secrets(config))
        try:
            async with job_store(db, [bot.name for bot in cfg.bots]) as scheduler:
                result = await action(db, scheduler)
            if audit is not None:
                command, args = audit
                await AuditLog(db).record(
                    bot="*", actor=f"cli:{_login()}", channel="cli", command=command, args=args, result="ok"
                )
            return result
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except (LookupError, ValueError) as exc:
        raise _fail(str(exc).strip("'\"")) from None


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return "unknown"


@jobs_app.command("list")
def jobs_list(config: ConfigOption = None) -> None:
    """Every scheduled job with its next run and the state of its last period."""
    from bots.scheduler.service import list_jobs

    cfg = _load(config, required=False)

    async def read(db: Any, scheduler: Any) -> list[tuple[Any, str]]:
        from bots.core.groupcommit import GroupCommit
        from bots.scheduler.ledger import Ledger

        ledger = Ledger(db, GroupCommit(db))
        rows = []
        for job in list_jobs(scheduler, [bot.name for bot in cfg.bots]):
            last = await ledger.recent(job.id, limit=1)
            rows.append((job, f"{last[0].period} {last[0].state}" if last else "-"))
        return rows

    table = Table("job", "function", "trigger", "next run (job's zone)", "last period")
    table.columns[0].no_wrap = table.columns[3].no_wrap = True
    for job, last in _scheduling(config, read):
        table.add_row(job.id, job.func, job.trigger, job.next_run_text, last)
    out.print(table)


def _job_action(name: str, job_id: str, config: Path | None) -> None:
    async def act(db: Any, scheduler: Any) -> None:
        from bots.scheduler.service import store_of

        job = scheduler.get_job(job_id, jobstore=store_of(job_id))  # None for another config's bot
        if job is None:
            raise LookupError(f"no job {job_id!r} (see `bots jobs list`)")
        if name == "run-now":
            if job.next_run_time is None:
                raise ValueError(f"{job_id} is paused; resume it first")
            scheduler.modify_job(job_id, jobstore=store_of(job_id), next_run_time=datetime.now(UTC))
        else:
            getattr(scheduler, f"{name}_job")(job_id, jobstore=store_of(job_id))

    _scheduling(config, act, audit=(f"jobs {name}", job_id))
    out.print(f"{job_id}: {name} done" + (" (the running host runs it shortly)" if name == "run-now" else ""))


@jobs_app.command("run-now")
def jobs_run_now(job_id: str, config: ConfigOption = None) -> None:
    """Make a job due now; the running host runs it at its next tick."""
    _job_action("run-now", job_id, config)


@jobs_app.command("pause")
def jobs_pause(job_id: str, config: ConfigOption = None) -> None:
    """Stop a job from running until it is resumed."""
    _job_action("pause", job_id, config)


@jobs_app.command("resume")
def jobs_resume(job_id: str, config: ConfigOption = None) -> None:
    """Resume a paused job from its next scheduled time."""
    _job_action("resume", job_id, config)


@jobs_app.command("remove")
def jobs_remove(job_id: str, config: ConfigOption = None) -> None:
    """Remove a job (a job from the config comes back at the next start: edit bots.toml)."""
    _job_action("remove", job_id, config)


@review_app.command("list")
def review_list(config: ConfigOption = None) -> None:
    """Drafts waiting for a decision (and approved ones not posted yet)."""
    from bots.scheduler.review import ReviewQueue

    async def read(db: Any, _scheduler: Any) -> list[Any]:
        return await ReviewQueue(db).pending()

    table = Table("draft", "job", "to", "state", "due (UTC)", "text")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for d in _scheduling(config, read):
        text = d.versions[d.chosen].replace("\n", " ")
        table.add_row(f"#{d.id}", d.job_id, d.target, d.state, f"{d.deadline:%Y-%m-%d %H:%M}", text[:80])
    out.print(table)


@review_app.command("approve")
def review_approve(
    draft_id: int,
    version: Annotated[int | None, typer.Option(help="The version to post (1-based); default: last")] = None,
    config: ConfigOption = None,
) -> None:
    """Approve a draft; the running host posts it at its next tick."""
    from bots.scheduler.review import ReviewQueue

    async def act(db: Any, _scheduler: Any) -> None:
        await ReviewQueue(db).decide(draft_id, "approved", f"cli:{_login()}", version)

    _scheduling(config, act, audit=("review approve", str(draft_id)))
    out.print(f"draft #{draft_id}: approved (the running host posts it shortly)")


@review_app.command("reject")
def review_reject(draft_id: int, config: ConfigOption = None) -> None:
    """Reject a draft: it is never posted."""
    from bots.scheduler.review import ReviewQueue

    async def act(db: Any, _scheduler: Any) -> None:
        from sqlalchemy import update

        from bots.core.storage import LedgerEntry

        draft = await ReviewQueue(db).decide(draft_id, "rejected", f"cli:{_login()}")
        async with db.session() as session, session.begin():
            await session.execute(
                update(LedgerEntry)
                .where(LedgerEntry.job_id == draft.job_id, LedgerEntry.period == draft.period)
                .values(state="rejected", detail=f"draft #{draft_id} rejected from the CLI")
            )

    _scheduling(config, act, audit=("review reject", str(draft_id)))
    out.print(f"draft #{draft_id}: rejected")


# -- web console -------------------------------------------------------------------------------
@app.command("console-link")
def console_link(
    operator: Annotated[
        str | None, typer.Option("--as", help="The operator's canonical id [default: the first owner]")
    ] = None,
    minutes: Annotated[int, typer.Option(min=1, max=24 * 60, help="How long the link works")] = 15,
    url: Annotated[str | None, typer.Option(help="The console's address [default: from [web]]")] = None,
    config: ConfigOption = None,
) -> None:
    """Print a one-time login link for the web console (it works once, within --minutes)."""
    from datetime import timedelta

    from bots.core.audit import AuditLog
    from bots.core.permissions import Permissions, Role
    from bots.core.storage import Database
    from bots.web.console.auth import LoginLinks

    cfg = _load(config, required=False)
    who = operator or next(iter(cfg.roles.owners), None)
    if not who or ":" not in who:
        raise _fail("name the operator with --as platform:id (no owner in [roles] to default to)")
    base = (url or f"http://{cfg.web.host}:{cfg.web.port}").rstrip("/")

    async def make() -> str:
        db = Database.for_config(cfg, _secrets(config))
        await db.start()
        try:
            roles = cfg.roles
            permissions = Permissions(roles.owners, roles.operators, roles.banned, cfg.identities)
            await permissions.load(db)
            role = permissions.role_of(who)
            if role < Role.OPERATOR:
                raise ValueError(f"{who} is a {role.name.lower()}; only operators and owners use the console")
            token = await LoginLinks(db).create(who, timedelta(minutes=minutes))
            await AuditLog(db).record(bot="*", actor=f"cli:{_login()}", channel="cli",
                                      command="console-link", args=who, result="ok")  # fmt: skip
            return token
        finally:
            await db.close()

    try:
        token = asyncio.run(make())
    except ValueError as exc:
        raise _fail(str(exc)) from None
    print(f"{base}/console/login?token={token}")
    err.print(f"for {who}; works once, for {minutes} minutes", highlight=False)


# -- doctor --------------------------------------------------------------------------------------
@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check config, personas, env vars, model files and the data dir; say how to fix problems."""
    from bots.doctor import run_checks

    path = _config_path(config)
    results = run_checks(path, _secrets(config))
    table = Table("", "check", "detail")
    marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}
    for result in results:
        table.add_row(marks[result.status], escape(result.name), escape(result.detail))
    out.print(table)
    failures = sum(r.status == "fail" for r in results)
    if failures:
        raise _fail(f"{failures} problem(s) to fix")
    out.print("[green]all good[/green]")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
