"""ASGI middlewares (Starlette, FastAPI, any ASGI 3 application).

``protect(app, settings)`` builds the recommended stack; each middleware also works alone.
"""

from __future__ import annotations

from typing import Any

from secure_mw._stack import Flavour, assemble
from secure_mw.asgi._io import ASGIApp
from secure_mw.asgi._layer import Chain, Layer, fuse
from secure_mw.asgi.assertions import (
    IdentityHeaderMiddleware,
    JWKSMiddleware,
    SignedHeaderMiddleware,
)
from secure_mw.asgi.guards import (
    AuthorizationMiddleware,
    ClientAddressMiddleware,
    HostGuardMiddleware,
    LoginGuardMiddleware,
    RateLimitMiddleware,
    RedirectGuardMiddleware,
    SecurityHeadersMiddleware,
)
from secure_mw.asgi.observe import (
    AppTimerMiddleware,
    HealthMiddleware,
    ObserveMiddleware,
)
from secure_mw.asgi.session import OIDCSessionMiddleware, SessionMiddleware
from secure_mw.settings import Settings

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
    name="asgi", host_guard=HostGuardMiddleware, security_headers=SecurityHeadersMiddleware,
    client_address=ClientAddressMiddleware, rate_limit=RateLimitMiddleware,
    jwks=JWKSMiddleware, health=HealthMiddleware, redirect_guard=RedirectGuardMiddleware,
    login_guard=LoginGuardMiddleware, session=SessionMiddleware,
    signed_header=SignedHeaderMiddleware, authorization=AuthorizationMiddleware,
    identity_header=IdentityHeaderMiddleware, observe=ObserveMiddleware,
    app_timer=AppTimerMiddleware, fuse=fuse)


def protect(app: ASGIApp, settings: Settings, **options: Any) -> ASGIApp:
    """Wrap ``app`` in every layer ``settings`` asks for. Outermost first: the Host
    allow-list (``server.allowed_hosts``; it also refuses paths that are not UTF-8),
    security headers, client address (trusted proxies), rate limits by address or route, the
    open-redirect guard, the login guard (``regulation.paths``), the login session, rate
    limits by user, the app.

    ``options`` go to the session middleware (``keyring``, ``store``, ``clock``, ``audit``);
    ``rate_limiter=`` gives both rate-limit layers one limiter object.
    """
    stacked: ASGIApp = assemble(app, settings, FLAVOUR, options)
    return stacked
