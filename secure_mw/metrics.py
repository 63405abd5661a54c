"""Prometheus metrics and OpenTelemetry spans of the decisions secure_mw makes.

``[metrics] enabled = true`` builds an :class:`Observer` that counts, in prometheus_client's
registry (extra ``metrics``), every audited decision by layer and outcome, logins and login
failures by reason, bans, rate-limited requests, the latency and errors of every store call,
and the latency secure_mw adds to a request; ``[metrics] tracing = true`` gives each request
one OpenTelemetry span with an event per decision (extra ``otel``). Label values come from
fixed sets (layers, outcomes, reason codes, store roles, rule numbers): never a user name,
path, address or token. :func:`metrics_app` is the ASGI or WSGI app that exposes the registry.
The list of metrics is in docs/observability.md.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final

from secure_mw import _observe
from secure_mw._observe import Observation
from secure_mw.errors import ConfigError, ConfigProblem, StoreUnavailable
from secure_mw.settings import Settings

__all__ = ["LOGIN_FAILURE_REASONS", "Observer", "metrics_app", "observer_from_settings"]

PREFIX: Final = "secure_mw_"

#: audit event -> (layer, outcome); an event not listed counts as ("other", "other").
_DECISIONS: Final[Mapping[str, tuple[str, str]]] = {
    "host_refused": ("host", "refused"),
    "path_refused": ("host", "refused"),
    "rate_limited": ("rate_limit", "refused"),
    "unsafe_redirect": ("redirect", "refused"),
    "authorization_denied": ("authorization", "deny"),
    "login_success": ("login", "success"),
    "login_failure": ("login", "failure"),
    "ban": ("regulation", "ban"),
    "invalid_token": ("signed_headers", "refused"),
    "invalid_session_cookie": ("session", "invalid_cookie"),
    "session_record_unreadable": ("session", "unreadable"),
    "session_too_large": ("session", "too_large"),
    "store_unavailable": ("session", "store_unavailable"),
    "session_ended": ("session", "ended"),
    "session_updated": ("session", "updated"),
    "session_refresh_pending": ("session", "refresh_pending"),
    "csrf_failure": ("session", "csrf_failure"),
    "bad_request": ("session", "bad_request"),
    "logout": ("session", "logout"),
    "totp_enrolled": ("login", "totp_enrolled"),
    "token_revocation_failed": ("session", "revocation_failed"),
    "idp_logout_failed": ("session", "idp_logout_failed"),
    "backchannel_logout": ("session", "backchannel_logout"),
    "backchannel_logout_refused": ("session", "logout_token_refused"),
    "frontchannel_logout": ("session", "frontchannel_logout"),
    "frontchannel_logout_refused": ("session", "frontchannel_logout_refused"),
}
#: Events whose ``outcome`` field (from a fixed set) refines the outcome.
_UNAVAILABLE: Final[Mapping[str, str]] = {
    "rate_limit_unavailable": "rate_limit", "regulation_unavailable": "regulation"}
_UNAVAILABLE_OUTCOMES: Final = frozenset({"allowed", "refused", "unrecorded"})
#: The effects a refusal keeps as its outcome (a two_factor rule that cannot step up: deny).
_EFFECTS: Final = frozenset({"deny", "bad_request"})
_BAN_SUBJECTS: Final = frozenset({"pair", "user", "ip", "device", "devices"})

#: The reason codes of ``secure_mw_login_failures_total``: the audit line's reason, by its
#: leading words (the rest may name a subject or an error and never becomes a label).
LOGIN_FAILURE_REASONS: Final[tuple[tuple[str, str], ...]] = (
    ("invalid credentials", "invalid_credentials"),
    ("rejected by the application", "invalid_credentials"),
    ("banned", "banned"),
    ("attempts in flight", "busy"),
    ("second factor: wrong code", "wrong_code"),
    ("second factor: bad enrolment", "bad_enrolment"),
    ("sign-in form expired or forged", "form_expired"),
    ("sign-in form used twice", "form_replayed"),
    ("callback without", "bad_callback"),
    ("unknown, expired or replayed state", "bad_state"),
    ("replayed state", "bad_state"),
    ("provider error", "provider_error"),
    ("authorization response iss mismatch", "issuer_mismatch"),
    ("code refused", "code_refused"),
    ("id_token refused", "id_token_refused"),
    ("user name", "bad_request"),
    ("form body", "bad_request"),
    ("JSON body", "bad_request"),
    ("login body", "bad_request"),
    ("query string", "bad_request"),
    ("credentials in the query string", "bad_request"),
    ("no answer", "app_error"),
)
_STORE_FAILURE: Final = re.compile(r"\bunavailable\b")

#: Classes whose calls are store calls: class name -> (store, engine). Calls of other
#: objects (password hashing, the login delay, token checks) are not store latency.
_STORES: Final[Mapping[str, tuple[str, str]]] = {
    "RedisSessionStore": ("session", "redis"),
    "MemorySessionStore": ("session", "memory"),
    "RedisRateLimiter": ("rate_limits", "redis"),
    "MemoryRateLimiter": ("rate_limits", "memory"),
    "RedisRegulator": ("regulation", "redis"),
    "MemoryRegulator": ("regulation", "memory"),
    "RedisUsedCodes": ("totp_codes", "redis"),
    "UsedCodes": ("totp_codes", "memory"),
    "FileTOTPStore": ("totp_secrets", "file"),
    "TOTPStore": ("totp_secrets", "memory"),
    "UsersFile": ("users_file", "file"),
    "OIDCClient": ("identity_provider", "http"),
}
_NOT_STORE_CALLS: Final = frozenset({("UsersFile", "verify")})

_OVERHEAD_BUCKETS: Final = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3,
                            5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5)
_STORE_BUCKETS: Final = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                         0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def login_failure_reason(reason: object) -> str:
    """The reason code of a ``login_failure`` audit reason (``other`` when unknown)."""
    if not isinstance(reason, str):
        return "other"
    for lead, code in LOGIN_FAILURE_REASONS:
        if reason.startswith(lead):
            return code
    return "store_unavailable" if _STORE_FAILURE.search(reason) else "other"


def decision_of(event: str, fields: Mapping[str, object]) -> tuple[str, str]:
    """The (layer, outcome) an audit event counts as."""
    if event in _UNAVAILABLE:
        outcome = fields.get("outcome")
        return _UNAVAILABLE[event], (f"unavailable_{outcome}" if outcome in
                                     _UNAVAILABLE_OUTCOMES else "unavailable")
    layer, outcome = _DECISIONS.get(event, ("other", "other"))
    if event == "authorization_denied":
        effect = fields.get("effect")
        outcome = effect if isinstance(effect, str) and effect in _EFFECTS else "deny"
    return layer, outcome


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("[metrics] enabled needs prometheus_client, which secure_mw "
                          "installs with its 'metrics' extra: pip install "
                          "'secure-mw[metrics]'") from None
    return prometheus_client


def _tracing() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError("[metrics] tracing needs opentelemetry-api, which secure_mw "
                          "installs with its 'otel' extra: pip install 'secure-mw[otel]'"
                          ) from None
    return trace


class _Families:
    """The collectors of one registry, registered once however many stacks use them."""

    def __init__(self, registry: Any) -> None:
        prom = _prometheus()
        kw = {"registry": registry}
        self.decisions = prom.Counter(
            f"{PREFIX}decisions", "Audited decisions, by layer and outcome.",
            ["layer", "outcome"], **kw)
        self.logins = prom.Counter(
            f"{PREFIX}logins", "Sign-in attempts judged, by outcome.", ["outcome"], **kw)
        self.login_failures = prom.Counter(
            f"{PREFIX}login_failures", "Refused sign-in attempts, by reason code.",
            ["reason"], **kw)
        self.bans = prom.Counter(
            f"{PREFIX}bans", "Bans started by failed sign-ins, by subject kind.",
            ["subject"], **kw)
        self.rate_limited = prom.Counter(
            f"{PREFIX}rate_limited", "Requests refused by a rate limit, by rule number.",
            ["rule"], **kw)
        self.store_seconds = prom.Histogram(
            f"{PREFIX}store_seconds", "Latency of store calls, by store, engine and call.",
            ["store", "engine", "call"], buckets=_STORE_BUCKETS, **kw)
        self.store_errors = prom.Counter(
            f"{PREFIX}store_errors", "Store calls that raised, by store, engine, call and "
            "error kind.", ["store", "engine", "call", "error"], **kw)
        self.overhead = prom.Histogram(
            f"{PREFIX}added_seconds", "Time secure_mw adds to a request (the wrapped "
            "app's own time excluded), by who answered.", ["answered_by"],
            buckets=_OVERHEAD_BUCKETS, **kw)


_families: weakref.WeakKeyDictionary[Any, _Families] = weakref.WeakKeyDictionary()


def _families_of(registry: Any) -> _Families:
    found = _families.get(registry)
    if found is None:
        found = _families[registry] = _Families(registry)
    return found


class Observer:
    """Counts (``registry``: prometheus_client's, default its ``REGISTRY``) and traces
    (``tracer_provider``: OpenTelemetry's, default the global one) what requests decide.
    ``metrics``/``tracing`` False leave that half out."""

    def __init__(self, *, metrics: bool = True, tracing: bool = False,
                 registry: Any = None, tracer_provider: Any = None) -> None:
        self.families: _Families | None = None
        if metrics:
            if registry is None:
                registry = _prometheus().REGISTRY
            self.families = _families_of(registry)
        self.tracer: Any = None
        if tracing:
            trace = _tracing()
            provider = tracer_provider or trace.get_tracer_provider()
            self.tracer = provider.get_tracer("secure_mw")
        self._children: dict[Any, Any] = {}
        self._stores: dict[Any, tuple[Any, Callable[[str], Any]] | None] = {}
        # By whether the app was reached: bound once, looked up without building a key.
        self._overhead: dict[bool, Any] | None = None if self.families is None else {
            True: self.families.overhead.labels("app"),
            False: self.families.overhead.labels("secure_mw")}
        _observe.activate()

    # -- per request (the flavours' ObserveMiddleware) -------------------------------------

    def begin(self) -> Observation:
        seen = Observation(self)
        if self.tracer is not None:
            from opentelemetry import context, trace

            span = self.tracer.start_span("secure_mw.request")
            seen.span = (span, context.attach(trace.set_span_in_context(span)))
        return seen

    def finish(self, seen: Observation, elapsed: float, error: BaseException | None = None
               ) -> None:
        answered_by = "app" if seen.reached_app else "secure_mw"
        if self._overhead is not None:
            self._overhead[seen.reached_app].observe(max(elapsed - seen.app_seconds, 0.0))
        if seen.span is not None:
            from opentelemetry import context
            from opentelemetry.trace import Status, StatusCode

            span, token = seen.span
            span.set_attribute("secure_mw.answered_by", answered_by)
            if error is not None:      # its type only: an app's message may hold anything
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()
            context.detach(token)

    def _child(self, family: Any, *values: str) -> Any:
        key = (id(family), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    # -- what _observe's hooks report -----------------------------------------------------

    def audited(self, seen: Observation, event: str, fields: Mapping[str, object]) -> None:
        layer, outcome = decision_of(event, fields)
        reason = login_failure_reason(fields.get("reason")) if event == "login_failure" \
            else None
        families = self.families
        if families is not None:
            self._child(families.decisions, layer, outcome).inc()
            if event == "login_success":
                self._child(families.logins, "success").inc()
            elif event == "login_failure":
                self._child(families.logins, "failure").inc()
                self._child(families.login_failures, reason or "other").inc()
            elif event == "ban":
                subject = fields.get("reason")
                self._child(families.bans, subject if isinstance(subject, str)
                            and subject in _BAN_SUBJECTS else "other").inc()
            elif event == "rate_limited":
                rule = fields.get("rule")
                self._child(families.rate_limited,
                            str(rule) if isinstance(rule, int) and 0 <= rule < 1000
                            else "other").inc()
        if seen.span is not None:
            attributes = {"secure_mw.layer": layer, "secure_mw.outcome": outcome}
            if reason is not None:
                attributes["secure_mw.reason"] = reason
            seen.span[0].add_event(event if event in _DECISIONS or event in _UNAVAILABLE
                                   else "other", attributes)

    def decided(self, seen: Observation, layer: str, outcome: str) -> None:
        if self.families is not None:
            self._child(self.families.decisions, layer, outcome).inc()
        if seen.span is not None:
            seen.span[0].add_event(layer, {"secure_mw.layer": layer,
                                           "secure_mw.outcome": outcome})

    def store_call(self, sync: Any, seconds: float, error: BaseException | None) -> None:
        families = self.families
        if families is None:
            return
        function = getattr(sync, "__func__", sync)
        if function in self._stores:
            known = self._stores[function]
        else:
            known = self._stores[function] = self._store_of(sync)
        if known is None:
            return
        histogram, errors = known
        histogram.observe(seconds)
        if error is not None and isinstance(error, Exception):
            errors("unavailable" if isinstance(error, StoreUnavailable) else "other").inc()

    def _store_of(self, sync: Any) -> tuple[Any, Callable[[str], Any]] | None:
        owner = getattr(sync, "__self__", None)
        name = getattr(sync, "__name__", "")
        if owner is None or not isinstance(name, str):
            return None
        known = next((cls.__name__ for cls in type(owner).__mro__ if cls.__name__ in _STORES),
                     None)
        if known is None or (known, name) in _NOT_STORE_CALLS:
            return None
        store, engine = _STORES[known]
        call = name.lstrip("_")
        families = self.families
        assert families is not None

        def errors(kind: str) -> Any:
            return self._child(families.store_errors, store, engine, call, kind)

        return self._child(families.store_seconds, store, engine, call), errors


def observer_from_settings(settings: Settings, *, registry: Any = None,
                           tracer_provider: Any = None) -> Observer | None:
    """The observer ``[metrics]`` asks for, or None (nothing is wrapped then). A missing
    extra is a :class:`ConfigError` naming the key and the extra."""
    section = settings.metrics
    if not (section.enabled or section.tracing):
        return None
    problems = []
    if section.enabled:
        try:
            _prometheus()
        except ImportError as exc:
            problems.append(ConfigProblem("metrics.enabled", str(exc)))
    if section.tracing:
        try:
            _tracing()
        except ImportError as exc:
            problems.append(ConfigProblem("metrics.tracing", str(exc)))
    if problems:
        raise ConfigError(problems)
    return Observer(metrics=section.enabled, tracing=section.tracing, registry=registry,
                    tracer_provider=tracer_provider)


def metrics_app(flavour: str = "asgi", *, registry: Any = None) -> Any:
    """prometheus_client's exposition app for ``registry`` (default its ``REGISTRY``):
    ``"asgi"`` (``make_asgi_app``) or ``"wsgi"`` (``make_wsgi_app``), to mount at
    ``/metrics`` behind an access rule (docs/observability.md)."""
    prom = _prometheus()
    registry = prom.REGISTRY if registry is None else registry
    if flavour == "asgi":
        return prom.make_asgi_app(registry=registry)
    if flavour == "wsgi":
        return prom.make_wsgi_app(registry=registry)
    raise ValueError("flavour is 'asgi' or 'wsgi'")
