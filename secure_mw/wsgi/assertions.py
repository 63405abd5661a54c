"""Signed identity headers for WSGI: issue them to the app, or verify them from a proxy."""

from __future__ import annotations

from secure_mw.audit import AuditLogger
from secure_mw.settings import Settings
from secure_mw.tokens.headers import JWKS_PATHS, IssueLayer, VerifyLayer, current_assertion
from secure_mw.wsgi._io import VIEW_KEY, Environ, WSGIApp, view_of
from secure_mw.wsgi._layer import Layer, Verdict

__all__ = ["IdentityHeaderMiddleware", "JWKSMiddleware", "SignedHeaderMiddleware"]


def environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class IdentityHeaderMiddleware(Layer):
    """See the ASGI middleware of the same name."""

    has_leave = True

    def __init__(self, app: WSGIApp, *, settings: Settings,
                 layer: IssueLayer | None = None) -> None:
        self.app = app
        self.layer = layer or IssueLayer(settings)
        self.key = environ_key(self.layer.header)

    def enter(self, environ: Environ) -> Verdict:
        environ.pop(self.key, None)      # a client's copy (every spelling maps onto this key)
        view = view_of(environ)
        reply = self.layer.jwks_reply(view)
        if reply is not None:
            return reply
        token = self.layer.assertion(view, environ.get("secure_mw.identity"))
        if token is not None:
            environ[self.key] = token
        environ["secure_mw.assertion"] = token
        environ.pop(VIEW_KEY, None)
        # A stack of resets: a second identity layer inside this one has its own.
        environ.setdefault(_RESET, []).append(current_assertion.set(token))
        return None

    def leave(self, environ: Environ) -> None:
        resets = environ.get(_RESET)
        if resets:
            current_assertion.reset(resets.pop())


_RESET = "secure_mw._assertion_reset"


class SignedHeaderMiddleware(Layer):
    """See the ASGI middleware of the same name; the identity is
    ``environ["secure_mw.identity"]``."""

    def __init__(self, app: WSGIApp, *, settings: Settings, layer: VerifyLayer | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = layer or VerifyLayer(settings, audit=audit)

    def enter(self, environ: Environ) -> Verdict:
        identity, reply = self.layer.identity(view_of(environ))
        if reply is not None:
            return reply
        environ["secure_mw.identity"] = identity
        return None


class JWKSMiddleware(Layer):
    """See the ASGI middleware of the same name."""

    def __init__(self, app: WSGIApp, *, layer: IssueLayer) -> None:
        self.app = app
        self.layer = layer

    def enter(self, environ: Environ) -> Verdict:
        if environ.get("PATH_INFO") in JWKS_PATHS:
            return self.layer.jwks_reply(view_of(environ))
        return None
