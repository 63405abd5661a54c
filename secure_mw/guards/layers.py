"""What the guard middlewares decide, framework-free: both flavours call these.

* :class:`RateLimitLayer` — the ``[rate_limits]`` rules compiled once; per request a flow
  that answers 429 (with ``Retry-After`` and the IETF ``RateLimit`` headers) or lets the
  request through with its ``RateLimit`` headers.
* :class:`RedirectLayer` — the open-redirect guard: redirect parameters of a request
  (400 when unsafe) and ``Location`` headers of a response (replaced by a safe default).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from secure_mw._driver import Flow, Op
from secure_mw.audit import AuditLogger
from secure_mw.errors import ConfigError, ConfigProblem, StoreUnavailable
from secure_mw.guards.ratelimit import RateLimiter, limiter_from_settings, rate_headers
from secure_mw.guards.redirect import RedirectPolicy
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.identity import Identity
from secure_mw.settings import RateLimitsSettings, RedirectsSettings, parse_rate_limit

__all__ = ["RateLimitLayer", "RedirectLayer", "audit_for"]

log = logging.getLogger("secure_mw.guards")

KeyFunction = Callable[[RequestView, "Identity | None"], "str | None"]


def audit_for(logger: AuditLogger | None) -> AuditLogger:
    from secure_mw.audit import audit_logger

    return logger or audit_logger()


def _event(audit: AuditLogger, name: str, view: RequestView, identity: Identity | None,
           **fields: Any) -> None:
    audit.event(name, remote_ip=view.client, method=view.method, host=view.host,
                path=view.path, user=identity.sub if identity else None, **fields)


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
