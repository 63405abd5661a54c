"""WSGI middlewares (Flask, Django, any PEP 3333 application).

``protect(app, settings)`` builds the recommended stack; each middleware also works alone.
"""

from __future__ import annotations

from typing import Any

from secure_mw._stack import Flavour, assemble
from secure_mw.settings import Settings
from secure_mw.wsgi._io import WSGIApp
from secure_mw.wsgi._layer import Chain, Layer, fuse
from secure_mw.wsgi.assertions import (
    IdentityHeaderMiddleware,
    JWKSMiddleware,
    SignedHeaderMiddleware,
)
from secure_mw.wsgi.guards import (
    AuthorizationMiddleware,
    ClientAddressMiddleware,
    HostGuardMiddleware,
    LoginGuardMiddleware,
    RateLimitMiddleware,
    RedirectGuardMiddleware,
    SecurityHeadersMiddleware,
)
from secure_mw.wsgi.observe import (
    AppTimerMiddleware,
    HealthMiddleware,
    ObserveMiddleware,
)
from secure_mw.wsgi.session import OIDCSessionMiddleware, SessionMiddleware

__all__ = [
    "AppTimerMiddleware",
    "AuthorizationMiddleware",
    "Chain",
    "ClientAddressMiddleware",
    "HealthMiddleware",
    "HostGuardMiddleware",
    "IdentityHeaderMiddleware",
    "JWKSMiddleware",
    "Layer",
    "LoginGuardMiddleware",
    "OIDCSessionMiddleware",
    "ObserveMiddleware",
    "RateLimitMiddleware",
    "RedirectGuardMiddleware",
    "SecurityHeadersMiddleware",
    "SessionMiddleware",
    "SignedHeaderMiddleware",
    "fuse",
    "protect",
]


#: What :func:`protect` stacks, for :func:`secure_mw._stack.assemble`.
FLAVOUR = Flavour(
    name="wsgi", host_guard=HostGuardMiddleware, security_headers=SecurityHeadersMiddleware,
    client_address=ClientAddressMiddleware, rate_limit=RateLimitMiddleware,
    jwks=JWKSMiddleware, health=HealthMiddleware, redirect_guard=RedirectGuardMiddleware,
    login_guard=LoginGuardMiddleware, session=SessionMiddleware,
    signed_header=SignedHeaderMiddleware, authorization=AuthorizationMiddleware,
    identity_header=IdentityHeaderMiddleware, observe=ObserveMiddleware,
    app_timer=AppTimerMiddleware, fuse=fuse)


def protect(app: WSGIApp, settings: Settings, **options: Any) -> WSGIApp:
    """Wrap ``app`` in every layer ``settings`` asks for. Outermost first: the Host
    allow-list (``server.allowed_hosts``; it also refuses paths that are not UTF-8),
    security headers, client address (trusted proxies), rate limits by address or route, the
    open-redirect guard, the login guard (``regulation.paths``), the login session, rate
    limits by user, the app.

    ``options`` go to the session middleware (``keyring``, ``store``, ``clock``, ``audit``);
    ``rate_limiter=`` gives both rate-limit layers one limiter object.
    """
    stacked: WSGIApp = assemble(app, settings, FLAVOUR, options)
    return stacked
