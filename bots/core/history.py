"""Group history: every group message a bot sees, kept for digests for a limited time.

Written behind the pipeline's back through the group commit (a message never waits for it);
DMs are never logged. Each bot reads only its own log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select

from bots.core.events import ChannelKind, MessageEvent
from bots.core.groupcommit import GroupCommit
from bots.core.storage import Database, LoggedMessage, as_utc


class History:
    def __init__(self, db: Database, writes: GroupCommit, *, keep: timedelta = timedelta(days=14)) -> None:
        self._db = db
        self._writes = writes
        self._insert = writes.prepare(insert(LoggedMessage.__table__))
        self.keep = keep

    def record(self, bot: str, event: MessageEvent, text: str) -> None:
        """Log a group message (``text``: as cleaned on arrival). DMs are skipped."""
        if event.channel.kind is ChannelKind.DM:
            return
        row = {
            "bot": bot,
            "chat": event.channel.canonical,
            "author": event.author.canonical,
            "author_name": event.author.display[:255],
            "text": text,
            "message_id": event.message_id,
            "at": as_utc(event.timestamp),
        }
        self._writes.write_behind(self._insert, row, f"event {event.id}: logging it")

    async def between(self, bot: str, chat: str, since: datetime, until: datetime) -> list[LoggedMessage]:
        """Messages of ``chat`` in [since, until), oldest first."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(LoggedMessage)
                .where(
                    LoggedMessage.bot == bot,
                    LoggedMessage.chat == chat,
                    LoggedMessage.at >= as_utc(since),
                    LoggedMessage.at < as_utc(until),
                )
                .order_by(LoggedMessage.at, LoggedMessage.id)
            )
            return list(rows)

    async def prune(self) -> int:
        cutoff = datetime.now(UTC) - self.keep
        async with self._db.session() as session, session.begin():
            result = await session.execute(delete(LoggedMessage).where(LoggedMessage.at < cutoff))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
