"""Schema migrations (alembic), for SQLite and PostgreSQL alike.

:func:`upgrade` brings a database to the newest revision; :meth:`Database.start` and `bots db
upgrade` run it. A database made before migrations existed (by ``create_all``) needs no stamping:
the first revision creates only the tables and indexes that are missing, so it adopts such a
database with its data. On PostgreSQL the upgrade holds an advisory lock, so hosts that start
together on one database migrate it once. A new revision: ``alembic -c bots/core/migrations/alembic.ini
revision --autogenerate -m "what changed"`` against a database at head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

HERE = Path(__file__).resolve().parent
_LOCK = 0x626F7473_6D696772  # pg_advisory_xact_lock key: "botsmigr"
TABLES_LOCK = 0x626F7473_7461626C  # schema_lock's key: "botstabl"


def alembic_config(connection: Connection | None = None) -> Config:
    """The alembic configuration of the installed package (``connection``: migrate that one)."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision."""
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def current(connection: Connection) -> str | None:
    """The revision the database is at (None: no schema of ours yet)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> None:
    """Migrate the database behind ``connection`` (in its transaction) to the newest revision."""
    if connection.dialect.name == "postgresql":  # one host migrates; the others then find it done
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
    if current(connection) == head():
        return  # the usual start: nothing to load or run
    command.upgrade(alembic_config(connection), "head")


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hold a lock (PostgreSQL; nothing elsewhere) while tables outside the migrations are
    made, such as APScheduler's job stores: hosts that start together on a new database then
    create them one after the other instead of colliding."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": TABLES_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TABLES_LOCK})
            conn.commit()
