"""WSGI middlewares (Flask, Django, any PEP 3333 application).

``protect(app, settings)`` builds the recommended stack; each middleware also works alone.
"""

from __future__ import annotations

from typing import Any

from secure_mw._stack import check_identity_source, identity_provider_hosts
from secure_mw.guards.clientaddr import TrustedProxies
from secure_mw.guards.layers import LoginGuardLayer, RateLimitLayer
from secure_mw.settings import Settings
from secure_mw.wsgi._io import WSGIApp
from secure_mw.wsgi.guards import (
    ClientAddressMiddleware,
    LoginGuardMiddleware,
    RateLimitMiddleware,
    RedirectGuardMiddleware,
    SecurityHeadersMiddleware,
)
from secure_mw.wsgi.session import OIDCSessionMiddleware

__all__ = [
    "ClientAddressMiddleware",
    "LoginGuardMiddleware",
    "OIDCSessionMiddleware",
    "RateLimitMiddleware",
    "RedirectGuardMiddleware",
    "SecurityHeadersMiddleware",
    "protect",
]


def protect(app: WSGIApp, settings: Settings, **options: Any) -> WSGIApp:
    """Wrap ``app`` in every layer ``settings`` asks for. Outermost first: security headers,
    client address (trusted proxies), rate limits by address or route, the open-redirect
    guard, the login guard (``regulation.paths``), the login session, rate limits by user,
    the app.

    ``options`` go to the session middleware (``keyring``, ``store``, ``clock``, ``audit``);
    ``rate_limiter=`` gives both rate-limit layers one limiter object.
    """
    check_identity_source(settings)
    audit = options.get("audit")
    limiter = options.pop("rate_limiter", None)
    stacked: WSGIApp = app
    by_user = RateLimitLayer(settings.rate_limits, limiter=limiter, audit=audit,
                             which="identity")
    if by_user.rules:
        stacked = RateLimitMiddleware(stacked, layer=by_user)
    stacked = OIDCSessionMiddleware(stacked, settings=settings, **options)
    if settings.regulation.paths:
        stacked = LoginGuardMiddleware(stacked, layer=LoginGuardLayer(
            settings, paths=settings.regulation.paths,
            username_field=settings.regulation.username_field, audit=audit))
    stacked = RedirectGuardMiddleware(stacked, settings=settings,
                                      extra_hosts=identity_provider_hosts(settings),
                                      audit=audit)
    by_address = RateLimitLayer(settings.rate_limits, limiter=limiter or by_user.limiter,
                                audit=audit, which="network")
    if by_address.rules:
        stacked = RateLimitMiddleware(stacked, layer=by_address)
    stacked = ClientAddressMiddleware(stacked, trusted_proxies=TrustedProxies(
        settings.server.trusted_proxies, header=settings.server.forwarded_header))
    return SecurityHeadersMiddleware(stacked, settings=settings)
