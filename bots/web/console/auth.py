"""Who is at the console: one-time login links, server-side sessions and their CSRF tokens.

A login link carries a random token; only its SHA-256 is stored (``plugin_values``, namespace
``console/login``) with the operator's canonical id and an expiry. Using it deletes it, so it
works once. A session is a random id in an HttpOnly, SameSite=Strict cookie (Secure over https);
the database keeps its hash, the operator's id, the expiry and the session's CSRF token. Roles
are never stored with the session: each request asks the host's permissions, so a revoked
operator is refused at the next click.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from bots.core.storage import Database, KeyValueStore, PluginValue

LOGIN_NAMESPACE = "console/login"
SESSION_NAMESPACE = "console/sessions"
LOGIN_TTL = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=12)
COOKIE = "bots_console"
LOGIN_COOKIE = "bots_console_login"  # the login form's CSRF token, before there is a session


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _expired(value: dict, now: datetime) -> bool:
    return datetime.fromisoformat(value["expires"]) <= now


@dataclass(frozen=True)
class Session:
    operator: str  # canonical id ("telegram:123", "console:local")
    csrf: str
    expires: datetime

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(sent.encode(), self.csrf.encode())


class LoginLinks:
    """One-time login tokens, stored hashed with an expiry."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._store = KeyValueStore(db, LOGIN_NAMESPACE)

    async def create(self, operator: str, ttl: timedelta = LOGIN_TTL) -> str:
        """A fresh token for ``operator`` (shown once; only its hash is kept)."""
        await _prune(self._db, LOGIN_NAMESPACE)
        token = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + ttl
        await self._store.set(_digest(token), {"operator": operator, "expires": expires.isoformat()})
        return token

    async def consume(self, token: str) -> str | None:
        """The operator the token was made for, once; None for an unknown, used or expired one."""
        if not token or len(token) > 200:
            return None
        value = await _take(self._db, LOGIN_NAMESPACE, _digest(token))
        if value is None or _expired(value, datetime.now(UTC)):
            return None
        return str(value["operator"])


class Sessions:
    """Console sessions, by the hash of the id in the cookie."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._store = KeyValueStore(db, SESSION_NAMESPACE)

    async def open(self, operator: str, ttl: timedelta = SESSION_TTL) -> tuple[str, Session]:
        """A new session: the cookie's value and the session."""
        await _prune(self._db, SESSION_NAMESPACE)
        sid = secrets.token_urlsafe(32)
        session = Session(operator, secrets.token_urlsafe(32), datetime.now(UTC) + ttl)
        value = {"operator": operator, "csrf": session.csrf, "expires": session.expires.isoformat()}
        await self._store.set(_digest(sid), value)
        return sid, session

    async def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 200:
            return None
        value = await self._store.get(_digest(sid))
        if value is None or _expired(value, datetime.now(UTC)):
            return None
        return Session(value["operator"], value["csrf"], datetime.fromisoformat(value["expires"]))

    async def close(self, sid: str | None) -> None:
        if sid:
            await self._store.delete(_digest(sid))


async def _take(db: Database, namespace: str, key: str) -> dict | None:
    """Read and delete one value; of two callers racing for it, only one gets it."""
    async with db.session() as session, session.begin():
        row = await session.get(PluginValue, (namespace, key))
        if row is None:
            return None
        value = row.value
        deleted = await session.execute(
            delete(PluginValue).where(PluginValue.namespace == namespace, PluginValue.key == key)
        )
    return value if deleted.rowcount == 1 else None  # type: ignore[attr-defined]


async def _prune(db: Database, namespace: str) -> None:
    """Drop expired entries (whenever a new one is made)."""
    now = datetime.now(UTC)
    async with db.session() as session, session.begin():
        rows = await session.scalars(select(PluginValue).where(PluginValue.namespace == namespace))
        stale = [row.key for row in rows if _expired(row.value, now)]
        if stale:
            await session.execute(
                delete(PluginValue).where(PluginValue.namespace == namespace, PluginValue.key.in_(stale))
            )
