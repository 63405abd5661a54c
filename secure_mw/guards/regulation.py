"""Regulation: a budget of guesses per subject, reserved before the password is checked, and
a ban when the guesses fail.

::

    regulator = MemoryRegulator.from_settings(settings.regulation)   # or RedisRegulator
    turn = regulator.reserve(user=name, ip=client_ip)   # before looking at the password
    if isinstance(turn, Refusal):
        ...  # banned (turn.until) or the budget is in use by attempts in flight: refuse
    elif password_ok:
        regulator.succeed(turn)
    else:
        regulator.fail(turn)          # the Ban it started, or None

:meth:`~MemoryRegulator.reserve` counts the attempt *before* it is judged, atomically for
every subject, so however many attempts run in parallel at most ``limit`` of them are judged
per subject within ``find_time``; :meth:`~MemoryRegulator.succeed`, :meth:`fail` and
:meth:`release` (the attempt was not judged after all) settle the reservation. A reservation
never settled (a crashed process) counts until ``find_time`` has passed. Subjects, each with
its own budget (``modes`` chooses which apply):

* ``pair`` — one user name from one address: ``max_retries`` (3);
* ``user`` — one user name from anywhere: ``user_max_retries`` (10);
* ``ip`` — one address (IPv6: its /64) for any user name: ``ip_max_retries`` (20);
* ``device`` — one user name from a device that logged in as that user before (a valid
  device cookie, see :mod:`secure_mw.guards.attempts`): ``max_retries``. Such an attempt is
  regulated by its device alone, so its owner passes a ban of their name or address.

The full explanation — the state of a subject, the time each is kept (a subject with a single
failure is forgotten early), the Redis keys and the bound on memory — is in docs/guards.md.
Both engines run the same transition (:func:`_step` here, the same steps in Lua for Redis).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from secure_mw._encoding import b64url_encode
from secure_mw.errors import StoreUnavailable

if TYPE_CHECKING:
    from secure_mw.guards.regulation_redis import RedisRegulator
    from secure_mw.settings import RegulationSettings, Settings

__all__ = ["Ban", "BanEntry", "MemoryRegulator", "RedisRegulator", "Refusal", "Regulator",
           "Reservation", "regulator_from_settings"]

MODES: Final = ("pair", "user", "ip")
#: Replies of one step of a subject (both engines).
OK: Final = 0
BUSY: Final = 1
BANNED: Final = 2
STARTED: Final = 3


@dataclass(frozen=True)
class Ban:
    """A ban that a failure started: ``subject`` (its kind) is banned until ``until`` (the
    regulator's clock: Unix time by default, the server's for Redis)."""

    subject: str
    until: float


@dataclass(frozen=True)
class Refusal:
    """Why an attempt may not be judged: ``reason`` ``"banned"`` (until ``until``) or
    ``"busy"`` (the budget of ``subject`` is used by failures and attempts in flight)."""

    subject: str
    reason: str
    until: float | None = None

    def retry_after(self, now: float) -> int:
        """Whole seconds to wait (at least 1)."""
        if self.until is None:
            return 1
        return max(1, math.ceil(self.until - now))


@dataclass(frozen=True)
class Subject:
    """One regulated subject of an attempt: ``key`` is its normalized identity within
    ``kind``, ``label`` what a listing of its ban shows (hashes only)."""

    kind: str
    key: str
    limit: int
    label: str

    @property
    def clears_on_success(self) -> bool:
        # A success clears its user's counts, never an address's: an attacker logging in
        # to an account of their own between guesses must not reset their address.
        return self.kind != "ip"


@dataclass(frozen=True)
class Reservation:
    """An attempt counted before it is judged; settle it exactly once."""

    id: str = field(repr=False)
    subjects: tuple[Subject, ...]


@dataclass(frozen=True)
class BanEntry:
    """A ban in force, as :meth:`~MemoryRegulator.bans` lists it: ``user`` and ``ip`` are
    labels (truncated SHA-256 of the normalized name or address), never the values."""

    kind: str
    user: str
    ip: str
    until: float


class Regulator(Protocol):
    """What a login endpoint needs of a regulator."""

    def reserve(self, *, user: str | None, ip: str | None,
                device: str | None = None) -> Reservation | Refusal: ...
    def fail(self, reservation: Reservation) -> Ban | None: ...
    def succeed(self, reservation: Reservation) -> None: ...
    def release(self, reservation: Reservation) -> None: ...
    async def areserve(self, *, user: str | None, ip: str | None,
                       device: str | None = None) -> Reservation | Refusal: ...
    async def afail(self, reservation: Reservation) -> Ban | None: ...
    async def asucceed(self, reservation: Reservation) -> None: ...
    async def arelease(self, reservation: Reservation) -> None: ...


def _ip_subject(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def normalize_user(name: str) -> str:
    """NFKC, surrounding space removed, case folded: how every part of secure_mw compares
    user names (``Alice``, `` ALICE `` and its fullwidth spelling are one)."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def label(kind: str, value: str) -> str:
    """The label of a user name (``kind="user"``, normalized) or an address (``"ip"``,
    as counted): 12 base64url characters of its SHA-256. It names nobody to a reader, but a
    guessed name or address can be checked against it (which is how ``bans lift`` works)."""
    digest = hashlib.sha256(f"{kind}:{value}".encode("utf-8", "surrogatepass")).digest()
    return b64url_encode(digest)[:12]


def failure_ttl(count: int, limit: int, find_time: float) -> float:
    """How long a subject's ``count`` failures are kept: ``find_time`` once ``limit - 1`` of
    them are held, proportionally less before (a single failure of the user-wide budget of
    10 is kept 2 m / 9). The steadiest guessing rate that never reaches a ban stays
    ``(limit - 1) / find_time``, as with a full window, while a flood of distinct names or
    addresses that each fail once leaves keys that vanish early."""
    if limit <= 2:
        return find_time
    return min(find_time, find_time * count / (limit - 1))


class _State:
    """One subject: its ban, its recent failures and its reservations in flight."""

    __slots__ = ("ban", "fails", "forget", "label", "pending")

    def __init__(self) -> None:
        self.ban = 0.0
        self.label = ""
        self.fails: list[float] = []
        self.forget = 0.0
        self.pending: dict[str, float] = {}

    def deadline(self, find_time: float) -> float:
        """When nothing of this subject matters any more."""
        out = self.ban
        if self.fails:
            out = max(out, self.forget)
        for at in self.pending.values():
            out = max(out, at + find_time)
        return out


def _step(state: _State, op: str, now: float, rid: str, subject: Subject, *,
          find_time: float, ban_time: float) -> tuple[int, float]:
    """One atomic step of a subject: ``op`` is reserve, fail, succeed or release. Returns
    ``(OK | BUSY | BANNED | STARTED, ban end or 0)``. The Lua script of the Redis engine
    runs exactly these steps."""
    horizon = now - find_time
    banned = state.ban > now
    if not banned:
        state.ban, state.label = 0.0, ""
    state.pending = {k: at for k, at in state.pending.items() if at > horizon}
    if state.forget > now:
        state.fails = [at for at in state.fails if at > horizon]
    else:
        state.fails = []
    if op == "reserve":
        if banned:
            return BANNED, state.ban
        if len(state.fails) + len(state.pending) >= subject.limit:
            return BUSY, 0.0
        state.pending[rid] = now
        return OK, 0.0
    state.pending.pop(rid, None)
    if op == "fail":
        if banned:          # failures during a ban neither count nor extend it
            return OK, 0.0
        state.fails.append(now)
        if len(state.fails) >= subject.limit:
            state.ban, state.label = now + ban_time, subject.label
            state.fails, state.forget = [], 0.0
            return STARTED, state.ban
        state.forget = now + failure_ttl(len(state.fails), subject.limit, find_time)
    elif op == "succeed" and subject.clears_on_success:
        state.fails = []
    return OK, 0.0


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer")
    return value


class _Policy:
    """Settings and subjects shared by both regulators."""

    __slots__ = ("ban_time", "find_time", "ip_max_retries", "max_retries", "modes",
                 "user_max_retries")

    def __init__(self, *, max_retries: int, find_time: float, ban_time: float,
                 modes: Sequence[str], user_max_retries: int, ip_max_retries: int) -> None:
        self.max_retries = _check_count("max_retries", max_retries)
        self.user_max_retries = _check_count("user_max_retries", user_max_retries)
        self.ip_max_retries = _check_count("ip_max_retries", ip_max_retries)
        for name, value in (("find_time", find_time), ("ban_time", ban_time)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        if isinstance(modes, str) or not set(modes) <= set(MODES):
            raise ValueError("modes are 'pair', 'user' and/or 'ip'")
        self.find_time = float(find_time)
        self.ban_time = float(ban_time)
        self.modes = frozenset(modes)

    def subjects(self, user: str | None, ip: str | None,
                 device: str | None = None) -> tuple[Subject, ...]:
        """The regulated subjects of an attempt, in the order they are reserved."""
        if user is not None and not isinstance(user, str):
            raise TypeError("user must be a string or None")
        if ip is not None and not isinstance(ip, str):
            raise TypeError("ip must be a string or None")
        if device is not None and not isinstance(device, str):
            raise TypeError("device must be a string or None")
        name = normalize_user(user) if user else None
        address = _ip_subject(ip) if ip else None
        ulabel = label("user", name) if name else ""
        ilabel = label("ip", address) if address else ""
        if name and device:
            return (Subject("device", f"{name}\x00{device}", self.max_retries,
                            f"device|{ulabel}|"),)
        out = []
        if name and address and "pair" in self.modes:
            out.append(Subject("pair", f"{name}\x00{address}", self.max_retries,
                               f"pair|{ulabel}|{ilabel}"))
        if name and "user" in self.modes:
            out.append(Subject("user", name, self.user_max_retries, f"user|{ulabel}|"))
        if address and "ip" in self.modes:
            out.append(Subject("ip", address, self.ip_max_retries, f"ip||{ilabel}"))
        return tuple(out)

    @staticmethod
    def lift_labels(user: str | None, ip: str | None) -> tuple[str, str]:
        """The labels ``bans lift`` matches: of the normalized name and the counted address."""
        return (label("user", normalize_user(user)) if user else "",
                label("ip", _ip_subject(ip)) if ip else "")


def _entry(ban_label: str, until: float) -> BanEntry | None:
    parts = ban_label.split("|")
    if len(parts) != 3:
        return None
    return BanEntry(parts[0], parts[1], parts[2], until)


def _matches(ban_label: str, user_label: str, ip_label: str) -> bool:
    parts = ban_label.split("|")
    return len(parts) == 3 and ((bool(user_label) and parts[1] == user_label)
                                or (bool(ip_label) and parts[2] == ip_label))


def _latest(bans: Iterable[Ban]) -> Ban | None:
    found = None
    for ban in bans:
        if found is None or ban.until > found.until:
            found = ban
    return found


# ---------------------------------------------------------------------------------------------
# memory


class MemoryRegulator:
    """Regulation in this process; see the module docstring. Thread-safe (one lock), an
    injectable clock (``time.time`` by default), at most ``max_subjects`` subjects of each
    kind: when a kind is full, subjects whose time is over go first, then the least
    recently used one with neither a ban nor an attempt in flight; when none can go, the
    attempt is refused (:class:`StoreUnavailable`) rather than a ban forgotten."""

    __slots__ = ("_clock", "_lock", "_max_subjects", "_policy", "_tables")
    nonblocking = True   # never waits on I/O: called inline under ASGI
    shared = False       # bans live in this process only

    def __init__(self, *, max_retries: int = 3, find_time: float = 120.0,
                 ban_time: float = 300.0, modes: Sequence[str] = MODES,
                 user_max_retries: int = 10, ip_max_retries: int = 20,
                 max_subjects: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        self._max_subjects = _check_count("max_subjects", max_subjects)
        self._policy = _Policy(max_retries=max_retries, find_time=find_time,
                               ban_time=ban_time, modes=modes,
                               user_max_retries=user_max_retries,
                               ip_max_retries=ip_max_retries)
        self._clock = clock
        self._lock = threading.Lock()
        self._tables: dict[str, OrderedDict[str, _State]] = {
            kind: OrderedDict() for kind in ("pair", "user", "ip", "device")}

    @classmethod
    def from_settings(cls, settings: RegulationSettings, **kwargs: Any) -> MemoryRegulator:
        return cls(max_retries=settings.max_retries, find_time=settings.find_time,
                   ban_time=settings.ban_time, modes=settings.modes,
                   user_max_retries=settings.user_max_retries,
                   ip_max_retries=settings.ip_max_retries, **kwargs)

    @property
    def policy(self) -> _Policy:
        return self._policy

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def __repr__(self) -> str:
        return f"MemoryRegulator(subjects={len(self)}, max_per_kind={self._max_subjects})"

    def _run(self, op: str, reservation: Reservation) -> list[tuple[int, float, str]]:
        p = self._policy
        out = []
        with self._lock:
            now = self._clock()
            for subject in reservation.subjects:
                table = self._tables[subject.kind]
                state = table.get(subject.key)
                if state is None:
                    if op != "fail":
                        continue     # forgotten: nothing in flight to free
                    self._room(table, now)   # a failure counts even if its reservation
                    state = table[subject.key] = _State()   # was forgotten
                code, until = _step(state, op, now, reservation.id, subject,
                                    find_time=p.find_time, ban_time=p.ban_time)
                if state.deadline(p.find_time) <= now:
                    del table[subject.key]
                out.append((code, until, subject.kind))
        return out

    def _room(self, table: OrderedDict[str, _State], now: float) -> None:
        if len(table) < self._max_subjects:
            return
        find_time = self._policy.find_time
        cold = []
        for key, state in table.items():
            cold.append((key, state))
            if len(cold) >= 64:
                break
        for key, state in cold:
            if state.deadline(find_time) <= now:
                del table[key]
        if len(table) < self._max_subjects:
            return
        for key, state in cold:
            if key in table and state.ban <= now and not any(
                    at > now - find_time for at in state.pending.values()):
                del table[key]
                return
        raise StoreUnavailable("regulation memory full")

    def reserve(self, *, user: str | None, ip: str | None,
                device: str | None = None) -> Reservation | Refusal:
        """Count an attempt before it is judged; a :class:`Refusal` (nothing counted) when a
        subject is banned or its budget is in use."""
        p = self._policy
        reservation = Reservation(secrets.token_urlsafe(12), p.subjects(user, ip, device))
        with self._lock:
            now = self._clock()
            for subject in reservation.subjects:      # all or nothing, first refusal wins
                table = self._tables[subject.kind]
                state = table.get(subject.key)
                if state is None:
                    self._room(table, now)
                    continue
                probe = _State()
                probe.ban, probe.fails, probe.forget = state.ban, list(state.fails), \
                    state.forget
                probe.pending = dict(state.pending)
                code, until = _step(probe, "reserve", now, reservation.id, subject,
                                    find_time=p.find_time, ban_time=p.ban_time)
                if code == BANNED:
                    return Refusal(subject.kind, "banned", until)
                if code == BUSY:
                    return Refusal(subject.kind, "busy")
            for subject in reservation.subjects:
                table = self._tables[subject.kind]
                state = table.get(subject.key)
                if state is None:
                    state = table[subject.key] = _State()
                else:
                    table.move_to_end(subject.key)
                _step(state, "reserve", now, reservation.id, subject,
                      find_time=p.find_time, ban_time=p.ban_time)
        return reservation

    def fail(self, reservation: Reservation) -> Ban | None:
        """The attempt failed: it stays counted; the ban it started (the longest), or None."""
        return _latest(Ban(kind, until) for code, until, kind in self._run("fail", reservation)
                       if code == STARTED)

    def succeed(self, reservation: Reservation) -> None:
        """The attempt succeeded: its reservation is freed and its user's failures (of the
        pair, the user name, the device — never the address) are cleared. A ban stays."""
        self._run("succeed", reservation)

    def release(self, reservation: Reservation) -> None:
        """The attempt was not judged after all: its reservation is freed."""
        self._run("release", reservation)

    def bans(self) -> list[BanEntry]:
        """The bans in force in this process, soonest end first."""
        with self._lock:
            now = self._clock()
            found = [_entry(state.label, state.ban) for table in self._tables.values()
                     for state in table.values() if state.ban > now]
        return sorted((e for e in found if e is not None),
                      key=lambda e: (e.until, e.kind, e.user, e.ip))

    def lift(self, *, user: str | None = None, ip: str | None = None) -> int:
        """End every ban of ``user`` (of its name, its pairs, its devices) and/or of ``ip``
        (its address and its pairs), with their failures; the number lifted."""
        user_label, ip_label = _Policy.lift_labels(user, ip)
        lifted = 0
        with self._lock:
            now = self._clock()
            for table in self._tables.values():
                for state in table.values():
                    if state.ban > now and _matches(state.label, user_label, ip_label):
                        state.ban, state.label, state.fails, state.forget = 0.0, "", [], 0.0
                        lifted += 1
        return lifted

    def close(self) -> None:
        """Nothing to close (as the Redis engine's ``close``)."""

    async def areserve(self, *, user: str | None, ip: str | None,
                       device: str | None = None) -> Reservation | Refusal:
        return self.reserve(user=user, ip=ip, device=device)

    async def afail(self, reservation: Reservation) -> Ban | None:
        return self.fail(reservation)

    async def asucceed(self, reservation: Reservation) -> None:
        self.succeed(reservation)

    async def arelease(self, reservation: Reservation) -> None:
        self.release(reservation)


def regulator_from_settings(settings: Settings) -> MemoryRegulator | RedisRegulator:
    """The regulator the settings ask for: in Redis when sessions are (``rate_limits.
    redis_url``, else ``session.redis_url``; keys under ``session.redis_key_prefix``), so
    every process shares bans; else in memory."""
    url = settings.rate_limits.redis_url or settings.session.redis_url
    if settings.session.store == "redis" and url:
        from secure_mw.guards.regulation_redis import RedisRegulator

        return RedisRegulator.from_settings(settings.regulation, url,
                                            prefix=settings.session.redis_key_prefix)
    return MemoryRegulator.from_settings(settings.regulation)


def __getattr__(name: str) -> Any:
    # The Redis engine lives in its own module (redis-py is an optional dependency).
    if name in ("RedisRegulator", "_SCRIPT"):
        from secure_mw.guards import regulation_redis

        return getattr(regulation_redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
