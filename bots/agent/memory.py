"""Conversation memory per session, persisted through SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from bots.core.storage import ChatTurn, Database


@dataclass(frozen=True, slots=True)
class Turn:
    role: str  # "human" | "ai"
    content: str
    author_name: str = ""


class ConversationMemory:
    def __init__(self, db: Database, bot: str) -> None:
        self._db = db
        self._bot = bot

    async def recent(self, session_id: str, limit: int = 40) -> list[Turn]:
        """The last ``limit`` turns of the session, oldest first."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(ChatTurn)
                .where(ChatTurn.bot == self._bot, ChatTurn.session_id == session_id)
                .order_by(ChatTurn.id.desc())
                .limit(limit)
            )
            return [Turn(r.role, r.content, r.author_name) for r in reversed(rows.all())]

    async def add_exchange(
        self, session_id: str, author_id: str, author_name: str, question: str, answer: str
    ) -> None:
        async with self._db.session() as session, session.begin():
            session.add_all(
                [
                    ChatTurn(
                        bot=self._bot, session_id=session_id, role="human",
                        author_id=author_id, author_name=author_name, content=question,
                    ),
                    ChatTurn(bot=self._bot, session_id=session_id, role="ai", content=answer),
                ]
            )  # fmt: skip
