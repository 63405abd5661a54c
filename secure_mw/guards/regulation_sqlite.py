"""The SQLite engine of regulation (see :mod:`secure_mw.guards.regulation`): each subject's
state a row of the shared database file, changed by the very transition the memory engine
runs (:func:`~secure_mw.guards.regulation._step`) inside one ``BEGIN IMMEDIATE``
transaction per attempt, so a reservation is all-or-nothing across its subjects and at most
``limit`` parallel attempts of every worker process are judged. Rows are keyed by a hash of
the subject and expire when nothing of it matters any more."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from secure_mw._sqlite import Database
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.regulation import (
    BANNED,
    BUSY,
    MODES,
    STARTED,
    Ban,
    BanEntry,
    Refusal,
    Reservation,
    Subject,
    _entry,
    _latest,
    _matches,
    _Policy,
    _State,
    _step,
)
from secure_mw.session.sqlite_store import hashed

if TYPE_CHECKING:
    from secure_mw.settings import RegulationSettings

__all__ = ["SqliteRegulator"]


def _load(raw: str) -> _State:
    try:
        data = json.loads(raw)
        state = _State()
        state.ban = float(data["b"])
        state.label = str(data["l"])
        state.fails = [float(x) for x in data["f"]]
        state.forget = float(data["g"])
        state.pending = {str(k): float(v) for k, v in data["p"].items()}
    except (TypeError, ValueError, KeyError, AttributeError):
        raise StoreUnavailable("regulation store holds a corrupt row") from None
    return state


def _dump(state: _State) -> str:
    return json.dumps({"b": state.ban, "l": state.label, "f": state.fails,
                       "g": state.forget, "p": state.pending}, separators=(",", ":"))


class SqliteRegulator:
    """Regulation in a SQLite file shared by the processes of a host; see the module
    docstring. Times are ``db.clock`` (Unix time)."""

    nonblocking = False
    shared = True       # every process of the host sees the same bans

    def __init__(self, db: Database, *, max_retries: int = 3, find_time: float = 120.0,
                 ban_time: float = 300.0, modes: Sequence[str] = MODES,
                 user_max_retries: int = 10, ip_max_retries: int = 20) -> None:
        self._policy = _Policy(max_retries=max_retries, find_time=find_time,
                               ban_time=ban_time, modes=modes,
                               user_max_retries=user_max_retries,
                               ip_max_retries=ip_max_retries)
        self.db = db

    @classmethod
    def from_settings(cls, settings: RegulationSettings, db: Database) -> SqliteRegulator:
        return cls(db, max_retries=settings.max_retries, find_time=settings.find_time,
                   ban_time=settings.ban_time, modes=settings.modes,
                   user_max_retries=settings.user_max_retries,
                   ip_max_retries=settings.ip_max_retries)

    @property
    def policy(self) -> _Policy:
        return self._policy

    def __repr__(self) -> str:
        return f"SqliteRegulator({str(self.db.path)!r})"

    @staticmethod
    def _key(subject: Subject) -> str:
        return hashed("reg", f"{subject.kind}:{subject.key}")

    def _get(self, conn: sqlite3.Connection, subject: Subject) -> _State | None:
        row = conn.execute("SELECT state FROM regulation WHERE key = ?",
                           (self._key(subject),)).fetchone()
        return None if row is None else _load(row[0])

    def _put(self, conn: sqlite3.Connection, subject: Subject, state: _State,
             now: float) -> None:
        deadline = state.deadline(self._policy.find_time)
        if deadline <= now:
            conn.execute("DELETE FROM regulation WHERE key = ?", (self._key(subject),))
            return
        conn.execute("INSERT INTO regulation (key, state, ban, label, expires) "
                     "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                     "state = excluded.state, ban = excluded.ban, label = excluded.label, "
                     "expires = excluded.expires",
                     (self._key(subject), _dump(state), state.ban, state.label, deadline))

    def reserve(self, *, user: str | None, ip: str | None, device: str | None = None,
                clears: bool = True) -> Reservation | Refusal:
        """Count an attempt before it is judged, every subject in one transaction; a
        :class:`Refusal` (nothing counted) when a subject is banned or its budget in use."""
        p = self._policy
        reservation = Reservation(secrets.token_urlsafe(12),
                                  p.subjects(user, ip, device, clears=clears))
        with self.db.transaction() as conn:
            now = self.db.clock()
            states = []
            for subject in reservation.subjects:     # all or nothing, first refusal wins
                state = self._get(conn, subject) or _State()
                code, until = _step(state, "reserve", now, reservation.id, subject,
                                    find_time=p.find_time, ban_time=p.ban_time)
                if code == BANNED:
                    return Refusal(subject.kind, "banned", until)
                if code == BUSY:
                    return Refusal(subject.kind, "busy")
                states.append(state)
            for subject, state in zip(reservation.subjects, states):  # noqa: B905
                self._put(conn, subject, state, now)
        return reservation

    def _run(self, op: str, reservation: Reservation) -> Ban | None:
        p = self._policy
        bans = []
        with self.db.transaction() as conn:
            now = self.db.clock()
            for subject in reservation.subjects:
                state = self._get(conn, subject)
                if state is None:
                    if op != "fail":
                        continue            # forgotten: nothing in flight to free
                    state = _State()        # a failure counts even if its reservation was
                code, until = _step(state, op, now, reservation.id, subject,
                                    find_time=p.find_time, ban_time=p.ban_time)
                self._put(conn, subject, state, now)
                if code == STARTED:
                    bans.append(Ban(subject.kind, until))
        return _latest(bans)

    def fail(self, reservation: Reservation) -> Ban | None:
        """The attempt failed: it stays counted; the ban it started (the longest), or None."""
        return self._run("fail", reservation)

    def succeed(self, reservation: Reservation) -> None:
        """The attempt succeeded: frees it and clears its user's failures (a ban stays)."""
        self._run("succeed", reservation)

    def release(self, reservation: Reservation) -> None:
        """The attempt was not judged after all: its reservation is freed."""
        self._run("release", reservation)

    def bans(self) -> list[BanEntry]:
        """Every ban in force in the file (every process's), soonest end first."""
        rows = self.db.read("SELECT label, ban FROM regulation WHERE ban > ?",
                            (self.db.clock(),))
        found = [_entry(str(label), float(until)) for label, until in rows]
        return sorted((e for e in found if e is not None),
                      key=lambda e: (e.until, e.kind, e.user, e.ip))

    def lift(self, *, user: str | None = None, ip: str | None = None) -> int:
        """End every ban of ``user`` and/or ``ip`` (see the memory engine); the number
        lifted."""
        user_label, ip_label = _Policy.lift_labels(user, ip)
        if not user_label and not ip_label:
            return 0
        lifted = 0
        with self.db.transaction() as conn:
            now = self.db.clock()
            for key, raw, label in conn.execute(
                    "SELECT key, state, label FROM regulation WHERE ban > ?",
                    (now,)).fetchall():
                if not _matches(str(label), user_label, ip_label):
                    continue
                state = _load(raw)
                state.ban, state.label, state.fails, state.forget = 0.0, "", [], 0.0
                deadline = state.deadline(self._policy.find_time)
                conn.execute("UPDATE regulation SET state = ?, ban = 0, label = '', "
                             "expires = ? WHERE key = ?", (_dump(state), deadline, key))
                lifted += 1
        return lifted

    def close(self) -> None:
        """Nothing to close (the database is shared)."""

    async def areserve(self, *, user: str | None, ip: str | None, device: str | None = None,
                       clears: bool = True) -> Reservation | Refusal:
        return await self.db.call(self.reserve, user=user, ip=ip, device=device,
                                       clears=clears)

    async def afail(self, reservation: Reservation) -> Ban | None:
        return await self.db.call(self.fail, reservation)

    async def asucceed(self, reservation: Reservation) -> None:
        await self.db.call(self.succeed, reservation)

    async def arelease(self, reservation: Reservation) -> None:
        await self.db.call(self.release, reservation)
