"""The SQLite engine of rate limiting (see :mod:`secure_mw.guards.ratelimit`): the same GCRA
as the memory engine, its state (one theoretical arrival time per limit) a row per key in
the shared database file, read and written in one ``BEGIN IMMEDIATE`` transaction so that
concurrent requests of every worker process are counted exactly. Keys are hashed; a row
expires when its state has drained."""

from __future__ import annotations

import json
from collections.abc import Sequence

from secure_mw._sqlite import Database
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.ratelimit import Limits, RateDecision, _decide, _passes, _prepare
from secure_mw.session.sqlite_store import hashed

__all__ = ["SqliteRateLimiter"]


class SqliteRateLimiter:
    """GCRA in a SQLite file shared by the processes of a host; thread- and process-safe.
    Times are ``db.clock`` (Unix time: one time base for every process)."""

    nonblocking = False     # may wait for the file's lock: see Database.call

    def __init__(self, db: Database) -> None:
        self.db = db

    def __len__(self) -> int:
        """Keys whose state has not drained."""
        return int(self.db.read("SELECT count(*) FROM ratelimit WHERE expires > ?",
                                (self.db.clock(),))[0][0])

    def __repr__(self) -> str:
        return f"SqliteRateLimiter({str(self.db.path)!r})"

    def hit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision:
        """Count a request of ``cost`` against every limit of ``limits`` for ``key``."""
        plan = _prepare(key, limits, cost)
        rule = plan.limits
        row_key = hashed("rl", key)
        with self.db.transaction() as conn:
            now = self.db.clock()
            row = conn.execute("SELECT tats FROM ratelimit WHERE key = ? AND expires > ?",
                               (row_key, now)).fetchone()
            debts: Sequence[float] = plan.zeros
            if row is not None:
                try:
                    tats = [float(t) for t in json.loads(row[0])]
                except (TypeError, ValueError):
                    raise StoreUnavailable("rate limit store holds a corrupt row") from None
                debts = ([t - now if t > now else 0.0 for t in tats]
                         + list(plan.zeros))[: len(rule)]
            allowed = all(_passes(limit, debt + cost * limit.interval)
                          for limit, debt in zip(rule, debts))  # noqa: B905 - same length
            if allowed and cost:
                tats = [now + debt + cost * limit.interval
                        for limit, debt in zip(rule, debts)]  # noqa: B905
                conn.execute("INSERT INTO ratelimit (key, tats, expires) VALUES (?, ?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET tats = excluded.tats, "
                             "expires = excluded.expires",
                             (row_key, json.dumps(tats), max(tats)))
        return _decide(plan, cost, debts, allowed)

    async def ahit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision:
        """:meth:`hit` for asyncio (:meth:`Database.call`)."""
        return await self.db.call(self.hit, key, limits, cost)

    def close(self) -> None:
        """Nothing to close (the database is shared)."""
