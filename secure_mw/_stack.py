"""What ``protect()`` builds, decided once for both flavours."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from secure_mw.settings import Settings


def session_core(settings: Settings, **options: Any) -> Any:
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


def assemble(app: Any, settings: Settings, flavour: ModuleType, options: dict[str, Any]
             ) -> Any:
    """The stack ``protect()`` builds, from the middleware classes of ``flavour``
    (:mod:`secure_mw.asgi` or :mod:`secure_mw.wsgi`, which have the same names). Outermost
    first: security headers, client address, rate limits by address or route, the
    open-redirect guard, the login guard (``regulation.paths``), the login session, rate
    limits by user, authorization (when ``access_control.rules`` are set; otherwise every
    request needs a login), the signed identity header for the app, the app. With
    ``signed_headers.verify``, a proxy's signed assertion replaces the login session."""
    from secure_mw.guards.clientaddr import TrustedProxies
    from secure_mw.guards.layers import LoginGuardLayer, RateLimitLayer

    audit = options.get("audit")
    limiter = options.pop("rate_limiter", None)
    stacked = app
    issue = None
    if settings.signed_headers.issue:
        from secure_mw.tokens.headers import IssueLayer

        issue = IssueLayer(settings)
        stacked = flavour.IdentityHeaderMiddleware(stacked, settings=settings, layer=issue)
    if settings.access_control.rules:
        # The rules decide who gets in; the session only says who is there.
        stacked = flavour.AuthorizationMiddleware(stacked, settings=settings, audit=audit)
        options.setdefault("require_login", False)
    by_user = RateLimitLayer.for_app(settings, limiter=limiter, audit=audit,
                                     which="identity")
    if by_user.rules:
        stacked = flavour.RateLimitMiddleware(stacked, layer=by_user)
    if settings.signed_headers.verify is not None:
        # Behind Pomerium or another secure_mw: the proxy's signed assertion is the identity.
        stacked = flavour.SignedHeaderMiddleware(stacked, settings=settings, audit=audit)
    else:
        stacked = flavour.OIDCSessionMiddleware(stacked, settings=settings, **options)
    if settings.regulation.paths:
        stacked = flavour.LoginGuardMiddleware(stacked, layer=LoginGuardLayer(
            settings, paths=settings.regulation.paths,
            username_field=settings.regulation.username_field, audit=audit))
    stacked = flavour.RedirectGuardMiddleware(stacked, settings=settings,
                                              extra_hosts=identity_provider_hosts(settings),
                                              audit=audit)
    by_address = RateLimitLayer.for_app(settings,
                                        limiter=by_user.limiter if limiter is None else limiter,
                                        audit=audit, which="network")
    if by_address.rules:
        stacked = flavour.RateLimitMiddleware(stacked, layer=by_address)
    if issue is not None:      # the public keys need no login
        stacked = flavour.JWKSMiddleware(stacked, layer=issue)
    stacked = flavour.ClientAddressMiddleware(stacked, trusted_proxies=TrustedProxies(
        settings.server.trusted_proxies, header=settings.server.forwarded_header),
        client_cert_header=settings.server.client_cert_header)
    return flavour.SecurityHeadersMiddleware(stacked, settings=settings)
