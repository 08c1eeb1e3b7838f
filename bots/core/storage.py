"""SQLite (or any SQLAlchemy async URL) storage shared by the host, the agent and plugins."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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


class PluginValue(Base):
    """Namespaced key/value storage for plugins."""

    __tablename__ = "plugin_values"
    namespace: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'bots.db'}"


class Database:
    """Owns the engine and the session factory; ``start`` creates missing tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Database:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(data_dir))

    async def start(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    @property
    def sync_url(self) -> URL:
        """The same database through its blocking driver (for a writer thread, APScheduler)."""
        url = make_url(self.url)
        return url.set(drivername=_SYNC_DRIVERS.get(url.drivername, url.get_backend_name()))

    def sync_engine(self) -> Engine:
        engine = create_engine(self.sync_url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    async def close(self) -> None:
        await self.engine.dispose()


_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
}


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints, fast commits
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
        async with self._db.session() as session, session.begin():
            await session.merge(PluginValue(namespace=self.namespace, key=key, value=value))

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
