"""Signed identity headers for ASGI: issue them to the app, or verify them from a proxy."""

from __future__ import annotations

from secure_mw.asgi._io import VIEW_KEY, ASGIApp, Receive, Scope, view_of
from secure_mw.asgi._layer import HTTP, Entered, Layer, Verdict
from secure_mw.audit import AuditLogger
from secure_mw.identity import ANONYMOUS, AuthScopes
from secure_mw.settings import Settings
from secure_mw.tokens.headers import JWKS_PATHS, IssueLayer, VerifyLayer, current_assertion

__all__ = ["IdentityHeaderMiddleware", "JWKSMiddleware", "SignedHeaderMiddleware"]


class IdentityHeaderMiddleware(Layer):
    """Gives the app a signed assertion of the identity in ``signed_headers.header``
    (a client's own copy of that header is dropped), serves the public keys at
    ``/.well-known/secure-mw/jwks.json``, and makes the assertion available to
    :class:`~secure_mw.tokens.headers.AssertionAuth` for the app's outbound calls."""

    has_leave = True

    def __init__(self, app: ASGIApp, *, settings: Settings,
                 layer: IssueLayer | None = None) -> None:
        self.app = app
        self.layer = layer or IssueLayer(settings)
        self.name = self.layer.header.encode("latin-1")
        # Every spelling a server or framework could read as ours (X_Secure_MW_… becomes
        # HTTP_X_SECURE_MW_… in Django's ASGI handler), as the lower-cased view holds it.
        self.spellings = spellings(self.layer.header.lower())

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        view = view_of(scope)
        if scope["type"] == "http":
            reply = self.layer.jwks_reply(view)
            if reply is not None:
                return reply
        if not self.spellings.isdisjoint(view.headers):
            name = self.name
            scope["headers"] = [(n, v) for n, v in scope.get("headers", ())
                                if n.lower().replace(b"_", b"-") != name]
        token = self.layer.assertion(view, scope.get("secure_mw.identity"))
        if token is not None:
            scope["headers"] = [*scope.get("headers", ()), (self.name, token.encode("ascii"))]
        scope["secure_mw.assertion"] = token
        scope.pop(VIEW_KEY, None)
        # A stack of resets: a second identity layer inside this one has its own.
        scope.setdefault(_RESET, []).append(current_assertion.set(token))
        return None

    def leave(self, scope: Scope) -> None:
        resets = scope.get(_RESET)
        if resets:
            current_assertion.reset(resets.pop())


_RESET = "secure_mw._assertion_reset"


def spellings(name: str) -> frozenset[str]:
    """``name`` with each ``-`` also written ``_``: the header names that mean it."""
    found = {""}
    for char in name:
        found = {f + c for f in found for c in (("-", "_") if char == "-" else (char,))}
    return frozenset(found)


class SignedHeaderMiddleware(Layer):
    """For an app behind Pomerium or another secure_mw: the assertion in
    ``signed_headers.verify.header`` must verify against the pinned keys, and its identity
    is exposed exactly as a session's (``scope["user"]``, ``scope["secure_mw.identity"]``);
    a missing or invalid one gets 401 and an ``invalid_token`` audit event."""

    def __init__(self, app: ASGIApp, *, settings: Settings, layer: VerifyLayer | None = None,
                 audit: AuditLogger | None = None) -> None:
        self.app = app
        self.layer = layer or VerifyLayer(settings, audit=audit)

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        return self._enter(scope)

    async def _enter(self, scope: Scope) -> Verdict:
        identity, reply = await self.layer.aidentity(view_of(scope))
        if reply is not None:
            return reply
        scope["user"] = identity if identity is not None else ANONYMOUS
        scope["auth"] = AuthScopes.of(identity)
        scope["secure_mw.identity"] = identity
        return None


class JWKSMiddleware(Layer):
    """Serves the identity-assertion keys of ``layer`` at the well-known paths, before any
    login is asked for (``protect()`` puts it outside the session)."""

    kinds = HTTP

    def __init__(self, app: ASGIApp, *, layer: IssueLayer) -> None:
        self.app = app
        self.layer = layer

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        if scope.get("path") in JWKS_PATHS:
            return self.layer.jwks_reply(view_of(scope))
        return None
