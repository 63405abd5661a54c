"""The SQLite engine of TOTP replay protection (see :mod:`secure_mw.login.totp`): one
``INSERT … ON CONFLICT DO UPDATE … WHERE expired`` per claim in the shared database file,
atomic across the processes of a host; the key is a hash of the user name and the step."""

from __future__ import annotations

from secure_mw._sqlite import Database
from secure_mw.login.totp import _check_claim
from secure_mw.session.sqlite_store import hashed

__all__ = ["SqliteUsedCodes"]


class SqliteUsedCodes:
    """Claimed (user, step) pairs in SQLite, shared by every process of the host."""

    nonblocking = False

    def __init__(self, db: Database) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"SqliteUsedCodes({str(self.db.path)!r})"

    def claim(self, username: str, step: int, ttl: float) -> bool:
        """True the first time (``username``, ``step``) is claimed within ``ttl`` seconds, by
        any process sharing the file."""
        _check_claim(username, step, ttl)
        now = self.db.clock()
        return self.db.write(
            "INSERT INTO marks (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET expires = excluded.expires WHERE marks.expires <= ?",
            (f"{hashed('totp', username)}:{step}", now + max(ttl, 0.001), now)) == 1

    async def aclaim(self, username: str, step: int, ttl: float) -> bool:
        """:meth:`claim` for asyncio (:meth:`Database.call`)."""
        return await self.db.call(self.claim, username, step, ttl)
