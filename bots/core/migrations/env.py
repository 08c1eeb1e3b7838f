"""The alembic environment: migrates the connection it is handed (the host, `bots db upgrade`),
or, from the alembic command line, the database in ``sqlalchemy.url``."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from bots.core.storage import Base

config = context.config


def _ours(_obj: Any, name: str | None, kind: str, _reflected: bool, _compare_to: Any) -> bool:
    """APScheduler's job tables (scheduled_jobs_<bot>) are its own, not in our revisions."""
    return not (kind == "table" and name is not None and name.startswith("scheduled_jobs_"))


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_object=_ours,
        render_as_batch=True,  # SQLite alters a table by copying it
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
