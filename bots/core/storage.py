"""The state store shared by the host, the agent and plugins: SQLite (the embedded default) or
PostgreSQL, through a SQLAlchemy URL.

Every query here and in the modules that use it is dialect-neutral: inserts that ignore
duplicates and upserts use the dialect's own ``insert`` (:meth:`Database.insert`, chosen once per
engine), datetimes are stored and read in UTC (:func:`as_utc`), and text columns have the same
limits on both engines (longer values are cut or refused by the code that writes them). The
schema is made and kept current by the migrations in :mod:`bots.core.migrations` (alembic), run by
:meth:`Database.start`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    URL,
    DateTime,
    Engine,
    Index,
    String,
    Text,
    create_engine,
    delete,
    event,
    make_url,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.dml import Insert

from bots.core.config import AppConfig, ConfigError, Secrets

log = logging.getLogger("bots.storage")
DATABASE_URL_ENV = "BOTS_DATABASE_URL"  # a whole URL, password included (env or .env only)


def _now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """The same moment in UTC. Naive values are UTC already: SQLite hands ours back without a
    zone, and it stores wall-clock text, so every value written must be converted first."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    """The tables of the platform's database."""


class ChatTurn(Base):
    """One message of a conversation the bot took part in (its memory)."""

    __tablename__ = "chat_turns"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    bot: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "human" | "ai"
    author_id: Mapped[str] = mapped_column(String(255), default="")
    author_name: Mapped[str] = mapped_column(String(255), default="")
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    __table_args__ = (Index("ix_chat_turns_session", "bot", "session_id", "id"),)


class RoleGrant(Base):
    """A role given at run time by an owner (config roles stay in the config)."""

    __tablename__ = "role_grants"
    canonical_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    granted_by: Mapped[str] = mapped_column(String(255))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class IdentityLink(Base):
    """Platform ids that belong to one person."""

    __tablename__ = "identity_links"
    canonical_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    person: Mapped[str] = mapped_column(String(255))


class AuditEntry(Base):
    """One admin command: who, where, what (secrets redacted), result. Append-only."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    bot: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(255))
    channel: Mapped[str] = mapped_column(String(255))
    command: Mapped[str] = mapped_column(String(64))
    args: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[str] = mapped_column(String(255))


class LoggedMessage(Base):
    """A group message as it was said, kept for digests (DMs are never logged)."""

    __tablename__ = "chat_log"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    bot: Mapped[str] = mapped_column(String(64))
    chat: Mapped[str] = mapped_column(String(255))  # canonical chat id
    author: Mapped[str] = mapped_column(String(255))  # canonical author id
    author_name: Mapped[str] = mapped_column(String(255), default="")
    text: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    __table_args__ = (Index("ix_chat_log_chat", "bot", "chat", "at"),)


class InboxEntry(Base):
    """An accepted inbound message: recorded before it is processed, finished after."""

    __tablename__ = "inbox"
    bot: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)  # MessageEvent.id
    channel: Mapped[str] = mapped_column(String(64))  # the adapter's configured name
    payload: Mapped[Any] = mapped_column(JSON)  # the event, to replay it after a restart
    state: Mapped[str] = mapped_column(String(16), default="accepted")  # accepted|done|abandoned
    attempts: Mapped[int] = mapped_column(default=1)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    __table_args__ = (Index("ix_inbox_state", "bot", "state", "received_at"),)


class OutboxEntry(Base):
    """One part of an outgoing message, under an idempotency key; marked sent once delivered."""

    __tablename__ = "outbox"
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    part: Mapped[int] = mapped_column(primary_key=True)
    bot: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))  # the adapter's configured name
    target: Mapped[Any] = mapped_column(JSON)  # ChannelRef as a dict
    text: Mapped[str] = mapped_column(Text)
    reply_to: Mapped[str | None] = mapped_column(String(255), nullable=True)
    markup: Mapped[str] = mapped_column(String(16), default="plain")
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|failed
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    __table_args__ = (Index("ix_outbox_pending", "bot", "state", "created_at"),)


class LedgerEntry(Base):
    """One scheduled period of one job: claimed before anything is posted, so it posts once."""

    __tablename__ = "post_ledger"
    job_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    period: Mapped[str] = mapped_column(String(64), primary_key=True)  # the run time, UTC ISO
    bot: Mapped[str] = mapped_column(String(64))
    # claimed | posted | skipped | review | rejected | expired | missed | failed
    state: Mapped[str] = mapped_column(String(16), default="claimed")
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class ReviewDraft(Base):
    """A scheduled post waiting for an operator: approve, edit, regenerate or reject."""

    __tablename__ = "review_drafts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(255))
    period: Mapped[str] = mapped_column(String(64))
    bot: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))  # canonical chat id
    versions: Mapped[Any] = mapped_column(JSON)  # every text written or edited, in order
    chosen: Mapped[int] = mapped_column(default=0)  # the version that would be posted
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|approved|posted|...
    deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)

    __table_args__ = (Index("ix_review_state", "state", "deadline"),)


class QuotaUsage(Base):
    """What one user spent of a bot's daily quotas on one day (UTC)."""

    __tablename__ = "quota_usage"
    bot: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # ISO date
    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    messages: Mapped[int] = mapped_column(default=0)
    tokens: Mapped[int] = mapped_column(default=0)


KEY_CHARS = 255  # a plugin storage key's length (the column's limit on every engine)


class PluginValue(Base):
    """Namespaced key/value storage for plugins."""

    __tablename__ = "plugin_values"
    namespace: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_CHARS), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'bots.db'}"


def database_url(
    configured: str | None,
    data_dir: Path,
    secret: Callable[[str], str | None] = os.environ.get,
    password_env: str = "BOTS_DATABASE_PASSWORD",
) -> URL:
    """Where the state lives: ``$BOTS_DATABASE_URL`` (a secret: it may hold the password), else
    the config's ``database_url`` with the password from ``$<password_env>``, else SQLite in
    ``data_dir``. ``secret`` reads an env var (the config's Secrets, so the value is redacted)."""
    from_env = secret(DATABASE_URL_ENV)
    if from_env:
        return make_url(from_env)
    if configured:
        url = make_url(configured)
        password = secret(password_env)
        return url.set(password=password) if password else url
    data_dir.mkdir(parents=True, exist_ok=True)
    return make_url(sqlite_url(data_dir))


def masked(url: str | URL) -> str:
    """The URL to show in logs and messages: the password as ``***``."""
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """Owns the engine and the session factory; ``start`` brings the schema up to date."""

    def __init__(self, url: str | URL) -> None:
        self.url = make_url(url)  # str(self.url) hides the password; see sync_url
        self.dialect = self.url.get_dialect().name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"database {masked(self.url)}: the {self.dialect} database is not supported; "
                "use SQLite (sqlite+aiosqlite://) or PostgreSQL (postgresql+asyncpg://)"
            )
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            # every datetime in UTC on the wire, whatever the server's TimeZone
            options = {"pool_pre_ping": True, "connect_args": {"server_settings": {"timezone": "UTC"}}}
        try:
            self.engine: AsyncEngine = create_async_engine(self.url, json_serializer=to_json, **options)
        except ImportError as exc:
            raise ConfigError(
                f"database {masked(self.url)}: its driver is not installed ({exc.name}); for PostgreSQL "
                "install the postgres extra: pip install 'persona-bots[postgres]'"
            ) from None
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @classmethod
    def for_config(cls, config: AppConfig, secrets: Secrets | None = None) -> Database:
        """The database the config names (see :func:`database_url`); secrets from ``secrets``."""
        secrets = secrets or Secrets()

        def secret(name: str) -> str | None:
            value = secrets.get(name)
            return None if value is None else value.get_secret_value()

        url = database_url(config.database_url, config.data_dir, secret, config.database_password_env)
        if url.password:
            secrets.handed_out.add(str(url.password))  # redacted from the logs like any secret
        return cls(url)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Database:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(data_dir))

    def __repr__(self) -> str:
        return f"Database({masked(self.url)!r})"

    def insert(self, table: Any) -> Insert:
        """The dialect's ``INSERT`` (with ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
        return (sqlite if self.dialect == "sqlite" else postgresql).insert(table)

    async def upsert(self, table: Any, row: dict[str, Any], keys: list[str]) -> None:
        """Insert ``row``, or update the row with its ``keys`` to the other values: one statement,
        so two hosts writing the same row at once never collide."""
        statement = self.insert(table)
        changed = {name: statement.excluded[name] for name in row if name not in keys}
        upsert = statement.values(row).on_conflict_do_update(index_elements=keys, set_=changed)
        async with self.session() as session, session.begin():
            await session.execute(upsert)

    async def start(self) -> None:
        """Create the schema or migrate it to the newest revision (``bots db upgrade`` does the same)."""
        from bots.core.migrations import upgrade

        log.info("database: %s", masked(self.url))
        async with self.engine.begin() as conn:
            await conn.run_sync(upgrade)

    @property
    def sync_url(self) -> URL:
        """The same database through its blocking driver (for a writer thread, APScheduler)."""
        url = self.url
        return url.set(drivername=_SYNC_DRIVERS.get(url.drivername, url.get_backend_name()))

    def sync_engine(self) -> Engine:
        if self.dialect == "postgresql":
            utc = {"options": "-c timezone=UTC"}
            engine = create_engine(
                self.sync_url, pool_pre_ping=True, connect_args=utc, json_serializer=to_json
            )
        else:
            engine = create_engine(self.sync_url, json_serializer=to_json)
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    async def close(self) -> None:
        await self.engine.dispose()


_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
}


# SQLite checkpoints the WAL itself once it holds this many pages, in whichever commit crosses
# the mark (an fsync, 5 to 25 ms on a busy disk). The group commit's writer checkpoints whenever
# writes pause (see GroupCommit), so this is only the backstop for writes that never pause:
# the WAL stays under about 40 MB and a checkpoint lands on a commit once per ~10,000 pages.
WAL_AUTOCHECKPOINT_PAGES = 10_000


def to_json(value: Any) -> str:
    """JSON columns' text: orjson (every message's stored event, ~2 us against json's ~12 us, on
    the group-commit writer's share of the GIL), or json where orjson refuses what json takes
    (integers beyond 64 bits, lone surrogates). Read back with json either way; NaN is stored as
    null (json wrote NaN, which JSON does not have)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    # a commit is durable against a crash of the process (the WAL is written before the commit
    # returns); only the OS crashing or power loss can take the last commits (fsync at checkpoints)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class KeyValueStore:
    """JSON values under one namespace (a plugin gets ``<bot>/<plugin>``)."""

    def __init__(self, db: Database, namespace: str) -> None:
        self._db = db
        self.namespace = namespace

    async def get(self, key: str, default: Any = None) -> Any:
        async with self._db.session() as session:
            row = await session.get(PluginValue, (self.namespace, key))
            return default if row is None else row.value

    async def set(self, key: str, value: Any) -> None:
        json.dumps(value)  # fail here, with the caller's key in the traceback, not at commit
        if len(key) > KEY_CHARS:
            raise ValueError(f"plugin storage keys are at most {KEY_CHARS} characters; got {len(key)}")
        row = {"namespace": self.namespace, "key": key, "value": value, "updated_at": _now()}
        await self._db.upsert(PluginValue.__table__, row, ["namespace", "key"])

    async def delete(self, key: str) -> None:
        async with self._db.session() as session, session.begin():
            await session.execute(
                delete(PluginValue).where(PluginValue.namespace == self.namespace, PluginValue.key == key)
            )

    async def keys(self) -> list[str]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(PluginValue.key).where(PluginValue.namespace == self.namespace)
            )
            return sorted(rows)
