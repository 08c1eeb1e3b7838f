"""The schema as it stood before migrations.

A database made then (by ``create_all``) already holds some or all of these tables, with data:
only what is missing is created, so this revision adopts such a database as it is.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _tables() -> dict[str, list[sa.SchemaItem]]:
    when = sa.DateTime(timezone=True)
    return {
        "audit_log": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("at", when, nullable=False),
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("actor", sa.String(255), nullable=False),
            sa.Column("channel", sa.String(255), nullable=False),
            sa.Column("command", sa.String(64), nullable=False),
            sa.Column("args", sa.Text(), nullable=False),
            sa.Column("result", sa.String(255), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ],
        "chat_log": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("chat", sa.String(255), nullable=False),
            sa.Column("author", sa.String(255), nullable=False),
            sa.Column("author_name", sa.String(255), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("message_id", sa.String(255), nullable=False),
            sa.Column("at", when, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ],
        "chat_turns": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("session_id", sa.String(255), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("author_id", sa.String(255), nullable=False),
            sa.Column("author_name", sa.String(255), nullable=False),
            sa.Column("content", sa.Text(), nullable=False),
            sa.Column("created_at", when, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ],
        "identity_links": [
            sa.Column("canonical_id", sa.String(255), nullable=False),
            sa.Column("person", sa.String(255), nullable=False),
            sa.PrimaryKeyConstraint("canonical_id"),
        ],
        "inbox": [
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("event_id", sa.String(255), nullable=False),
            sa.Column("channel", sa.String(64), nullable=False),
            sa.Column("payload", sa.JSON(), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("received_at", when, nullable=False),
            sa.PrimaryKeyConstraint("bot", "event_id"),
        ],
        "outbox": [
            sa.Column("key", sa.String(512), nullable=False),
            sa.Column("part", sa.Integer(), nullable=False),
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("channel", sa.String(64), nullable=False),
            sa.Column("target", sa.JSON(), nullable=False),
            sa.Column("text", sa.Text(), nullable=False),
            sa.Column("reply_to", sa.String(255), nullable=True),
            sa.Column("markup", sa.String(16), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("message_id", sa.String(255), nullable=True),
            sa.Column("created_at", when, nullable=False),
            sa.PrimaryKeyConstraint("key", "part"),
        ],
        "plugin_values": [
            sa.Column("namespace", sa.String(128), nullable=False),
            sa.Column("key", sa.String(255), nullable=False),
            sa.Column("value", sa.JSON(), nullable=False),
            sa.Column("updated_at", when, nullable=False),
            sa.PrimaryKeyConstraint("namespace", "key"),
        ],
        "post_ledger": [
            sa.Column("job_id", sa.String(255), nullable=False),
            sa.Column("period", sa.String(64), nullable=False),
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("detail", sa.Text(), nullable=False),
            sa.Column("updated_at", when, nullable=False),
            sa.PrimaryKeyConstraint("job_id", "period"),
        ],
        "quota_usage": [
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("day", sa.String(10), nullable=False),
            sa.Column("user", sa.String(255), nullable=False),
            sa.Column("messages", sa.Integer(), nullable=False),
            sa.Column("tokens", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("bot", "day", "user"),
        ],
        "review_drafts": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("job_id", sa.String(255), nullable=False),
            sa.Column("period", sa.String(64), nullable=False),
            sa.Column("bot", sa.String(64), nullable=False),
            sa.Column("target", sa.String(255), nullable=False),
            sa.Column("versions", sa.JSON(), nullable=False),
            sa.Column("chosen", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("deadline", when, nullable=False),
            sa.Column("decided_by", sa.String(255), nullable=False),
            sa.Column("created_at", when, nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ],
        "role_grants": [
            sa.Column("canonical_id", sa.String(255), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("granted_by", sa.String(255), nullable=False),
            sa.Column("granted_at", when, nullable=False),
            sa.PrimaryKeyConstraint("canonical_id"),
        ],
    }


INDEXES = {  # name: (table, columns)
    "ix_chat_log_chat": ("chat_log", ["bot", "chat", "at"]),
    "ix_chat_turns_session": ("chat_turns", ["bot", "session_id", "id"]),
    "ix_inbox_state": ("inbox", ["bot", "state", "received_at"]),
    "ix_outbox_pending": ("outbox", ["bot", "state", "created_at"]),
    "ix_review_state": ("review_drafts", ["state", "deadline"]),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, items in _tables().items():
        if name not in existing:
            op.create_table(name, *items)
    for name, (table, columns) in INDEXES.items():
        if table in existing and name in {ix["name"] for ix in inspector.get_indexes(table)}:
            continue
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _columns) in INDEXES.items():
        op.drop_index(name, table_name=table)
    for name in reversed(list(_tables())):
        op.drop_table(name)
