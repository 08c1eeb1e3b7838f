"""Roles per canonical id, identities that link several platform ids to one person, and the
runtime grants owners make. Display names never grant anything."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum

from sqlalchemy import delete, select

from bots.core.storage import Database, IdentityLink, RoleGrant

NOT_ALLOWED = "Sorry, that command is for operators only."


class Role(IntEnum):
    BANNED = 0
    MEMBER = 1
    OPERATOR = 2
    OWNER = 3


class Permissions:
    def __init__(
        self,
        owners: list[str] = (),  # type: ignore[assignment]
        operators: list[str] = (),  # type: ignore[assignment]
        banned: list[str] = (),  # type: ignore[assignment]
        identities: dict[str, list[str]] | None = None,
    ) -> None:
        self._configured: dict[str, Role] = {}
        for ids, role in ((banned, Role.BANNED), (operators, Role.OPERATOR), (owners, Role.OWNER)):
            for canonical in ids:
                self._configured[canonical] = role
        self._granted: dict[str, Role] = {}
        self._person: dict[str, str] = {}  # id -> person
        self._ids: dict[str, set[str]] = {}  # person -> ids
        for person, ids in (identities or {}).items():
            for canonical in ids:
                self._remember_link(canonical, person)
        self._db: Database | None = None

    # -- identities ----------------------------------------------------------------------------
    def person_of(self, canonical_id: str) -> str:
        """The person an id belongs to: a linked name, or the id itself."""
        return self._person.get(canonical_id, canonical_id)

    def ids_of(self, canonical_id: str) -> list[str]:
        """Every id of the same person (the id itself when it is linked to no one)."""
        return sorted(self._ids.get(self.person_of(canonical_id), ())) or [canonical_id]

    def _remember_link(self, canonical_id: str, person: str) -> None:
        previous = self._person.get(canonical_id)
        if previous is not None:
            self._ids[previous].discard(canonical_id)
        self._person[canonical_id] = person
        self._ids.setdefault(person, set()).add(canonical_id)

    # -- roles ---------------------------------------------------------------------------------
    def role_of(self, canonical_id: str) -> Role:
        """A person's role: banned if any of their ids is banned, else the highest of them."""
        if canonical_id not in self._person and canonical_id not in self._ids:  # linked to no one
            role = self._granted.get(canonical_id, self._configured.get(canonical_id))
            return Role.MEMBER if role is None else role
        roles = []
        for i in self.ids_of(canonical_id):
            role = self._granted.get(i, self._configured.get(i))
            if role is not None:
                roles.append(role)
        if Role.BANNED in roles:
            return Role.BANNED
        return max(roles, default=Role.MEMBER)

    def configured(self) -> dict[str, Role]:
        """The roles ``[roles]`` gives, by id."""
        return dict(self._configured)

    def grants(self) -> dict[str, Role]:
        """The roles owners gave at run time, by id (they win over the config's)."""
        return dict(self._granted)

    def people(self) -> dict[str, list[str]]:
        """Each linked person's ids."""
        return {person: sorted(ids) for person, ids in self._ids.items() if ids}

    # -- persistence of what owners change at run time -----------------------------------------
    async def load(self, db: Database) -> None:
        self._db = db
        async with db.session() as session:
            for grant in await session.scalars(select(RoleGrant)):
                self._granted[grant.canonical_id] = Role[grant.role.upper()]
            for link in await session.scalars(select(IdentityLink)):
                self._remember_link(link.canonical_id, link.person)

    async def grant(self, canonical_id: str, role: Role, by: str) -> None:
        self._granted[canonical_id] = role
        if self._db is not None:
            row = {"canonical_id": canonical_id, "role": role.name.lower(), "granted_by": by}
            await self._db.upsert(
                RoleGrant.__table__, row | {"granted_at": datetime.now(UTC)}, ["canonical_id"]
            )

    async def revoke(self, canonical_id: str) -> None:
        """Drop a runtime grant; what the config says stays."""
        self._granted.pop(canonical_id, None)
        if self._db is not None:
            async with self._db.session() as session, session.begin():
                await session.execute(delete(RoleGrant).where(RoleGrant.canonical_id == canonical_id))

    async def link(self, canonical_id: str, person: str) -> None:
        self._remember_link(canonical_id, person)
        if self._db is not None:
            row = {"canonical_id": canonical_id, "person": person}
            await self._db.upsert(IdentityLink.__table__, row, ["canonical_id"])
