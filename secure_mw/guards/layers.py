"""What the guard middlewares decide, framework-free: both flavours call these.

* :class:`RateLimitLayer` — the ``[rate_limits]`` rules compiled once; per request a flow
  that answers 429 (with ``Retry-After`` and the IETF ``RateLimit`` headers) or lets the
  request through with its ``RateLimit`` headers.
* :class:`RedirectLayer` — the open-redirect guard: redirect parameters of a request
  (400 when unsafe) and ``Location`` headers of a response (replaced by a safe default).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any
from urllib.parse import parse_qsl

from secure_mw._driver import Flow, Op
from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.audit import AuditLogger
from secure_mw.errors import ConfigError, ConfigProblem, StoreUnavailable
from secure_mw.guards.ratelimit import RateLimiter, limiter_from_settings, rate_headers
from secure_mw.guards.redirect import RedirectPolicy
from secure_mw.guards.regulation import MemoryRegulator, RedisRegulator, Regulator
from secure_mw.guards.timing import LoginDelay
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.identity import Identity
from secure_mw.settings import (
    RateLimitsSettings,
    RedirectsSettings,
    Settings,
    parse_rate_limit,
)

__all__ = ["LoginGuardLayer", "RateLimitLayer", "RedirectLayer", "audit_for"]

log = logging.getLogger("secure_mw.guards")

KeyFunction = Callable[[RequestView, "Identity | None"], "str | None"]


def audit_for(logger: AuditLogger | None) -> AuditLogger:
    from secure_mw.audit import audit_logger

    return logger or audit_logger()


def _event(audit: AuditLogger, name: str, view: RequestView, identity: Identity | None,
           **fields: Any) -> None:
    fields.setdefault("user", identity.sub if identity else None)
    audit.event(name, remote_ip=view.client, method=view.method, host=view.host,
                path=view.path, **fields)


# -- rate limiting ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    limits: tuple[tuple[int, float], ...]
    key: str
    key_function: KeyFunction | None
    methods: frozenset[str]
    paths: tuple[re.Pattern[str], ...]
    fail_open: bool

    def applies(self, view: RequestView) -> bool:
        if self.methods and view.method not in self.methods:
            return False
        return not self.paths or any(p.search(view.path) for p in self.paths)

    def key_of(self, view: RequestView, identity: Identity | None) -> str | None:
        if self.key == "ip":
            return f"r{self.index}:ip:{view.client}"
        if self.key == "user":
            return f"r{self.index}:user:{identity.sub}" if identity else \
                f"r{self.index}:ip:{view.client}"
        if self.key == "route":
            return f"r{self.index}:route:{view.method} {view.path}"
        assert self.key_function is not None
        custom = self.key_function(view, identity)
        return None if custom is None else f"r{self.index}:fn:{custom}"


def _key_function(path: str, where: str) -> KeyFunction:
    module, _, name = path.rpartition(".")
    try:
        function = getattr(import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError([ConfigProblem(where, f"cannot import the key function {path!r}")]
                          ) from None
    if not callable(function):
        raise ConfigError([ConfigProblem(where, f"{path!r} is not callable")])
    return function  # type: ignore[no-any-return]


class RateLimitLayer:
    """The ``[rate_limits]`` rules, compiled at start-up (a bad regex or key function is a
    :class:`ConfigError` naming the rule)."""

    def __init__(self, settings: RateLimitsSettings, *, limiter: RateLimiter | None = None,
                 audit: AuditLogger | None = None, which: str = "all") -> None:
        """``which``: ``"network"`` keeps the rules keyed by address or route (they can run
        before anyone is identified), ``"identity"`` those keyed by user or a function
        (they run after the session), ``"all"`` both."""
        if which not in ("all", "network", "identity"):
            raise ValueError("which is 'all', 'network' or 'identity'")
        rules = []
        problems = []
        for index, rule in enumerate(settings.rules):
            where = f"rate_limits.rules[{index}]"
            try:
                paths = tuple(re.compile(p) for p in rule.paths)
            except re.error as exc:
                problems.append(ConfigProblem(f"{where}.paths", f"invalid regex: {exc}"))
                continue
            key_function = None
            if rule.key not in ("ip", "user", "route"):
                if "." not in rule.key:
                    problems.append(ConfigProblem(
                        f"{where}.key", "ip, user, route or a dotted path to a function"))
                    continue
                key_function = _key_function(rule.key, f"{where}.key")
            network = rule.key in ("ip", "route")
            if (which == "network" and not network) or (which == "identity" and network):
                continue
            rules.append(_Rule(index, parse_rate_limit(rule.limit), rule.key, key_function,
                               frozenset(m.upper() for m in rule.methods), paths,
                               rule.fail_open))
        if problems:
            raise ConfigError(problems)
        self.rules = tuple(rules)
        if limiter is None and rules:
            limiter = limiter_from_settings(settings)
        self.limiter = limiter
        self.audit = audit_for(audit)

    @property
    def needs_identity(self) -> bool:
        return any(r.key == "user" or r.key_function is not None for r in self.rules)

    def check(self, view: RequestView, identity: Identity | None = None
              ) -> Flow[tuple[Reply | None, list[tuple[str, str]]]]:
        """``(429 reply or None, headers for the response)``."""
        headers: list[tuple[str, str]] = []
        limiter = self.limiter
        if limiter is None:
            return None, headers
        for rule in self.rules:
            if not rule.applies(view):
                continue
            key = rule.key_of(view, identity)
            if key is None:
                continue
            try:
                decision = yield Op(limiter.hit, limiter.ahit, key, rule.limits)
            except StoreUnavailable as exc:
                if rule.fail_open:
                    log.warning("rate limit rule %d not enforced: %s", rule.index, exc)
                    continue
                _event(self.audit, "rate_limit_unavailable", view, identity,
                       rule=rule.index, reason=str(exc))
                return json_reply(503, {"error": "rate_limit_unavailable"},
                                  headers=[("retry-after", "5")]), []
            if not decision.allowed:
                _event(self.audit, "rate_limited", view, identity, rule=rule.index,
                       reason=decision.policy)
                lines = rate_headers(decision)
                if view.wants_html:
                    return html_reply(429, "Too many requests",
                                      "Please wait a moment before trying again.",
                                      headers=lines), []
                return json_reply(429, {"error": "rate_limited"}, headers=lines), []
            headers = rate_headers(decision)   # the last rule that applied speaks
        return None, headers


# -- open redirects ------------------------------------------------------------------------


class RedirectLayer:
    """Redirect targets in requests and responses must stay on allowed hosts.

    The request's own host is always allowed; so are ``extra_hosts`` (secure_mw adds the
    identity provider's host for its own login and logout redirects).
    """

    def __init__(self, settings: RedirectsSettings, *, extra_hosts: Iterable[str] = (),
                 require_https: bool = False, audit: AuditLogger | None = None) -> None:
        hosts = [*settings.allowed_hosts, *extra_hosts]
        try:
            self.policy = RedirectPolicy(hosts, require_https=require_https)
        except ValueError as exc:
            raise ConfigError([ConfigProblem("redirects.allowed_hosts", str(exc))]) from None
        self.params = frozenset(settings.params)
        default = settings.default
        if not RedirectPolicy(settings.allowed_hosts).is_safe(default):
            raise ConfigError([ConfigProblem("redirects.default",
                                             f"{default!r} is not a safe redirect itself")])
        self.default = default
        self.require_https = require_https
        self.audit = audit_for(audit)
        self._own: dict[str, RedirectPolicy] = {}

    def _safe(self, url: str, view: RequestView) -> bool:
        if self.policy.is_safe(url):
            return True
        own = self._own.get(view.host)
        if own is None:
            try:
                own = RedirectPolicy([view.host], require_https=self.require_https)
            except ValueError:
                return False
            if len(self._own) < 64:
                self._own[view.host] = own
        return own.is_safe(url)

    def check_request(self, view: RequestView,
                      identity: Identity | None = None) -> Reply | None:
        """400 when a redirect parameter of the query is not a safe target."""
        if not view.query_string or not self.params:
            return None
        for name, values in view.query().items():
            if name in self.params and any(not self._safe(v, view) for v in values):
                _event(self.audit, "unsafe_redirect", view, identity, reason=f"parameter {name}")
                return html_reply(400, "Bad request",
                                  f"The {name} parameter points somewhere this site does not "
                                  "send people.") if view.wants_html else json_reply(
                    400, {"error": "unsafe_redirect", "parameter": name})
        return None

    def check_location(self, location: str, view: RequestView,
                       identity: Identity | None = None) -> str | None:
        """A replacement for an unsafe ``Location`` header, or ``None`` when it is safe."""
        if self._safe(location, view):
            return None
        _event(self.audit, "unsafe_redirect", view, identity, reason="response Location")
        return self.default


# -- login endpoints: regulation and timing ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Captured:
    """A response the app gave, kept to answer a banned attempt exactly like a failure."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status_line: str | None = None     # WSGI: the reason phrase the app chose


# Replayed as the app sent them (framing included: a banned answer must not differ even in
# Content-Length versus chunked), except what is per-response or would hand out a cookie.
_NOT_REPLAYED = frozenset({"set-cookie", "date", "server"})
MAX_LOGIN_BODY = 64 * 1024
MAX_CAPTURE = 256 * 1024


class LoginGuardLayer:
    """Brute-force regulation and enumeration-resistant timing for an app's own login
    endpoints (``POST`` to one of ``paths``).

    Each attempt is held by the login delay on every exit path; attempts of one user name
    or one address run one at a time in this process, so parallel guesses cannot outrun the
    ban; a banned attempt is not passed to the app and gets exactly the response of the last
    failure the app gave on that path (status, headers, body). The app's verdict is read
    from the status: ``failure_statuses`` (401, 403 by default) are failures, 2xx/3xx
    successes. Regulation store unreachable: 503, fail closed.
    """

    def __init__(self, settings: Settings, *, paths: Iterable[str] = ("/login",),
                 username_field: str = "username",
                 failure_statuses: Iterable[int] = (401, 403),
                 regulator: Regulator | None = None, delay: LoginDelay | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.paths = frozenset(paths)
        self.username_field = username_field
        self.failure_statuses = frozenset(failure_statuses)
        if regulator is None:
            url = settings.rate_limits.redis_url or settings.session.redis_url
            regulator = RedisRegulator.from_settings(settings.regulation, url) \
                if settings.session.store == "redis" and url \
                else MemoryRegulator.from_settings(settings.regulation)
        self.regulator = regulator
        self.delay = delay or LoginDelay()
        self.audit = audit_for(audit)
        self._failures: dict[str, Captured] = {}
        self._locks = _KeyedLocks()

    def applies(self, view: RequestView) -> bool:
        return view.method == "POST" and view.path in self.paths

    def username(self, view: RequestView) -> str | None:
        """The user name of the attempt (form or JSON body), or ``None``."""
        content_type = view.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        body = view.body[:MAX_LOGIN_BODY]
        value: object = None
        try:
            if content_type == "application/x-www-form-urlencoded":
                pairs = parse_qsl(body.decode("utf-8", "replace"), max_num_fields=64)
                value = next((v for k, v in pairs if k == self.username_field), None)
            elif content_type == "application/json":
                data = loads_strict(body)
                value = data.get(self.username_field) if isinstance(data, dict) else None
        except (ValueError, StrictJSONError):
            return None
        if not isinstance(value, str) or not value or len(value) > 256:
            return None
        return value

    def subjects(self, view: RequestView, user: str | None) -> list[str]:
        keys = [f"ip:{view.client}"]
        if user is not None:
            keys.append(f"user:{user.casefold()}")
        return keys

    def check(self, view: RequestView, user: str | None) -> Flow[Reply | None]:
        """The reply for a banned attempt (or ``None``: let the app judge it); its headers
        frame the body already (write them as they are)."""
        reg = self.regulator
        try:
            ban = yield Op(reg.check, reg.acheck, user=user, ip=view.client)
        except StoreUnavailable as exc:
            _event(self.audit, "regulation_unavailable", view, None, user=user,
                   reason=str(exc))
            reply = json_reply(503, {"error": "login_unavailable"},
                               headers=[("retry-after", "5")])
            return reply.with_headers([("content-length", str(len(reply.body)))])
        if ban is None:
            return None
        _event(self.audit, "login_failure", view, None, user=user,
               reason=f"banned ({ban.subject})")
        return self.failure_reply(view.path)

    def failure_reply(self, path: str) -> Reply:
        """Write it exactly as given: its headers already frame the body."""
        captured = self._failures.get(path)
        if captured is None:     # no failure seen yet in this process (bans came from others)
            reply = json_reply(401, {"error": "invalid_credentials"})
            return reply.with_headers([("content-length", str(len(reply.body)))])
        return Reply(captured.status, list(captured.headers), captured.body)

    def failure_status_line(self, path: str, status: int) -> str | None:
        """The app's own status line for the captured failure (if ``status`` is its)."""
        captured = self._failures.get(path)
        return captured.status_line if captured and captured.status == status else None

    def record(self, view: RequestView, user: str | None, status: int,
               headers: Iterable[tuple[str, str]], body: bytes | None, *,
               status_line: str | None = None) -> Flow[None]:
        """Tell the regulator what the app decided (and keep a failure to replay)."""
        reg = self.regulator
        failed = status in self.failure_statuses
        if failed:
            if body is not None:
                self._failures[view.path] = Captured(
                    status, tuple((n, v) for n, v in headers
                                  if n.lower() not in _NOT_REPLAYED), body, status_line)
            _event(self.audit, "login_failure", view, None, user=user,
                   reason="rejected by the application")
            try:
                ban = yield Op(reg.fail, reg.afail, user=user, ip=view.client)
            except StoreUnavailable as exc:
                _event(self.audit, "regulation_unavailable", view, None, user=user,
                       reason=str(exc))
                return None
            if ban is not None:
                _event(self.audit, "ban", view, None, user=user, reason=ban.subject,
                       until=int(ban.until))
        elif 200 <= status < 400:
            _event(self.audit, "login_success", view, None, user=user)
            with contextlib.suppress(StoreUnavailable):   # a success needs no bookkeeping
                yield Op(reg.succeed, reg.asucceed, user=user, ip=view.client)
        return None

    @property
    def locks(self) -> _KeyedLocks:
        return self._locks


class _KeyedLocks:
    """One lock per key, created on demand and dropped when unused. Holds threading locks
    for WSGI and asyncio locks for ASGI (never both for one key at the same time)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[Any, int]] = {}

    def _get(self, key: str, factory: Callable[[], Any]) -> Any:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = factory()
            self._locks[key] = (lock, users + 1)
            return lock

    def _put(self, key: str) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def hold(self, keys: list[str]) -> _Held:
        return _Held(self, sorted(set(keys)))


class _Held:
    def __init__(self, owner: _KeyedLocks, keys: list[str]) -> None:
        self.owner = owner
        self.keys = keys
        self.taken: list[tuple[str, Any]] = []

    def __enter__(self) -> None:
        for key in self.keys:        # sorted: no two attempts wait for each other in a cycle
            lock = self.owner._get(key, threading.Lock)
            lock.acquire()
            self.taken.append((key, lock))

    def __exit__(self, *exc: object) -> None:
        for key, lock in reversed(self.taken):
            lock.release()
            self.owner._put(key)
        self.taken.clear()

    async def __aenter__(self) -> None:
        import asyncio

        for key in self.keys:
            lock = self.owner._get(key, asyncio.Lock)
            await lock.acquire()
            self.taken.append((key, lock))

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()
