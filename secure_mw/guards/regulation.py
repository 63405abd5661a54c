"""Regulation: ban a user name or a client address after repeated failed logins.

::

    regulator = MemoryRegulator.from_settings(settings.regulation)   # or RedisRegulator
    ban = regulator.check(user=name, ip=client_ip)    # before looking at the password
    if ban is not None:
        ...  # refuse without checking the password; the ban lasts until ban.until
    elif password_ok:
        regulator.succeed(user=name, ip=client_ip)
    else:
        regulator.fail(user=name, ip=client_ip)       # the Ban it caused, or None

Authelia's model: when ``max_retries`` failures of one *subject* fall within ``find_time``
seconds, the subject is banned for ``ban_time`` seconds. Subjects are the user name and the
client address, each counted on its own (``modes`` chooses which: ``["user", "ip"]`` by
default), and a login is refused while either is banned. Every method has an ``a…`` variant
for asyncio, so a request flow can yield ``Op(reg.check, reg.acheck, user=..., ip=...)``.

* **Failures** older than ``find_time`` do not count. The failure that reaches
  ``max_retries`` starts the ban and clears the count; failures recorded during a ban are
  ignored (they neither extend the ban nor count afterwards) and :meth:`fail` returns the
  ban only to the call that caused it, so "banned" is logged once.
* **Success** (a decision, as Authelia keeps a history instead): :meth:`succeed` clears the
  *user's* failures, not the address's. A user who mistypes twice and then logs in starts
  afresh, but an attacker spraying passwords over many names from one address cannot reset
  the address's count by logging in to an account of their own between guesses. A success
  does not lift a ban (a banned login is refused before the password is checked).
* **Subjects** are normalized: user names are compared case-insensitively
  (``str.casefold``), so ``Alice`` and ``ALICE`` share one count; an IPv6 address counts
  for its whole /64 (one host usually holds a whole /64) and an IPv4-mapped IPv6 address
  as its IPv4 address. Anything else counts as the string given.
* **Memory** (:class:`MemoryRegulator`): thread-safe, injectable clock (``time.time`` by
  default, so ``Ban.until`` is a Unix time), at most ``max_subjects`` subjects in least
  recently used order (the least recently seen is forgotten first when full).
* **Redis** (:class:`RedisRegulator`): each subject has two keys under one hash tag,
  ``{prefix}reg:{<tag>}:ban`` and ``...:fails``, with ``<tag> = base64url(SHA-256(kind:
  subject))[:22]`` (no user name or address reaches Redis). :meth:`~RedisRegulator.fail`
  runs one Lua script per subject — ``TIME``, ``GET`` of the ban, ``LRANGE`` of the last
  ``max_retries - 1`` failures, then either ``SET ... PX ban_time`` + ``DEL`` (ban) or
  ``LPUSH`` + ``LTRIM`` + ``PEXPIRE find_time`` — so parallel failures of one subject are
  serialized by Redis and cannot exceed ``max_retries``; the user's and the address's
  counts are independent, so one atomic script each suffices (and keeps every script within
  one Cluster slot). :meth:`~RedisRegulator.check` is one pipelined round trip of a ``GET``
  per subject; :meth:`~RedisRegulator.succeed` one ``DEL``. A ban key expires with the
  ban; a failures key ``find_time`` after the last failure. Times are the server's clock.
  Any Redis error raises :class:`~secure_mw.errors.StoreUnavailable` naming only
  ``host:port``: fail closed, the caller refuses the login (503).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from secure_mw.guards.regulation_redis import RedisRegulator
    from secure_mw.settings import RegulationSettings, Settings

__all__ = ["Ban", "MemoryRegulator", "RedisRegulator", "Regulator", "regulator_from_settings"]

_MODES: Final = ("user", "ip")


@dataclass(frozen=True)
class Ban:
    """``subject`` (``"user"`` or ``"ip"``) is banned until ``until`` (the regulator's clock:
    Unix time by default for memory, the server's Unix time for Redis)."""

    subject: str
    until: float


class Regulator(Protocol):
    """What a login endpoint needs of a regulator."""

    def check(self, *, user: str | None, ip: str | None) -> Ban | None: ...
    def fail(self, *, user: str | None, ip: str | None) -> Ban | None: ...
    def succeed(self, *, user: str | None, ip: str | None) -> None: ...
    async def acheck(self, *, user: str | None, ip: str | None) -> Ban | None: ...
    async def afail(self, *, user: str | None, ip: str | None) -> Ban | None: ...
    async def asucceed(self, *, user: str | None, ip: str | None) -> None: ...


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


def _latest(bans: Iterable[Ban]) -> Ban | None:
    found = None
    for ban in bans:
        if found is None or ban.until > found.until:
            found = ban
    return found


class _Policy:
    """Settings and subject normalization shared by both regulators."""

    __slots__ = ("ban_time", "find_time", "max_retries", "modes")

    def __init__(self, *, max_retries: int, find_time: float, ban_time: float,
                 modes: Sequence[str]) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError("max_retries must be a positive integer")
        for name, value in (("find_time", find_time), ("ban_time", ban_time)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a positive number of seconds")
        if isinstance(modes, str) or not set(modes) <= set(_MODES):
            raise ValueError("modes are 'user' and/or 'ip'")
        self.max_retries = max_retries
        self.find_time = float(find_time)
        self.ban_time = float(ban_time)
        self.modes = frozenset(modes)

    def subjects(self, user: str | None, ip: str | None) -> list[tuple[str, str]]:
        """``[(kind, normalized subject)]`` of the regulated, non-None subjects."""
        out = []
        if user is not None and "user" in self.modes:
            if not isinstance(user, str):
                raise TypeError("user must be a string or None")
            out.append(("user", user.casefold()))
        if ip is not None and "ip" in self.modes:
            if not isinstance(ip, str):
                raise TypeError("ip must be a string or None")
            out.append(("ip", _ip_subject(ip)))
        return out


# ---------------------------------------------------------------------------------------------
# memory


class _Record:
    __slots__ = ("banned_until", "failures")

    def __init__(self, keep: int) -> None:
        self.failures: deque[float] = deque(maxlen=keep)
        self.banned_until = 0.0


class MemoryRegulator:
    """Regulation in this process; see the module docstring."""

    __slots__ = ("_clock", "_lock", "_max_subjects", "_policy", "_records")
    nonblocking = True   # never waits on I/O: called inline under ASGI

    def __init__(self, *, max_retries: int = 3, find_time: float = 120.0,
                 ban_time: float = 300.0, modes: Sequence[str] = _MODES,
                 max_subjects: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        if (isinstance(max_subjects, bool) or not isinstance(max_subjects, int)
                or max_subjects <= 0):
            raise ValueError("max_subjects must be a positive integer")
        self._policy = _Policy(max_retries=max_retries, find_time=find_time,
                               ban_time=ban_time, modes=modes)
        self._max_subjects = max_subjects
        self._clock = clock
        self._lock = threading.Lock()
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: RegulationSettings, **kwargs: Any) -> MemoryRegulator:
        return cls(max_retries=settings.max_retries, find_time=settings.find_time,
                   ban_time=settings.ban_time, modes=settings.modes, **kwargs)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"MemoryRegulator(subjects={len(self._records)}, max={self._max_subjects})"

    def check(self, *, user: str | None, ip: str | None) -> Ban | None:
        """The ban in force for the user or the address (the longer of two), or None."""
        subjects = self._policy.subjects(user, ip)
        with self._lock:
            now = self._clock()
            bans = []
            for subject in subjects:
                record = self._records.get(subject)
                if record is not None and record.banned_until > now:
                    bans.append(Ban(subject[0], record.banned_until))
        return _latest(bans)

    def fail(self, *, user: str | None, ip: str | None) -> Ban | None:
        """Record a failed attempt; the ban it caused (the longer of two), or None."""
        policy = self._policy
        subjects = policy.subjects(user, ip)
        bans = []
        with self._lock:
            now = self._clock()
            horizon = now - policy.find_time
            for subject in subjects:
                record = self._records.get(subject)
                if record is None:
                    if len(self._records) >= self._max_subjects:
                        self._records.popitem(last=False)
                    record = self._records[subject] = _Record(max(policy.max_retries - 1, 1))
                else:
                    self._records.move_to_end(subject)
                if record.banned_until > now:
                    continue  # already banned: not counted, not extended
                count = 1 + sum(1 for at in record.failures if at > horizon)
                if count >= policy.max_retries:
                    record.banned_until = now + policy.ban_time
                    record.failures.clear()
                    bans.append(Ban(subject[0], record.banned_until))
                else:
                    record.failures.append(now)
        return _latest(bans)

    def succeed(self, *, user: str | None, ip: str | None) -> None:
        """Clear the user's failures (not the address's; a ban stays)."""
        subjects = self._policy.subjects(user, None)
        with self._lock:
            for subject in subjects:
                record = self._records.get(subject)
                if record is not None:
                    record.failures.clear()

    async def acheck(self, *, user: str | None, ip: str | None) -> Ban | None:
        return self.check(user=user, ip=ip)

    async def afail(self, *, user: str | None, ip: str | None) -> Ban | None:
        return self.fail(user=user, ip=ip)

    async def asucceed(self, *, user: str | None, ip: str | None) -> None:
        self.succeed(user=user, ip=ip)


def regulator_from_settings(settings: Settings) -> Regulator:
    """The regulator the settings ask for: in Redis when sessions are (``rate_limits.
    redis_url``, else ``session.redis_url``), so every process shares bans; else in memory."""
    url = settings.rate_limits.redis_url or settings.session.redis_url
    if settings.session.store == "redis" and url:
        from secure_mw.guards.regulation_redis import RedisRegulator

        return RedisRegulator.from_settings(settings.regulation, url)
    return MemoryRegulator.from_settings(settings.regulation)


def __getattr__(name: str) -> Any:
    # The Redis engine lives in its own module (redis-py is an optional dependency).
    if name in ("RedisRegulator", "_FAIL"):
        from secure_mw.guards import regulation_redis

        return getattr(regulation_redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
