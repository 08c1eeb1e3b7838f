"""Roles per canonical id. Display names never grant anything."""

from __future__ import annotations

from enum import IntEnum

NOT_ALLOWED = "Sorry, that command is for operators only."


class Role(IntEnum):
    BANNED = 0
    MEMBER = 1
    OPERATOR = 2
    OWNER = 3


class Permissions:
    def __init__(
        self,
        owners: list[str] = (),
        operators: list[str] = (),
        banned: list[str] = (),  # type: ignore[assignment]
    ) -> None:
        self._roles: dict[str, Role] = {}
        for ids, role in ((banned, Role.BANNED), (operators, Role.OPERATOR), (owners, Role.OWNER)):
            for canonical in ids:
                self._roles[canonical] = role

    def role_of(self, canonical_id: str) -> Role:
        return self._roles.get(canonical_id, Role.MEMBER)
