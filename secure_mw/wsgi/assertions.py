"""Signed identity headers for WSGI: issue them to the app, or verify them from a proxy."""

from __future__ import annotations

from collections.abc import Iterable

from secure_mw.audit import AuditLogger
from secure_mw.settings import Settings
from secure_mw.tokens.headers import JWKS_PATHS, IssueLayer, VerifyLayer, current_assertion
from secure_mw.wsgi._io import VIEW_KEY, Environ, StartResponse, WSGIApp, view_of, write_reply

__all__ = ["IdentityHeaderMiddleware", "JWKSMiddleware", "SignedHeaderMiddleware"]


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class IdentityHeaderMiddleware:
    """See the ASGI middleware of the same name."""

    def __init__(self, app: WSGIApp, *, settings: Settings,
                 layer: IssueLayer | None = None) -> None:
        self.app = app
        self.layer = layer or IssueLayer(settings)
        self.key = _environ_key(self.layer.header)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environ.pop(self.key, None)      # a client's copy (every spelling maps onto this key)
        view = view_of(environ)
        reply = self.layer.jwks_reply(view)
        if reply is not None:
            return write_reply(start_response, reply, head=view.method == "HEAD")
        token = self.layer.assertion(view, environ.get("secure_mw.identity"))
        if token is not None:
            environ[self.key] = token
        environ["secure_mw.assertion"] = token
        environ.pop(VIEW_KEY, None)
        reset = current_assertion.set(token)
        try:
            return self.app(environ, start_response)
        finally:
            current_assertion.reset(reset)


class SignedHeaderMiddleware:
    """See the ASGI middleware of the same name; the identity is
    ``environ["secure_mw.identity"]``."""

    def __init__(self, app: WSGIApp, *, settings: Settings, layer: VerifyLayer | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = layer or VerifyLayer(settings, audit=audit)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        view = view_of(environ)
        identity, reply = self.layer.identity(view)
        if reply is not None:
            return write_reply(start_response, reply, head=view.method == "HEAD")
        environ["secure_mw.identity"] = identity
        return self.app(environ, start_response)


class JWKSMiddleware:
    """See the ASGI middleware of the same name."""

    def __init__(self, app: WSGIApp, *, layer: IssueLayer) -> None:
        self.app = app
        self.layer = layer

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in JWKS_PATHS:
            view = view_of(environ)
            reply = self.layer.jwks_reply(view)
            if reply is not None:
                return write_reply(start_response, reply, head=view.method == "HEAD")
        return self.app(environ, start_response)
