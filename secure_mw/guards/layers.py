"""What the guard middlewares decide, framework-free: both flavours call these.

* :class:`RateLimitLayer` — the ``[rate_limits]`` rules compiled once; per request a flow
  that answers 429 (with ``Retry-After`` and the IETF ``RateLimit`` headers) or lets the
  request through with its ``RateLimit`` headers.
* :class:`RedirectLayer` — the open-redirect guard: redirect parameters of a request
  (400 when unsafe) and ``Location`` headers of a response (replaced by a safe default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from secure_mw._driver import Flow, Op
from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.audit import AuditLogger
from secure_mw.authz.paths import route_path
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError, ConfigProblem, SecureMWError, StoreUnavailable
from secure_mw.guards.attempts import DeviceCookies, LoginAttempts, StoreFailures, Turn
from secure_mw.guards.ratelimit import (
    MemoryRateLimiter,
    RateDecision,
    RateLimiter,
    _Plan,
    limiter_from_settings,
    plan_of,
    rate_headers,
)
from secure_mw.guards.redirect import RedirectPolicy
from secure_mw.guards.regulation import (
    Refusal,
    Regulator,
    regulator_from_settings,
)
from secure_mw.guards.timing import LoginDelay
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.identity import Identity, normalize_username
from secure_mw.session.cookies import CookieJarSpec
from secure_mw.settings import (
    RateLimitsSettings,
    RedirectsSettings,
    Settings,
    SqliteSettings,
    parse_rate_limit,
)

__all__ = ["LoginAttemptError", "LoginGuardLayer", "RateLimitLayer", "RedirectLayer",
           "audit_for", "device_cookies"]

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
    fail_open: bool | None
    protects_credentials: bool
    plan: _Plan       # the limits, validated at start-up

    def applies(self, view: RequestView) -> bool:
        if self.methods:
            # HEAD is served by GET handlers; a WebSocket handshake is a GET.
            method = "GET" if view.method == "HEAD" and "HEAD" not in self.methods \
                else view.method
            if method not in self.methods:
                return False
        return not self.paths or any(p.search(view.route_path) for p in self.paths)

    def key_of(self, view: RequestView, identity: Identity | None) -> str | None:
        if self.key == "ip":
            if not view.client:   # no address (a Unix socket peer): never pool everyone
                _warn_once("rate limits by address skip requests without a client address "
                           "(a Unix-socket peer?); list the proxy in server.trusted_proxies")
                return None
            return f"r{self.index}:ip:{view.client}"
        if self.key == "user":
            if identity:
                return f"r{self.index}:user:{identity.sub}"
            return f"r{self.index}:ip:{view.client}" if view.client else None
        if self.key == "route":
            return f"r{self.index}:route:{view.method} {view.route_path}"
        assert self.key_function is not None
        custom = self.key_function(view, identity)
        return None if custom is None else f"r{self.index}:fn:{custom}"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


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
    :class:`ConfigError` naming the rule).

    When the store cannot answer, a rule fails closed (503) for a request to one of
    ``credential_paths`` (the login endpoints), for a rule with ``protects_credentials`` or
    ``fail_open = false``; otherwise it lets the request through. Either way the decision
    is a ``rate_limit_unavailable`` audit event and is counted in :attr:`without_store`.
    """

    def __init__(self, settings: RateLimitsSettings, *, limiter: RateLimiter | None = None,
                 audit: AuditLogger | None = None, which: str = "all",
                 credential_paths: Iterable[str] = (), key_prefix: str = "secure_mw:",
                 redis_url: str | None = None, sqlite: SqliteSettings | None = None) -> None:
        """``which``: ``"network"`` keeps the rules keyed by address or route (they can run
        before anyone is identified), ``"identity"`` those keyed by user or a function
        (they run after the session), ``"all"`` both. ``key_prefix`` and ``redis_url``
        (else ``rate_limits.redis_url``) describe the Redis store; :meth:`for_app` takes
        all three from the application's settings."""
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
                try:
                    key_function = _key_function(rule.key, f"{where}.key")
                except ConfigError as exc:
                    problems.extend(exc.problems)
                    continue
            network = rule.key in ("ip", "route")
            if (which == "network" and not network) or (which == "identity" and network):
                continue
            limits = parse_rate_limit(rule.limit)
            rules.append(_Rule(index, limits, rule.key, key_function,
                               frozenset(m.upper() for m in rule.methods), paths,
                               rule.fail_open, rule.protects_credentials, plan_of(limits)))
        if problems:
            raise ConfigError(problems)
        self.rules = tuple(rules)
        if limiter is None and rules:
            limiter = limiter_from_settings(settings, prefix=key_prefix, redis_url=redis_url,
                                            sqlite=sqlite)
        self.limiter = limiter
        self.audit = audit_for(audit)
        self.credential_paths = frozenset(credential_paths)
        self.without_store = StoreFailures()

    @classmethod
    def for_app(cls, settings: Settings, **options: Any) -> RateLimitLayer:
        """The layer of an application: its credential endpoints (the built-in login, the
        second factor, the OpenID callback, ``regulation.paths``) fail closed, and Redis keys
        go under ``session.redis_key_prefix`` like every other key of the app."""
        auth = settings.server.auth_prefix
        options.setdefault("credential_paths", [f"{auth}login", f"{auth}2fa",
                                                f"{auth}callback", *settings.regulation.paths])
        options.setdefault("key_prefix", settings.session.redis_key_prefix)
        options.setdefault("redis_url",
                           settings.rate_limits.redis_url or settings.session.redis_url)
        options.setdefault("sqlite", settings.sqlite)
        return cls(settings.rate_limits, **options)

    def _fails_closed(self, rule: _Rule, view: RequestView) -> bool:
        return (rule.protects_credentials or rule.fail_open is False
                or view.route_path in self.credential_paths)

    @property
    def needs_identity(self) -> bool:
        return any(r.key == "user" or r.key_function is not None for r in self.rules)

    def check(self, view: RequestView, identity: Identity | None = None
              ) -> Flow[tuple[Reply | None, RateDecision | None]]:
        """``(429 or 503 reply or None, the decision whose headers go on the response)``:
        :func:`~secure_mw.guards.ratelimit.rate_headers` (or ``rate_lines``) spell them."""
        spoken: RateDecision | None = None
        limiter = self.limiter
        if limiter is None:
            return None, spoken
        for rule in self.rules:
            if not rule.applies(view):
                continue
            key = rule.key_of(view, identity)
            if key is None:
                continue
            try:
                decision = yield Op(limiter.hit, limiter.ahit, key, rule.limits)
            except StoreUnavailable as exc:
                refused = self._unavailable(rule, view, identity, exc)
                if refused is None:
                    continue
                return refused, None
            if not decision.allowed:
                return self._refused(rule, view, identity, decision), None
            spoken = decision   # the last rule that applied speaks
        return None, spoken

    def check_now(self, view: RequestView, identity: Identity | None = None
                  ) -> tuple[Reply | None, RateDecision | None]:
        """:meth:`check` for the in-memory limiter (:attr:`inline`): the same decisions,
        with the limits validated at start-up and no flow to drive."""
        spoken: RateDecision | None = None
        limiter = self.limiter
        if type(limiter) is not MemoryRateLimiter:
            raise TypeError("check_now() is for the in-memory limiter; use check()")
        for rule in self.rules:
            decision = self.count_now(rule, view, identity)
            if decision is None:
                continue
            if not decision.allowed:
                return self._refused(rule, view, identity, decision), None
            spoken = decision   # the last rule that applied speaks
        return None, spoken

    def count_now(self, rule: _Rule, view: RequestView, identity: Identity | None
                  ) -> RateDecision | None:
        """One rule's hit in the in-memory limiter, unaudited: ``None`` when the rule does not
        apply to ``view``. A refused hit counts nothing (only allowed hits are counted;
        like every hit it may drop a drained key, which holds no debt), so a caller may ask
        again through :meth:`check_now`."""
        key = self.key_now(rule, view, identity)
        if key is None:
            return None
        return cast(MemoryRateLimiter, self.limiter).hit_planned(key, rule.plan)

    @staticmethod
    def key_now(rule: _Rule, view: RequestView, identity: Identity | None) -> str | None:
        """The key :meth:`count_now` counts ``view`` under for ``rule``, or ``None`` when the
        rule does not apply: what depends on the request alone, so a caller may keep it."""
        if (rule.methods or rule.paths) and not rule.applies(view):
            return None
        return rule.key_of(view, identity)

    @property
    def inline(self) -> bool:
        """Whether :meth:`check_now` can decide (the limiter is in this process)."""
        return type(self.limiter) is MemoryRateLimiter   # not a subclass that overrides hit

    def _unavailable(self, rule: _Rule, view: RequestView, identity: Identity | None,
                     exc: StoreUnavailable) -> Reply | None:
        """The store is down: None to go on (the rule fails open), or the 503."""
        closed = self._fails_closed(rule, view)
        outcome = "refused" if closed else "allowed"
        self.without_store.add(outcome)
        _event(self.audit, "rate_limit_unavailable", view, identity,
               rule=rule.index, reason=str(exc), outcome=outcome)
        if not closed:
            return None
        return json_reply(503, {"error": "rate_limit_unavailable"},
                          headers=[("retry-after", "5")])

    def _refused(self, rule: _Rule, view: RequestView, identity: Identity | None,
                 decision: RateDecision) -> Reply:
        _event(self.audit, "rate_limited", view, identity, rule=rule.index,
               reason=decision.policy)
        lines = rate_headers(decision)
        if view.wants_html:
            return html_reply(429, "Too many requests",
                              "Please wait a moment before trying again.", headers=lines)
        return json_reply(429, {"error": "rate_limited"}, headers=lines)


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
        # Each parameter as a query may spell it without an escape (a space may be "+").
        self._spellings = tuple(sorted({form for name in self.params
                                        for form in (name, name.replace(" ", "+"))}))
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
        if "*" in view.host:      # the request's own host, literally, never as a pattern
            return False
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
        params = view.query()
        if not params and self._mentions_param(view.query_string):
            # Too long or too many fields to parse: refuse rather than let it through.
            _event(self.audit, "unsafe_redirect", view, identity,
                   reason="unparsable query with a redirect parameter")
            return json_reply(400, {"error": "unsafe_redirect"})
        for name, values in params.items():
            if name in self.params and any(not self._safe(v, view) for v in values):
                _event(self.audit, "unsafe_redirect", view, identity, reason=f"parameter {name}")
                return html_reply(400, "Bad request",
                                  f"The {name} parameter points somewhere this site does not "
                                  "send people.") if view.wants_html else json_reply(
                    400, {"error": "unsafe_redirect", "parameter": name})
        return None

    def names_no_param(self, query: str) -> bool:
        """Whether ``query`` certainly names no redirect parameter, without parsing it: no
        escape (``%``) and no spelling of a parameter's name. :meth:`check_request` has
        nothing to refuse then; ``False`` says only that it must look."""
        return not self.params or not query or (
            "%" not in query and not any(name in query for name in self._spellings))

    def _mentions_param(self, query: str) -> bool:
        return any(f"{name}=" in query for name in self.params)

    def check_refresh(self, value: str, view: RequestView,
                      identity: Identity | None = None) -> str | None:
        """A replacement for an unsafe ``Refresh: N; url=…`` header, or ``None``."""
        _, sep, rest = value.partition(";")
        target = rest.strip()
        if not sep or not target.lower().startswith("url="):
            return None
        url = target[4:].strip().strip("'\"")
        if self._safe(url, view):
            return None
        _event(self.audit, "unsafe_redirect", view, identity, reason="response Refresh")
        return f"{value.partition(';')[0].strip()}; url={self.default}"

    def check_location(self, location: str, view: RequestView,
                       identity: Identity | None = None) -> str | None:
        """A replacement for an unsafe ``Location`` header, or ``None`` when it is safe."""
        if self._safe(location, view):
            return None
        _event(self.audit, "unsafe_redirect", view, identity, reason="response Location")
        return self.default


# -- login endpoints: regulation and timing ---------------------------------------------------


MAX_LOGIN_BODY = 64 * 1024
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json")


class LoginAttemptError(SecureMWError):
    """The attempt cannot be judged: its reply (``status``, ``reason``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def device_cookies(settings: Settings, keyring: KeyRing | None = None,
                   clock: Callable[[], float] = time.time) -> DeviceCookies | None:
    """The device cookies ``regulation.device_lifetime`` asks for (None when 0)."""
    lifetime = settings.regulation.device_lifetime
    if lifetime <= 0:
        return None
    ring = keyring if keyring is not None else KeyRing.from_settings(settings.keys)
    jar = CookieJarSpec(secure=settings.session.cookie_secure,
                        domain=settings.session.cookie_domain)
    # Bound to the application (its key prefix) as well as to the cookie's name.
    return DeviceCookies(ring, jar, settings.session.cookie_name,
                         purpose=settings.session.redis_key_prefix, lifetime=lifetime,
                         clock=clock)


class LoginGuardLayer:
    """Brute-force regulation and enumeration-resistant timing for an app's own login
    endpoints (``POST`` to one of ``paths``).

    * The user name is read from the form (``application/x-www-form-urlencoded``) or JSON
      (``application/json``, ``application/*+json``) field ``username_field``. An attempt
      whose name is missing, given twice, or in another body type is refused with 400
      without reaching the app: the guard must see the name the app will use. So is one
      whose query string carries the name or the password field (an app reading both, as
      Flask's ``request.values``, would take the query's).
    * Each attempt is reserved (:class:`~secure_mw.guards.attempts.LoginAttempts`) before
      the app sees it: parallel attempts beyond a subject's budget get 429 at once.
    * A banned attempt still reaches the app, with the password field replaced by random
      text, so its answer is the app's genuine wrong-password answer (cookies, tokens and
      all) — not counted, not a replay of somebody else's.
    * The login delay holds every judged attempt from the moment it is reserved (after the
      body is read), so a slow upload cannot stretch everybody's delay.
    * The app's verdict fails closed (:meth:`succeeded`): a success is a status among
      ``success_statuses`` that is not the login form again (a 2xx HTML page, or a redirect
      to one of ``paths``); every other answer — and an exception — is a failure. A success
      gets the device cookie; it clears the failures of other spellings of the name only
      when ``names_folded`` says the app compares names as the guard folds them.
    * Regulation store unreachable, at the reservation or when a failure is recorded: 503,
      fail closed.
    """

    def __init__(self, settings: Settings, *, paths: Iterable[str] = ("/login",),
                 username_field: str = "username",
                 password_field: str = "password",  # noqa: S107 - a field name
                 success_statuses: Iterable[int] | None = None,
                 names_folded: bool | None = None,
                 regulator: Regulator | None = None, delay: LoginDelay | None = None,
                 keyring: KeyRing | None = None, devices: DeviceCookies | None = None,
                 audit: AuditLogger | None = None) -> None:
        """``success_statuses`` and ``names_folded`` default to ``regulation``'s."""
        self.paths = frozenset(paths)
        self.username_field = username_field
        self.password_field = password_field
        self.success_statuses = frozenset(
            settings.regulation.success_statuses if success_statuses is None
            else success_statuses)
        self.names_folded = settings.regulation.names_folded if names_folded is None \
            else bool(names_folded)
        self.regulator = regulator if regulator is not None else regulator_from_settings(settings)
        self.delay = delay or LoginDelay()
        self.audit = audit_for(audit)
        if devices is None:
            devices = device_cookies(settings, keyring)
        self.attempts = LoginAttempts(self.regulator, devices=devices, audit=self.audit)

    @property
    def without_store(self) -> StoreFailures:
        """Decisions made without the regulation store (all refusals or unrecorded
        successes), by outcome."""
        return self.attempts.without_store

    def applies(self, view: RequestView) -> bool:
        return view.method == "POST" and view.route_path in self.paths

    def _fields(self, view: RequestView) -> tuple[str, list[tuple[str, Any]]]:
        content_type = view.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        body = view.body
        if content_type == "application/x-www-form-urlencoded":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise LoginAttemptError(400, "form body is not UTF-8") from None
            return "form", parse_qsl(text, keep_blank_values=True)
        if _JSON_TYPE.fullmatch(content_type):
            if body.startswith(b"\xef\xbb\xbf"):
                body = body[3:]
            try:
                data = loads_strict(body)
            except StrictJSONError:
                raise LoginAttemptError(400, "JSON body unreadable or with repeated keys") \
                    from None
            if not isinstance(data, dict):
                raise LoginAttemptError(400, "JSON body is not an object")
            return "json", list(data.items())
        raise LoginAttemptError(415, f"login body of type {content_type or 'none'!r}")

    def username(self, view: RequestView) -> str:
        """The normalized user name of the attempt; :class:`LoginAttemptError` when the
        guard cannot be sure which name the app will see."""
        return self.names(view)[0]

    def names(self, view: RequestView) -> tuple[str, str]:
        """The attempt's user name, normalized (what it is counted for) and exactly as sent
        (what a device cookie names); :class:`LoginAttemptError` when the guard cannot be
        sure which name and password the app will see."""
        self._refuse_query_credentials(view)
        _kind, pairs = self._fields(view)
        values = [v for k, v in pairs if k == self.username_field]
        if len(values) != 1:
            raise LoginAttemptError(400, "user name missing or given more than once")
        value = values[0]
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            raise LoginAttemptError(400, "user name missing or not a string")
        return normalize_username(value), value

    def _refuse_query_credentials(self, view: RequestView) -> None:
        query = view.query_string
        if not query:
            return
        params = view.query()
        if not params and any(c in query for c in "=&;"):
            raise LoginAttemptError(400, "query string of a login too large to check")
        for field in (self.username_field, self.password_field):
            if field in params:
                raise LoginAttemptError(400, f"credentials in the query string ({field})")

    def decoy_body(self, view: RequestView) -> bytes:
        """The attempt's body with the password replaced by random text (for a banned
        attempt: the app's answer is then a genuine failure)."""
        kind, pairs = self._fields(view)
        decoy = secrets.token_urlsafe(24)
        replaced = [(k, decoy if k == self.password_field else v) for k, v in pairs]
        if kind == "form":
            return urlencode(replaced).encode()
        return json.dumps(dict(replaced)).encode()

    def begin(self, view: RequestView, user: str, spelling: str | None = None) -> Flow[Turn]:
        """Reserve the attempt of ``user`` (normalized; ``spelling``: as sent) —
        :class:`StoreUnavailable` when the store is down."""
        if self.names_folded or spelling is None:
            return (yield from self.attempts.begin(view, user))
        return (yield from self.attempts.begin(view, user, spelling=spelling, clears=False))

    def succeeded(self, status: int, content_type: str = "", location: str = "") -> bool:
        """Whether the app's answer says the login succeeded: its status is one of
        ``success_statuses`` and it is not the login form again — neither a 2xx HTML page
        (a form shown again with its error, as Django's ``LoginView`` answers) nor a
        redirect back to one of ``paths``. Everything else is a failure."""
        if status not in self.success_statuses:
            return False
        if 200 <= status < 300:
            media = content_type.split(";", 1)[0].strip().lower()
            return media not in ("text/html", "application/xhtml+xml")
        if 300 <= status < 400 and location:
            try:
                target = urlsplit(location.strip()).path
            except ValueError:
                return False
            return not target or route_path(target) not in self.paths
        return True

    def settle(self, view: RequestView, turn: Turn, status: int, *, content_type: str = "",
               location: str = "") -> Flow[list[str]]:
        """Tell the regulator what the app decided (see :meth:`succeeded`); the Set-Cookie
        values to add to its answer (the device cookie after a success).
        :class:`StoreUnavailable` when a failure cannot be recorded (answer 503 instead of
        the app's answer)."""
        if not self.succeeded(status, content_type, location):
            yield from self.attempts.failed(turn, view, "rejected by the application")
            return []
        _event(self.audit, "login_success", view, None, user=turn.user)
        return (yield from self.attempts.succeeded(turn, view))

    def crashed(self, view: RequestView, turn: Turn, reason: str) -> Flow[None]:
        """The app raised, or the request was cancelled, before it answered: the attempt
        counts as a failure (with its audit line) — it may have been judged."""
        yield from self.attempts.failed(turn, view, reason)

    def guard(self, view: RequestView, answer: Callable[[bytes], Op]
              ) -> Flow[tuple[Reply | None, list[str]]]:
        """One attempt at the app's login endpoint, the same for both flavours: the user
        name is read, the attempt reserved, the app asked (``answer(body)``: an op that
        calls it with that body, keeps its answer and returns ``(status, content type,
        location)``; a banned subject's attempt sends a decoy password), its verdict
        recorded, and every exit waits for the attempt's delay. Returns the reply that
        replaces the app's answer (None: send the app's) and the Set-Cookie values to add to
        the app's answer. ``view.body`` holds the request body already."""
        try:
            user, spelling = self.names(view)
        except LoginAttemptError as exc:
            attempt = self.delay.start()
            yield Op(attempt.finish, attempt.afinish, success=False)
            return self.refusal(view, exc.status, exc.reason), []
        try:
            turn = yield from self.begin(view, user, spelling)
        except StoreUnavailable as exc:
            return self.refusal(view, 503, str(exc), user), []
        if turn.refusal is not None and turn.refusal.reason == "busy":
            return self.busy(view, turn.refusal), []
        attempt = self.delay.start()
        success = False
        refusal = None
        cookies: list[str] = []
        banned = turn.reservation is None
        try:
            try:
                status, content_type, location = yield answer(
                    self.decoy_body(view) if banned else view.body)
            except BaseException as exc:      # an exception, or the task was cancelled
                if not banned:
                    why = "cancelled" if isinstance(exc, asyncio.CancelledError) else "raised"
                    with contextlib.suppress(StoreUnavailable):   # logged; it expires
                        yield from self.crashed(view, turn,
                                                f"the application {why} before answering")
                raise
            if not banned:
                cookies = yield from self.settle(view, turn, status,
                                                 content_type=content_type, location=location)
                success = self.succeeded(status, content_type, location)
        except StoreUnavailable as exc:
            refusal = self.refusal(view, 503, str(exc), user)
        finally:                     # every exit path waits for the delay
            yield Op(attempt.finish, attempt.afinish, success=success)
        return refusal, cookies

    def busy(self, view: RequestView, refusal: Refusal) -> Reply:
        """429 for an attempt beyond its subject's budget (already logged by begin)."""
        headers = [("retry-after", str(refusal.retry_after(0.0)))]
        if view.wants_html:
            return html_reply(429, "Too many attempts",
                              "Several sign-in attempts are already running. Please wait a "
                              "moment before trying again.", headers=headers)
        return json_reply(429, {"error": "too_many_attempts"}, headers=headers)

    def refusal(self, view: RequestView, status: int, reason: str,
                user: str | None = None) -> Reply:
        _event(self.audit, "login_failure", view, None, user=user, reason=reason)
        error = {400: "bad_request", 413: "too_large", 415: "unsupported_media_type",
                 429: "too_many_attempts", 503: "login_unavailable"}.get(status, "refused")
        return json_reply(status, {"error": error},
                          headers=[("retry-after", "5")] if status in (429, 503) else [])
