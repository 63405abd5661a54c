"""The regulated login attempt, written once for every login endpoint: reserve the attempt
before the password is checked, settle it after, and the device cookie that lets a user who
logged in from this browser before pass a ban of their name.

::

    attempts = LoginAttempts(regulator, devices=DeviceCookies(keyring, jar, "app"))
    turn = yield from attempts.begin(view, user)        # StoreUnavailable: answer 503
    if turn.refusal is not None:
        ...  # banned (answer as a wrong password) or busy (429)
    elif password_ok:
        cookies = yield from attempts.succeeded(turn, view)   # Set-Cookie: the device cookie
    else:
        yield from attempts.failed(turn, view, "invalid credentials")   # may raise

The built-in login (:mod:`secure_mw.login.core`) and the login guard
(:class:`~secure_mw.guards.layers.LoginGuardLayer`) both run this sequence. Every step that
cannot reach the regulation store is an audit event (``regulation_unavailable``) and is
counted in :attr:`LoginAttempts.without_store`; a reservation or a failure that cannot be
written refuses the attempt (503), a success that cannot be written stands (its reservation
expires with ``find_time``). An attempt without a client address counts for the one shared
subject :data:`UNKNOWN_ADDRESS` (logged once).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from secure_mw._driver import Flow, Op
from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import DecryptError, StoreUnavailable
from secure_mw.guards.regulation import Ban, Refusal, Regulator, Reservation
from secure_mw.http import RequestView
from secure_mw.session.cookies import CookieJarSpec
from secure_mw.session.memory_store import SiblingWorkers

__all__ = ["UNKNOWN_ADDRESS", "DeviceCookies", "LoginAttempts", "StoreFailures", "Turn"]

log = logging.getLogger("secure_mw.guards")

#: Longest accepted device cookie value (a sealed name of at most 256 characters fits).
_MAX_COOKIE = 2048
#: The address an attempt without one (a Unix-socket peer, a proxy that did not say) is
#: counted for: all such attempts share one address budget.
UNKNOWN_ADDRESS: Final = "unknown"


class StoreFailures:
    """How many decisions were made without the store, by outcome (``"refused"``,
    ``"allowed"``, ``"unrecorded"``): a thread-safe counter a layer exposes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1

    def __getitem__(self, outcome: str) -> int:
        return self._counts.get(outcome, 0)

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"StoreFailures({self.as_dict()!r})"


class DeviceCookies:
    """An encrypted, purpose-bound cookie naming the user who logged in from this browser
    and a random device id (OWASP's "device cookie"). It authenticates nobody: it only
    chooses the counter an attempt for that same user name is regulated by.

    It is sealed for its cookie name and ``purpose`` (the application: its key prefix), so
    another application sharing the key ring does not accept it, and it names the user
    exactly as the caller gives the name (the login guard: as the app was sent it), so a
    login as ``ALICE`` gives no cookie for ``alice``."""

    def __init__(self, keyring: KeyRing, jar: CookieJarSpec, base_name: str, *,
                 purpose: str = "", lifetime: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not lifetime > 0:
            raise ValueError("a device cookie lifetime must be positive")
        self.keyring = keyring
        self.jar = jar
        self.name = jar.name(f"{base_name}_device")
        self.lifetime = float(lifetime)
        self._aad = json.dumps(["secure_mw/device", self.name, purpose]).encode()
        self._clock = clock

    def read(self, view: RequestView, user: str, *, not_before: float = 0.0) -> str | None:
        """The device id of the request's cookie when it is valid, names exactly ``user``
        and was issued at or after ``not_before`` (a user added again under the name, or
        whose sessions were ended, keeps no device of before)."""
        raw = view.cookies.get(self.name)
        if not raw or len(raw) > _MAX_COOKIE:
            return None
        try:
            item = loads_strict(self.keyring.decrypt(raw, self._aad))
        except (DecryptError, StrictJSONError):
            return None
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str) and isinstance(item[2], int | float)
                and not isinstance(item[2], bool)):
            return None
        name, device, issued = item
        if not 0 <= self._clock() - issued < self.lifetime or issued < not_before:
            return None
        if not hmac.compare_digest(name.encode("utf-8", "surrogatepass"),
                                   user.encode("utf-8", "surrogatepass")):
            return None
        return str(device)

    def issue(self, user: str, device: str | None = None) -> str:
        """The Set-Cookie value naming ``user`` exactly (and ``device``, else a new id)."""
        data = json.dumps([user, device or secrets.token_urlsafe(16),
                           self._clock()], separators=(",", ":")).encode()
        return self.jar.set(self.name, self.keyring.encrypt(data, self._aad),
                            max_age=int(self.lifetime), same_site="Strict")


@dataclass(slots=True)
class Turn:
    """One attempt between :meth:`LoginAttempts.begin` and its settlement: ``device`` is
    the id of the request's valid device cookie (regulating the attempt unless ``begin``
    was told otherwise), ``spelling`` the name a device cookie issued for it names."""

    user: str | None
    device: str | None
    reservation: Reservation | None
    refusal: Refusal | None
    spelling: str | None = None


class _Workers(SiblingWorkers):
    """The memory store's detection of sibling worker processes, with regulation's own
    warning: budgets kept in one process are multiplied by the number of workers."""

    def _once(self, message: str, level: int) -> None:
        if self.siblings and not message.startswith("cannot check"):
            pids = ", ".join(str(p) for p in sorted({os.getpid(), *self.siblings}))
            message = (
                f"login regulation (budgets and bans) and used TOTP codes are kept in this "
                f"process's memory while several worker processes of this server serve "
                f"(pids {pids}): each worker counts its own budgets, so every budget is "
                "multiplied by the number of workers. Set sqlite.path to keep them in a "
                "file every worker of this host shares, or rate_limits.redis_url or "
                "session.redis_url to keep them in Redis, or run one worker")
        super()._once(message, level)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class LoginAttempts:
    """The reserve-then-settle sequence of a login endpoint; see the module docstring."""

    def __init__(self, regulator: Regulator, *, devices: DeviceCookies | None = None,
                 audit: AuditLogger | None = None) -> None:
        from secure_mw.audit import audit_logger

        self.regulator = regulator
        self.devices = devices
        self.audit = audit or audit_logger()
        self.without_store = StoreFailures()
        # Budgets in this process only: say so when sibling workers serve too.
        self.workers = None if getattr(regulator, "shared", True) else \
            _Workers("secure_mw regulation", explicit=True)

    def _event(self, name: str, view: RequestView, user: str | None, **fields: Any) -> None:
        self.audit.event(name, remote_ip=view.client, method=view.method, host=view.host,
                         path=view.path, user=user, **fields)

    def _unavailable(self, view: RequestView, user: str | None, exc: StoreUnavailable,
                     step: str, outcome: str) -> None:
        self.without_store.add(outcome)
        self._event("regulation_unavailable", view, user, reason=str(exc), step=step,
                    outcome=outcome)

    def begin(self, view: RequestView, user: str | None, *, spelling: str | None = None,
              device: bool = True, not_before: float = 0.0,
              clears: bool = True) -> Flow[Turn]:
        """Reserve the attempt of ``user`` (None: by address only); the refusal, if any, is
        logged. :class:`StoreUnavailable` when the store cannot answer (refuse: 503).

        ``spelling``: the name exactly as the app uses it, which a device cookie must name
        (default ``user``); ``device`` False: a device cookie does not choose the counters
        (a second factor is regulated by the user's budgets); ``not_before``: device cookies
        issued earlier are ignored; ``clears`` False: a success keeps the failures of the
        pair and the name (see :meth:`~secure_mw.guards.regulation._Policy.subjects`)."""
        spelling = user if spelling is None else spelling
        found = self.devices.read(view, spelling, not_before=not_before) \
            if self.devices is not None and user and spelling else None
        if not view.client:
            _warn_once("a login attempt without a client address (a Unix-socket peer, or a "
                       "trusted proxy that did not say): every such attempt shares one "
                       "address budget. List the proxy in server.trusted_proxies (\"unix\" "
                       "for a Unix socket) so the real address is used")
        if self.workers is not None:
            self.workers.check(view.listener())
        reg = self.regulator
        try:
            outcome = yield Op(reg.reserve, reg.areserve, user=user,
                               ip=view.client or UNKNOWN_ADDRESS,
                               device=found if device else None, clears=clears)
        except StoreUnavailable as exc:
            self._unavailable(view, user, exc, "reserve", "refused")
            raise
        if isinstance(outcome, Refusal):
            why = "banned" if outcome.reason == "banned" else "attempts in flight"
            self._event("login_failure", view, user, reason=f"{why} ({outcome.subject})")
            return Turn(user, found, None, outcome, spelling)
        return Turn(user, found, outcome, None, spelling)

    def succeeded(self, turn: Turn, view: RequestView, *,
                  complete: bool = True) -> Flow[list[str]]:
        """Settle a success; the Set-Cookie values to add (the device cookie). ``complete``
        False: a first factor passed and another is still due — the reservation is freed,
        the failures are kept and no device cookie is issued (it is issued once every factor
        passed)."""
        assert turn.reservation is not None
        if not complete:
            yield from self.released(turn, view)
            return []
        reg = self.regulator
        try:
            yield Op(reg.succeed, reg.asucceed, turn.reservation)
        except StoreUnavailable as exc:   # the success stands; the reservation expires
            self._unavailable(view, turn.user, exc, "succeed", "unrecorded")
        if self.devices is None or not turn.spelling:
            return []
        return [self.devices.issue(turn.spelling, turn.device)]

    def failed(self, turn: Turn, view: RequestView, reason: str) -> Flow[Ban | None]:
        """Settle a failure (logged with ``reason``); the ban it started, logged too.
        :class:`StoreUnavailable` when it cannot be recorded: the caller answers 503, and
        the reservation keeps counting until ``find_time`` has passed."""
        assert turn.reservation is not None
        self._event("login_failure", view, turn.user, reason=reason)
        reg = self.regulator
        try:
            ban = yield Op(reg.fail, reg.afail, turn.reservation)
        except StoreUnavailable as exc:
            self._unavailable(view, turn.user, exc, "fail", "refused")
            raise
        if not isinstance(ban, Ban):
            return None
        self._event("ban", view, turn.user, reason=ban.subject, until=int(ban.until))
        return ban

    def released(self, turn: Turn, view: RequestView) -> Flow[None]:
        """The attempt was not judged (the app answered neither success nor failure)."""
        if turn.reservation is None:
            return None
        reg = self.regulator
        try:
            yield Op(reg.release, reg.arelease, turn.reservation)
        except StoreUnavailable as exc:
            self._unavailable(view, turn.user, exc, "release", "unrecorded")
        return None
