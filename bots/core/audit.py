"""The audit log: every admin command, who, where, what (secrets redacted) and the result.

Append-only: nothing in chat can edit or delete entries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from sqlalchemy import func, select

from bots.core.storage import AuditEntry, Database

# Things that look like credentials even when the process never read them as secrets.
_CREDENTIALS = re.compile(
    r"\b\d{6,12}:[A-Za-z0-9_-]{30,}\b"  # Telegram bot tokens
    r"|\bsk-[A-Za-z0-9_-]{16,}\b"  # OpenAI-style keys
    r"|\b[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,}\b"  # Discord bot tokens
    r"|(?i:\b(?:token|key|secret|password|passwd)\s*[=:]\s*\S+)"
)


class AuditLog:
    def __init__(self, db: Database, secrets: Callable[[], Iterable[str]] = tuple) -> None:
        self._db = db
        self._secrets = secrets

    def redact(self, text: str) -> str:
        for secret in self._secrets():
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return _CREDENTIALS.sub("***", text)

    async def record(
        self, *, bot: str, actor: str, channel: str, command: str, args: str, result: str
    ) -> None:
        entry = AuditEntry(  # cut to the columns' sizes: the same on every engine
            bot=bot[:64],
            actor=actor[:255],
            channel=channel[:255],
            command=command[:64],
            args=self.redact(args)[:2000],
            result=self.redact(result)[:255],
        )
        async with self._db.session() as session, session.begin():
            session.add(entry)

    async def recent(self, limit: int = 20) -> list[AuditEntry]:
        async with self._db.session() as session:
            rows = await session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
            return list(rows)

    async def search(
        self,
        *,
        actor: str = "",
        command: str = "",
        bot: str = "",
        result: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[AuditEntry], int]:
        """One page of entries, newest first, and how many match: each filter is a substring
        (case-insensitive) of its field; empty filters match everything."""
        filters = [
            column.icontains(value, autoescape=True)
            for column, value in (
                (AuditEntry.actor, actor),
                (AuditEntry.command, command),
                (AuditEntry.bot, bot),
                (AuditEntry.result, result),
            )
            if value
        ]
        async with self._db.session() as session:
            total = await session.scalar(select(func.count(AuditEntry.id)).where(*filters))
            rows = await session.scalars(
                select(AuditEntry).where(*filters).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
            )
            return list(rows), int(total or 0)
