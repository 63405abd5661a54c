"""Server-side session values in a SQLite file every worker of a host shares, encrypted at
rest as in the Redis store.

::

    store = SqliteSessionStore(database("/var/lib/app/secure-mw.sqlite3"), keyring=ring)
    store.save(session_id, value, ttl=3600)        # or: await store.asave(...)
    store.load(session_id)                         # the bytes saved, or None

Keys are ``session:``, ``once:`` and ``revoked:`` plus base64url(SHA-256(id)) — a copy of
the file shows no cookie value — and each value is sealed by the key ring with its key as
associated data, so a value moved to another key, changed, or made by keys not in the ring
raises :class:`~secure_mw.errors.DecryptError`. Every operation is one statement (atomic by
itself across processes). Under asyncio each runs inline without waiting for a lock (a few
microseconds on a local disk) and, only when another process holds the lock, again in a
worker thread (:meth:`~secure_mw._sqlite.Database.call`): the event loop never waits on
another process. Failures raise :class:`~secure_mw.errors.StoreUnavailable`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection

from secure_mw._encoding import b64url_encode
from secure_mw._sqlite import Database, ttl_seconds
from secure_mw.crypto.keyring import KeyRing
from secure_mw.session._sealed import open_value, seal_value

__all__ = ["SqliteMarks", "SqliteSessionStore", "hashed"]

_log = logging.getLogger("secure_mw.session.sqlite")


def hashed(kind: str, value: str) -> str:
    """``kind:`` and the base64url SHA-256 of ``value``: a key that names no secret."""
    if not isinstance(value, str):
        raise TypeError(f"a {kind} key must be a string")
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    return f"{kind}:{b64url_encode(digest)}"


class SqliteMarks:
    """Single-use claims and revocation marks in the ``marks`` table (also what the cookie
    store uses with ``[sqlite] path``)."""

    nonblocking = False     # may wait for the file's lock: see Database.call

    def __init__(self, db: Database) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.db.path)!r})"

    def claim_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is claimed within ``ttl`` seconds (or since it was
        released), by any process sharing the file."""
        now = self.db.clock()
        return self.db.write(
            "INSERT INTO marks (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET expires = excluded.expires WHERE marks.expires <= ?",
            (hashed("once", token), now + max(ttl_seconds(ttl) or 0.001, 0.001), now)) == 1

    def release(self, token: str) -> None:
        self.db.write("DELETE FROM marks WHERE key = ?", (hashed("once", token),))

    def revoke(self, key: str, ttl: float, *, owner: str = "") -> None:
        """Remember for ``ttl`` seconds that session ``key`` has ended (a mark is only ever
        lengthened; ``owner`` is not needed: every mark is kept until it ends)."""
        seconds = ttl_seconds(ttl)
        if seconds is None:
            return
        self.db.write(
            "INSERT INTO marks (key, expires) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
            "SET expires = max(marks.expires, excluded.expires)",
            (hashed("revoked", key), self.db.clock() + seconds))

    def is_revoked(self, key: str) -> bool:
        return bool(self.db.read("SELECT 1 FROM marks WHERE key = ? AND expires > ?",
                                 (hashed("revoked", key), self.db.clock())))

    def mark_ended(self, name: str, at: float, ttl: float) -> None:
        """Remember for ``ttl`` seconds that the sessions of ``name`` (a provider session or
        a subject, :func:`~secure_mw.session.manager.index_name`) created up to ``at``
        have ended: back-channel logout for the cookie store, whose records clients hold."""
        seconds = ttl_seconds(ttl)
        if seconds is None:
            return
        self.db.write(
            "INSERT INTO ended (key, at, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO "
            "UPDATE SET at = max(ended.at, excluded.at), "
            "expires = max(ended.expires, excluded.expires)",
            (hashed("ended", name), float(at), self.db.clock() + seconds))

    def is_ended(self, key: str, names: Collection[str], created: float) -> bool:
        """:meth:`is_revoked` of ``key`` or a :meth:`mark_ended` of one of ``names`` at or
        after ``created``, in one statement."""
        ended = [hashed("ended", n) for n in names][:4]
        ended += [""] * (4 - len(ended))
        now = self.db.clock()
        rows = self.db.read(
            "SELECT EXISTS (SELECT 1 FROM marks WHERE key = ? AND expires > ?) OR EXISTS "
            "(SELECT 1 FROM ended WHERE key IN (?, ?, ?, ?) AND expires > ? AND at >= ?)",
            (hashed("revoked", key), now, *ended, now, float(created)))
        return bool(rows and rows[0][0])

    async def aclaim_once(self, token: str, ttl: float) -> bool:
        return await self.db.call(self.claim_once, token, ttl)

    async def amark_ended(self, name: str, at: float, ttl: float) -> None:
        await self.db.call(self.mark_ended, name, at, ttl)

    async def ais_ended(self, key: str, names: Collection[str], created: float) -> bool:
        return await self.db.call(self.is_ended, key, names, created)

    async def arelease(self, token: str) -> None:
        await self.db.call(self.release, token)

    async def arevoke(self, key: str, ttl: float, *, owner: str = "") -> None:
        await self.db.call(self.revoke, key, ttl, owner=owner)

    async def ais_revoked(self, key: str) -> bool:
        return await self.db.call(self.is_revoked, key)


class SqliteSessionStore(SqliteMarks):
    """Encrypted session values in SQLite; see the module docstring."""

    indexes = True   # save_indexed and end_indexed: back-channel logout

    def __init__(self, db: Database, *, keyring: KeyRing) -> None:
        super().__init__(db)
        self._keyring = keyring

    def _open(self, key: str, blob: object) -> bytes:
        return open_value(self._keyring, key, blob)

    def load(self, session_id: str) -> bytes | None:
        """The value saved for ``session_id``; None when missing or expired; a value that is
        not authentic raises :class:`~secure_mw.errors.DecryptError`."""
        key = hashed("session", session_id)
        rows = self.db.read("SELECT value FROM sessions WHERE key = ? AND expires > ?",
                            (key, self.db.clock()))
        return self._open(key, rows[0][0]) if rows else None

    def save(self, session_id: str, value: bytes, ttl: float, *,
             only_if_exists: bool = False) -> bool:
        """Store ``value`` for ``ttl`` seconds (``ttl <= 0`` deletes). With
        ``only_if_exists`` a value deleted or expired meanwhile (a logout racing this
        request) stays deleted; returns whether it was written."""
        key = hashed("session", session_id)
        seconds = ttl_seconds(ttl)
        if seconds is None:
            self.delete(session_id)
            return False
        blob = seal_value(self._keyring, key, value)
        now = self.db.clock()
        if only_if_exists:
            return self.db.write(
                "UPDATE sessions SET value = ?, expires = ? WHERE key = ? AND expires > ?",
                (blob, now + seconds, key, now)) == 1
        self.db.write("INSERT INTO sessions (key, value, expires) VALUES (?, ?, ?) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                      "expires = excluded.expires", (key, blob, now + seconds))
        return True

    def save_indexed(self, session_id: str, value: bytes, ttl: float,
                     index: Collection[str], keep: float) -> bool:
        """:meth:`save` of a new record, listed (by its key, never its id) under each name
        of ``index`` for ``keep`` seconds, in one transaction."""
        key = hashed("session", session_id)
        seconds = ttl_seconds(ttl)
        if seconds is None:
            return False
        blob = seal_value(self._keyring, key, value)
        now = self.db.clock()
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO sessions (key, value, expires) VALUES (?, ?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                         "expires = excluded.expires", (key, blob, now + seconds))
            conn.executemany(
                "INSERT INTO session_index (key, session, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (key, session) DO UPDATE SET expires = excluded.expires",
                [(hashed("index", n), key, now + max(seconds, keep)) for n in index])
        return True

    def end_indexed(self, name: str) -> int:
        """Delete every record listed under ``name`` and the list, in one transaction (a
        login adding to it waits or comes after); how many records there were."""
        index_key = hashed("index", name)
        now = self.db.clock()
        with self.db.transaction() as conn:
            ended = conn.execute(
                "DELETE FROM sessions WHERE key IN (SELECT session FROM session_index "
                "WHERE key = ?) AND expires > ?", (index_key, now)).rowcount
            conn.execute("DELETE FROM session_index WHERE key = ?", (index_key,))
        return max(ended, 0)

    def touch(self, session_id: str, ttl: float) -> None:
        """Set the time to live of an existing value; ``ttl <= 0`` deletes."""
        seconds = ttl_seconds(ttl)
        if seconds is None:
            self.delete(session_id)
            return
        now = self.db.clock()
        self.db.write("UPDATE sessions SET expires = ? WHERE key = ? AND expires > ?",
                      (now + seconds, hashed("session", session_id), now))

    def delete(self, session_id: str) -> None:
        self.db.write("DELETE FROM sessions WHERE key = ?", (hashed("session", session_id),))

    async def aload(self, session_id: str) -> bytes | None:
        return await self.db.call(self.load, session_id)

    async def asave(self, session_id: str, value: bytes, ttl: float, *,
                    only_if_exists: bool = False) -> bool:
        return await self.db.call(self.save, session_id, value, ttl,
                                       only_if_exists=only_if_exists)

    async def asave_indexed(self, session_id: str, value: bytes, ttl: float,
                            index: Collection[str], keep: float) -> bool:
        return await self.db.call(self.save_indexed, session_id, value, ttl, index, keep)

    async def aend_indexed(self, name: str) -> int:
        return await self.db.call(self.end_indexed, name)

    async def atouch(self, session_id: str, ttl: float) -> None:
        await self.db.call(self.touch, session_id, ttl)

    async def adelete(self, session_id: str) -> None:
        await self.db.call(self.delete, session_id)
