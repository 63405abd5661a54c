"""Signed identity headers for ASGI: issue them to the app, or verify them from a proxy."""

from __future__ import annotations

from secure_mw.asgi._io import (
    VIEW_KEY,
    ASGIApp,
    Receive,
    Scope,
    Send,
    refuse_websocket,
    send_reply,
    view_of,
)
from secure_mw.audit import AuditLogger
from secure_mw.identity import ANONYMOUS, AuthScopes
from secure_mw.settings import Settings
from secure_mw.tokens.headers import JWKS_PATHS, IssueLayer, VerifyLayer, current_assertion

__all__ = ["IdentityHeaderMiddleware", "JWKSMiddleware", "SignedHeaderMiddleware"]


class IdentityHeaderMiddleware:
    """Gives the app a signed assertion of the identity in ``signed_headers.header``
    (a client's own copy of that header is dropped), serves the public keys at
    ``/.well-known/secure-mw/jwks.json``, and makes the assertion available to
    :class:`~secure_mw.tokens.headers.AssertionAuth` for the app's outbound calls."""

    def __init__(self, app: ASGIApp, *, settings: Settings,
                 layer: IssueLayer | None = None) -> None:
        self.app = app
        self.layer = layer or IssueLayer(settings)
        self.name = self.layer.header.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # Every spelling of the name a server or framework could read as ours goes
        # (X_Secure_MW_… becomes HTTP_X_SECURE_MW_… in Django's ASGI handler).
        headers = [(n, v) for n, v in scope.get("headers", ())
                   if n.lower().replace(b"_", b"-") != self.name]
        view = view_of(scope)
        if kind == "http":
            reply = self.layer.jwks_reply(view)
            if reply is not None:
                await send_reply(send, reply, head=view.method == "HEAD")
                return
        token = self.layer.assertion(view, scope.get("secure_mw.identity"))
        if token is not None:
            headers.append((self.name, token.encode("ascii")))
        scope["headers"] = headers
        scope["secure_mw.assertion"] = token
        scope.pop(VIEW_KEY, None)
        reset = current_assertion.set(token)
        try:
            await self.app(scope, receive, send)
        finally:
            current_assertion.reset(reset)


class SignedHeaderMiddleware:
    """For an app behind Pomerium or another secure_mw: the assertion in
    ``signed_headers.verify.header`` must verify against the pinned keys, and its identity
    is exposed exactly as a session's (``scope["user"]``, ``scope["secure_mw.identity"]``);
    a missing or invalid one gets 401 and an ``invalid_token`` audit event."""

    def __init__(self, app: ASGIApp, *, settings: Settings, layer: VerifyLayer | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = layer or VerifyLayer(settings, audit=audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        view = view_of(scope)
        identity, reply = await self.layer.aidentity(view)
        if reply is not None:
            if kind == "websocket":
                await refuse_websocket(send, receive)
            else:
                await send_reply(send, reply, head=view.method == "HEAD")
            return
        scope["user"] = identity if identity is not None else ANONYMOUS
        scope["auth"] = AuthScopes.of(identity)
        scope["secure_mw.identity"] = identity
        await self.app(scope, receive, send)


class JWKSMiddleware:
    """Serves the identity-assertion keys of ``layer`` at the well-known paths, before any
    login is asked for (``protect()`` puts it outside the session)."""

    def __init__(self, app: ASGIApp, *, layer: IssueLayer) -> None:
        self.app = app
        self.layer = layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in JWKS_PATHS:
            view = view_of(scope)
            reply = self.layer.jwks_reply(view)
            if reply is not None:
                await send_reply(send, reply, head=view.method == "HEAD")
                return
        await self.app(scope, receive, send)
