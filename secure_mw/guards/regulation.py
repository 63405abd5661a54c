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
  regulated by its device, by ``devices`` — every device attempt for that user name:
  ``user_max_retries`` — and by its address, not by its pair or user name, so its owner
  passes a ban of her name.

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
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from secure_mw._encoding import b64url_encode
from secure_mw.errors import StoreUnavailable
from secure_mw.identity import normalize_username

if TYPE_CHECKING:
    from secure_mw.guards.regulation_redis import RedisRegulator
    from secure_mw.guards.regulation_sqlite import SqliteRegulator
    from secure_mw.settings import RegulationSettings, Settings

__all__ = ["Ban", "BanEntry", "MemoryRegulator", "RedisRegulator", "Refusal", "Regulator",
           "Reservation", "regulator_from_settings"]

MODES: Final = ("pair", "user", "ip")
#: Every kind of subject (the ``modes`` and those of device attempts).
KINDS: Final = ("pair", "user", "ip", "device", "devices")
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
    ``kind``, ``label`` what a listing of its ban shows (hashes only), ``clears_on_success``
    whether a success forgets its failures (never an address's: an attacker logging in to
    an account of their own between guesses must not reset their address)."""

    kind: str
    key: str
    limit: int
    label: str
    clears_on_success: bool = True


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

    def reserve(self, *, user: str | None, ip: str | None, device: str | None = None,
                clears: bool = True) -> Reservation | Refusal: ...
    def fail(self, reservation: Reservation) -> Ban | None: ...
    def succeed(self, reservation: Reservation) -> None: ...
    def release(self, reservation: Reservation) -> None: ...
    async def areserve(self, *, user: str | None, ip: str | None, device: str | None = None,
                       clears: bool = True) -> Reservation | Refusal: ...
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


def _tidy(state: _State, now: float, find_time: float) -> bool:
    """Forget what no longer matters of a subject at ``now``; whether it is banned."""
    horizon = now - find_time
    banned = state.ban > now
    if not banned:
        state.ban, state.label = 0.0, ""
    if state.pending:
        state.pending = {k: at for k, at in state.pending.items() if at > horizon}
    if state.forget > now:
        state.fails = [at for at in state.fails if at > horizon]
    else:
        state.fails = []
    return banned


def _step(state: _State, op: str, now: float, rid: str, subject: Subject, *,
          find_time: float, ban_time: float) -> tuple[int, float]:
    """One atomic step of a subject: ``op`` is reserve, fail, succeed or release. Returns
    ``(OK | BUSY | BANNED | STARTED, ban end or 0)``. The Lua script of the Redis engine
    runs exactly these steps."""
    banned = _tidy(state, now, find_time)
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

    def subjects(self, user: str | None, ip: str | None, device: str | None = None, *,
                 clears: bool = True) -> tuple[Subject, ...]:
        """The regulated subjects of an attempt, in the order they are reserved. With a
        ``device``: that device, every device attempt for the name (``devices``) and the
        address; else the pair, the name and the address (as ``modes`` allow). ``clears``
        False: a success forgets the failures of the device only (the caller's user names
        may not compare as they are normalized here, so another spelling's are kept)."""
        if user is not None and not isinstance(user, str):
            raise TypeError("user must be a string or None")
        if ip is not None and not isinstance(ip, str):
            raise TypeError("ip must be a string or None")
        if device is not None and not isinstance(device, str):
            raise TypeError("device must be a string or None")
        name = normalize_username(user) if user else None
        address = _ip_subject(ip) if ip else None
        ulabel = label("user", name) if name else ""
        ilabel = label("ip", address) if address else ""
        out = []
        if name and device:
            out.append(Subject("device", f"{name}\x00{device}", self.max_retries,
                               f"device|{ulabel}|"))
            out.append(Subject("devices", name, self.user_max_retries, f"devices|{ulabel}|",
                               clears))
        else:
            if name and address and "pair" in self.modes:
                out.append(Subject("pair", f"{name}\x00{address}", self.max_retries,
                                   f"pair|{ulabel}|{ilabel}", clears))
            if name and "user" in self.modes:
                out.append(Subject("user", name, self.user_max_retries, f"user|{ulabel}|",
                                   clears))
        if address and "ip" in self.modes:
            out.append(Subject("ip", address, self.ip_max_retries, f"ip||{ilabel}", False))
        return tuple(out)

    @staticmethod
    def lift_labels(user: str | None, ip: str | None) -> tuple[str, str]:
        """The labels ``bans lift`` matches: of the normalized name and the counted address."""
        return (label("user", normalize_username(user)) if user else "",
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


class _Table(dict[str, _State]):
    """The subjects of one kind, and two orders over them: ``free`` — neither banned nor
    with an attempt in flight, least recently used first: the only ones that may be
    evicted — and ``banned`` / ``waiting`` — when to look again at a subject under ban or
    with attempts in flight (oldest first, as bans last ``ban_time`` and reservations
    ``find_time``). Each subject is in ``free`` or in one or both of the others."""

    __slots__ = ("banned", "free", "waiting")

    def __init__(self) -> None:
        super().__init__()
        self.free: OrderedDict[str, None] = OrderedDict()
        self.banned: OrderedDict[str, float] = OrderedDict()
        self.waiting: OrderedDict[str, float] = OrderedDict()

    def drop(self, key: str) -> None:
        self.pop(key, None)
        self.free.pop(key, None)
        self.banned.pop(key, None)
        self.waiting.pop(key, None)

    def place(self, key: str, state: _State, now: float, find_time: float) -> None:
        """File ``state`` (tidied at ``now``) where it belongs; forget it when nothing of it
        matters any more."""
        if state.deadline(find_time) <= now:
            self.drop(key)
            return
        banned = state.ban > now
        if not banned:
            self.banned.pop(key, None)
        elif key not in self.banned:
            self.banned[key] = state.ban
        if not state.pending:
            self.waiting.pop(key, None)
        elif key not in self.waiting:
            self.waiting[key] = now + find_time
        if banned or state.pending:
            self.free.pop(key, None)
        else:
            self.free[key] = None
            self.free.move_to_end(key)

    def sweep(self, now: float, find_time: float) -> None:
        """Look again at the subjects whose ban or reservations may have ended by ``now``:
        amortized O(1), each entry is taken out once per time it was put in."""
        for order in (self.banned, self.waiting):
            while order:
                key, until = next(iter(order.items()))
                if until > now:
                    break
                del order[key]
                state = self.get(key)
                if state is not None:
                    _tidy(state, now, find_time)
                    self.place(key, state, now, find_time)


class MemoryRegulator:
    """Regulation in this process; see the module docstring. Thread-safe (one lock), an
    injectable clock (``time.time`` by default), at most ``max_subjects`` subjects of each
    kind: when a kind is full, the least recently used subject with neither a ban nor an
    attempt in flight goes (subjects under ban or in flight are kept out of that order, so
    finding one is O(1)); when none can go, the attempt is refused
    (:class:`StoreUnavailable`) rather than a ban forgotten."""

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
        self._tables: dict[str, _Table] = {kind: _Table() for kind in KINDS}

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
                table.sweep(now, p.find_time)
                state = table.get(subject.key)
                if state is None:
                    if op != "fail":
                        continue     # forgotten: nothing in flight to free
                    self._room(table)              # a failure counts even if its reservation
                    state = table[subject.key] = _State()   # was forgotten
                code, until = _step(state, op, now, reservation.id, subject,
                                    find_time=p.find_time, ban_time=p.ban_time)
                table.place(subject.key, state, now, p.find_time)
                out.append((code, until, subject.kind))
        return out

    def _room(self, table: _Table) -> None:
        """Make room for one more subject in ``table`` (swept already): evict the least
        recently used subject that is neither banned nor in flight, or refuse."""
        if len(table) < self._max_subjects:
            return
        if not table.free:
            raise StoreUnavailable("regulation memory full")
        key, _ = table.free.popitem(last=False)
        table.drop(key)

    def reserve(self, *, user: str | None, ip: str | None, device: str | None = None,
                clears: bool = True) -> Reservation | Refusal:
        """Count an attempt before it is judged; a :class:`Refusal` (nothing counted) when a
        subject is banned or its budget is in use."""
        p = self._policy
        reservation = Reservation(secrets.token_urlsafe(12),
                                  p.subjects(user, ip, device, clears=clears))
        with self._lock:
            now = self._clock()
            for subject in reservation.subjects:      # all or nothing, first refusal wins
                table = self._tables[subject.kind]
                table.sweep(now, p.find_time)
                state = table.get(subject.key)
                if state is None:
                    self._room(table)
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
                _step(state, "reserve", now, reservation.id, subject,
                      find_time=p.find_time, ban_time=p.ban_time)
                table.place(subject.key, state, now, p.find_time)
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
                for key, state in list(table.items()):
                    if state.ban > now and _matches(state.label, user_label, ip_label):
                        state.ban, state.label, state.fails, state.forget = 0.0, "", [], 0.0
                        table.place(key, state, now, self._policy.find_time)
                        lifted += 1
        return lifted

    def close(self) -> None:
        """Nothing to close (as the Redis engine's ``close``)."""

    async def areserve(self, *, user: str | None, ip: str | None, device: str | None = None,
                       clears: bool = True) -> Reservation | Refusal:
        return self.reserve(user=user, ip=ip, device=device, clears=clears)

    async def afail(self, reservation: Reservation) -> Ban | None:
        return self.fail(reservation)

    async def asucceed(self, reservation: Reservation) -> None:
        self.succeed(reservation)

    async def arelease(self, reservation: Reservation) -> None:
        self.release(reservation)


def regulator_from_settings(settings: Settings
                            ) -> MemoryRegulator | RedisRegulator | SqliteRegulator:
    """The regulator the settings ask for: in Redis whenever a Redis URL is configured
    (``rate_limits.redis_url``, else ``session.redis_url``; keys under
    ``session.redis_key_prefix``), whatever the session store, so every process shares the
    budgets and bans; else in the ``[sqlite]`` file when its path is set (every process of
    the host); else in this process's memory."""
    url = settings.rate_limits.redis_url or settings.session.redis_url
    if url:
        from secure_mw.guards.regulation_redis import RedisRegulator

        return RedisRegulator.from_settings(settings.regulation, url,
                                            prefix=settings.session.redis_key_prefix)
    if settings.sqlite.path:
        from secure_mw._sqlite import database_from_settings
        from secure_mw.guards.regulation_sqlite import SqliteRegulator

        return SqliteRegulator.from_settings(settings.regulation,
                                             database_from_settings(settings.sqlite))
    return MemoryRegulator.from_settings(settings.regulation)


def __getattr__(name: str) -> Any:
    # The Redis engine lives in its own module (redis-py is an optional dependency).
    if name in ("RedisRegulator", "_SCRIPT"):
        from secure_mw.guards import regulation_redis

        return getattr(regulation_redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
