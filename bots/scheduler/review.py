"""The review queue: drafts of scheduled posts that operators approve, edit, regenerate or reject.

Only an approved draft is posted; one still pending at its deadline expires and is not posted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

from bots.core.storage import Database, ReviewDraft, as_utc


class ReviewError(ValueError):
    """An operator's request that cannot be done (unknown draft, already decided, too late)."""


class ReviewQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, *, job_id: str, period: str, bot: str, target: str, text: str, deadline: datetime
    ) -> ReviewDraft:
        draft = ReviewDraft(
            job_id=job_id, period=period, bot=bot, target=target, versions=[text], deadline=as_utc(deadline)
        )
        async with self._db.session() as session, session.begin():
            session.add(draft)
        return draft

    async def get(self, draft_id: int) -> ReviewDraft:
        async with self._db.session() as session:
            draft = await session.get(ReviewDraft, draft_id)
        if draft is None:
            raise ReviewError(f"no draft #{draft_id}")
        return draft

    async def pending(self, bot: str | None = None) -> list[ReviewDraft]:
        query = select(ReviewDraft).where(ReviewDraft.state.in_(("pending", "approved")))
        if bot is not None:
            query = query.where(ReviewDraft.bot == bot)
        async with self._db.session() as session:
            return list(await session.scalars(query.order_by(ReviewDraft.id)))

    async def open_draft(self, draft_id: int, now: datetime | None = None) -> ReviewDraft:
        """The draft, if it can still be decided on; a late one is expired on the spot."""
        draft = await self.get(draft_id)
        if draft.state != "pending":
            raise ReviewError(f"draft #{draft_id} is {draft.state}")
        if as_utc(draft.deadline) <= (now or datetime.now(UTC)):
            await self.transition(draft_id, "pending", "expired")
            raise ReviewError(f"draft #{draft_id} missed its deadline; it will not be posted")
        return draft

    async def add_version(self, draft_id: int, text: str, by: str) -> ReviewDraft:
        draft = await self.open_draft(draft_id)
        versions = [*draft.versions, text]
        async with self._db.session() as session, session.begin():
            await session.execute(
                update(ReviewDraft)
                .where(ReviewDraft.id == draft_id)
                .values(versions=versions, chosen=len(versions) - 1, decided_by=by)
            )
        return await self.get(draft_id)

    async def decide(self, draft_id: int, state: str, by: str, version: int | None = None) -> ReviewDraft:
        """Approve or reject a pending draft (``version``: which text, 1-based; default the last)."""
        draft = await self.open_draft(draft_id)
        chosen = draft.chosen if version is None else version - 1
        if not 0 <= chosen < len(draft.versions):
            raise ReviewError(f"draft #{draft_id} has versions 1-{len(draft.versions)}")
        if not await self.transition(draft_id, "pending", state, chosen=chosen, decided_by=by):
            raise ReviewError(f"draft #{draft_id} was decided meanwhile ({(await self.get(draft_id)).state})")
        return await self.get(draft_id)

    async def transition(self, draft_id: int, before: str, after: str, **values: object) -> bool:
        """Move a draft from one state to another, atomically: False when it was not in ``before``
        (someone else moved it first)."""
        async with self._db.session() as session, session.begin():
            result = await session.execute(
                update(ReviewDraft)
                .where(ReviewDraft.id == draft_id, ReviewDraft.state == before)
                .values(state=after, **values)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def overdue(self, now: datetime | None = None) -> list[ReviewDraft]:
        """Pending drafts past their deadline."""
        moment = now or datetime.now(UTC)
        async with self._db.session() as session:
            rows = await session.scalars(select(ReviewDraft).where(ReviewDraft.state == "pending"))
            return [row for row in rows if as_utc(row.deadline) <= moment]

    async def approved(self) -> list[ReviewDraft]:
        """Approved drafts not posted yet (approved from the CLI, or a post that failed)."""
        async with self._db.session() as session:
            return list(await session.scalars(select(ReviewDraft).where(ReviewDraft.state == "approved")))
