"""What ``protect()`` builds, decided once for both flavours."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.settings import Settings

T = TypeVar("T")


def session_core(settings: Settings, **options: Any) -> Any:
    """The session core for ``settings`` (see :func:`login_core`), behind a
    :class:`~secure_mw.tokens.bearer.BearerGate` when ``[bearer_tokens]`` is set: a request
    with ``Authorization: Bearer`` is then decided by its token alone."""
    core = login_core(settings, **options)
    if settings.bearer_tokens is None:
        return core
    from secure_mw.tokens.bearer import BearerGate

    clock = options.get("clock")
    return BearerGate(core, settings, **({"clock": clock} if clock is not None else {}))


def login_core(settings: Settings, **options: Any) -> Any:
    """The session core for ``settings``: the OpenID provider's when ``[oidc]`` is set,
    the built-in password login (``local_users.file``) when it is not, and both — a login
    page that offers the provider too — when ``[oidc]`` is set and the users file exists.
    ``users``, ``regulator``, ``delay`` and the TOTP options go to the built-in login only."""
    if settings.oidc is not None and not Path(settings.local_users.file).exists():
        from secure_mw.oidc.core import OIDCSessionCore

        for name in ("users", "regulator", "delay", "totp", "totp_store", "used_codes"):
            options.pop(name, None)
        return OIDCSessionCore(settings, **options)
    from secure_mw.login.core import LocalLoginCore

    return LocalLoginCore(settings, **options)


def identity_provider_hosts(settings: Settings) -> list[str]:
    """Hosts our own login and logout redirects go to (the open-redirect guard allows
    them)."""
    if settings.oidc is None:
        return []
    parts = urlsplit(settings.oidc.issuer)
    return [parts.netloc.lower()] if parts.netloc else []


class _Problems:
    """Every configuration problem the layers find while the stack is built, so start-up
    (and ``secure-mw check-config``, which builds the same stack) reports them all at once."""

    def __init__(self) -> None:
        self.found: list[ConfigProblem] = []

    def build(self, where: str, make: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """``make(*args, **kwargs)``, or None after recording why it could not be built."""
        try:
            return make(*args, **kwargs)
        except ConfigError as exc:
            self.found.extend(exc.problems)
        except ImportError as exc:        # an optional dependency: the message names the extra
            self.found.append(ConfigProblem(where, str(exc)))
        except (ValueError, OSError) as exc:
            self.found.append(ConfigProblem(where, str(exc)))
        return None

    def wrap(self, where: str, inner: Any, make: Callable[..., Any], *args: Any,
             **kwargs: Any) -> Any:
        """A middleware around ``inner``, or ``inner`` itself when it could not be built."""
        built = self.build(where, make, inner, *args, **kwargs)
        return inner if built is None else built

    def raise_if_any(self) -> None:
        if self.found:
            unique = list(dict.fromkeys(self.found))
            raise ConfigError(unique)


@dataclass(frozen=True, slots=True)
class Flavour:
    """The middleware classes of one flavour (ASGI or WSGI), which :func:`assemble` stacks,
    and its :func:`fuse`, which turns the nested layers into one chain."""

    name: str
    host_guard: Callable[..., Any]
    security_headers: Callable[..., Any]
    client_address: Callable[..., Any]
    rate_limit: Callable[..., Any]
    jwks: Callable[..., Any]
    health: Callable[..., Any]
    redirect_guard: Callable[..., Any]
    login_guard: Callable[..., Any]
    session: Callable[..., Any]
    signed_header: Callable[..., Any]
    authorization: Callable[..., Any]
    identity_header: Callable[..., Any]
    observe: Callable[..., Any]
    app_timer: Callable[..., Any]
    fuse: Callable[[Any], Any]


def fused(app: Any, layer_type: type, chain_type: type) -> Any:
    """``app`` with each run of nested ``layer_type`` objects (or chains, which have
    ``layers``) turned into one ``chain_type``: the ``fuse()`` of each flavour. A middleware
    that is not a layer stays where it is; when it says it is ``fusable`` its inside is
    fused too."""
    layers: list[Any] = []
    current: Any = app
    while isinstance(current, chain_type | layer_type):
        step = cast(Any, current)
        if isinstance(current, chain_type):
            layers.extend(step.layers)
        else:
            layers.append(step)
        current = step.app
    if getattr(current, "fusable", False):
        current.app = fused(current.app, layer_type, chain_type)
    return chain_type(layers, current) if layers else current


def given_or_built(layer: T | None, settings: Settings | None,
                   build: Callable[[Settings], T]) -> T:
    """The ``layer=`` a middleware was given, else the one it builds from ``settings=``
    (one of the two is needed)."""
    if layer is not None:
        return layer
    if settings is None:
        raise TypeError("give settings or layer")
    return build(settings)


def assemble(app: Any, settings: Settings, flavour: Flavour, options: dict[str, Any]) -> Any:
    """The stack ``protect()`` builds, from the middleware classes of ``flavour``
    (``secure_mw.asgi.FLAVOUR`` or ``secure_mw.wsgi.FLAVOUR``). Outermost
    first: the Host allow-list (and the UTF-8 path check), security headers, client address,
    rate limits by address or route, the open-redirect guard, the login guard
    (``regulation.paths``), the login session, rate limits by user, authorization (when
    ``access_control.rules`` are set; otherwise every request needs a login), the signed
    identity header for the app, the app. With ``signed_headers.verify``, a proxy's signed
    assertion replaces the login session. Every layer is built even when an earlier one
    fails, and one ConfigError lists every problem found."""
    from secure_mw.guards.clientaddr import TrustedProxies
    from secure_mw.guards.layers import LoginGuardLayer, RateLimitLayer
    from secure_mw.oidc.core import sibling_hosts

    found = _Problems()
    audit = options.get("audit")
    limiter = options.pop("rate_limiter", None)
    observing = _observing(settings, flavour, options, found)
    health_clock = options.pop("health_clock", None)
    stacked = app if observing is None else flavour.app_timer(app)
    issue = None
    if settings.signed_headers.issue:
        from secure_mw.tokens.headers import IssueLayer

        issue = found.build("keys.signing_jwks", IssueLayer, settings,
                            keyring=options.get("keyring"),
                            per_host=options.pop("assertion_per_host", False),
                            clock=options.get("clock"))
        if issue is not None:
            stacked = flavour.identity_header(stacked, settings=settings, layer=issue)
    if settings.access_control.rules:
        # The rules decide who gets in; the session only says who is there.
        stacked = found.wrap("access_control", stacked, flavour.authorization,
                             settings=settings, audit=audit)
        options.setdefault("require_login", False)
    by_user = found.build("rate_limits", RateLimitLayer.for_app, settings,
                          limiter=limiter, audit=audit, which="identity")
    if by_user is not None and by_user.rules:
        stacked = flavour.rate_limit(stacked, layer=by_user)
    if settings.signed_headers.verify is not None:
        # Behind Pomerium or another secure_mw: the proxy's signed assertion is the identity.
        stacked = found.wrap("signed_headers.verify", stacked, flavour.signed_header,
                             settings=settings, audit=audit)
    else:
        stacked = found.wrap("session", stacked, flavour.session,
                             settings=settings, **options)
    if settings.regulation.paths:
        guard = found.build("regulation", LoginGuardLayer, settings,
                            paths=settings.regulation.paths,
                            username_field=settings.regulation.username_field, audit=audit)
        if guard is not None:
            stacked = flavour.login_guard(stacked, layer=guard)
    stacked = found.wrap("redirects", stacked, flavour.redirect_guard,
                         settings=settings, extra_hosts=[*identity_provider_hosts(settings),
                                                         *sibling_hosts(
                                                             settings.server.allowed_hosts)],
                         audit=audit)
    if limiter is None and by_user is not None:
        limiter = by_user.limiter
    by_address = found.build("rate_limits", RateLimitLayer.for_app, settings,
                             limiter=limiter, audit=audit, which="network")
    if settings.metrics.health:      # inside the rate limits by address: probes count too
        from secure_mw.health import HealthCheck

        check = found.build("metrics.health", HealthCheck, settings, clock=health_clock) \
            if health_clock is not None else found.build("metrics.health", HealthCheck, settings)
        if check is not None:
            stacked = flavour.health(stacked, check=check)
    if by_address is not None and by_address.rules:
        stacked = flavour.rate_limit(stacked, layer=by_address)
    if issue is not None:      # the public keys need no login
        stacked = flavour.jwks(stacked, layer=issue)
    proxies = TrustedProxies(settings.server.trusted_proxies,
                             header=settings.server.forwarded_header)
    stacked = found.wrap("server", stacked, flavour.client_address,
                         trusted_proxies=proxies,
                         client_cert_header=settings.server.client_cert_header)
    stacked = found.wrap("headers", stacked, flavour.security_headers,
                         settings=settings)
    # Before anything else: a request for a host we do not serve never reaches a layer.
    stacked = found.wrap("server.allowed_hosts", stacked, flavour.host_guard,
                         settings=settings, trusted_proxies=proxies, audit=audit)
    if observing is not None:       # outermost: every decision below is observed
        stacked = flavour.observe(stacked, observer=observing)
    found.raise_if_any()
    stacked = flavour.fuse(stacked)     # one call through every layer, not one per layer
    if settings.server.certificates_directory:   # checked by the settings already
        from secure_mw.outbound import trust_certificates_directory

        trust_certificates_directory(settings.server.certificates_directory)
    from secure_mw.deployment import log_deployment_warnings

    log_deployment_warnings(settings)
    return stacked


def _observing(settings: Settings, flavour: Flavour, options: dict[str, Any],
               found: _Problems) -> Any:
    """The observer ``[metrics]`` asks for (None: nothing observes, nothing is wrapped);
    takes ``registry=`` and ``tracer_provider=`` out of ``options``."""
    from secure_mw.metrics import observer_from_settings

    registry = options.pop("registry", None)
    tracer_provider = options.pop("tracer_provider", None)
    return found.build("metrics", observer_from_settings, settings, registry=registry,
                       tracer_provider=tracer_provider)


def sign_in_warning(settings: Settings) -> str | None:
    """Why nobody could sign in with ``settings``, or None: no provider, no proxy assertion,
    and a users file that is missing or has no enabled user."""
    if settings.oidc is not None or settings.signed_headers.verify is not None:
        return None
    path = Path(settings.local_users.file)
    fix = ("add one with `secure-mw users add NAME --config FILE`, or configure an OpenID "
           "provider in [oidc]")
    if not path.exists():
        return (f"nobody can sign in: there is no [oidc] section and the users file "
                f"{str(path.absolute())!r} "
                f"does not exist; {fix}")
    from secure_mw.login.users import UsersFile

    try:
        enabled = [u for u in UsersFile(path).users() if not u.disabled]
    except ConfigError:
        return None   # the problems of the file itself are reported as problems
    if not enabled:
        return (f"nobody can sign in: the users file {str(path.absolute())!r} has no enabled "
                f"user; {fix}")
    return None


def dry_run(settings: Settings, *, config_file: str | None = None
            ) -> tuple[list[ConfigProblem], list[str]]:
    """Build what start-up builds — the stack of both flavours around an empty app — without
    serving anything: the problems start-up would raise and the warnings it would log (plus
    :func:`sign_in_warning` and the :func:`~secure_mw.deployment.deployment_warnings`,
    which look at ``config_file`` too). ``secure-mw check-config`` is this, so a file it
    accepts starts."""
    import logging

    from secure_mw import asgi, wsgi

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        return None

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover
        return []

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    logger = logging.getLogger("secure_mw")
    handler = Collect(logging.WARNING)
    propagate, level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    problems: list[ConfigProblem] = []
    try:
        for build in (lambda: asgi.protect(asgi_app, settings),
                      lambda: wsgi.protect(wsgi_app, settings)):
            try:
                build()
            except ConfigError as exc:
                problems += [p for p in exc.problems if p not in problems]
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level
    warning = sign_in_warning(settings)
    if warning is not None:   # says it plainly, in place of the users file's own warning
        users_file = repr(str(Path(settings.local_users.file)))
        warnings = [w for w in warnings if users_file not in w] + [warning]
    from secure_mw.deployment import deployment_warnings

    warnings += deployment_warnings(settings, config_file=config_file)
    return problems, list(dict.fromkeys(warnings))
