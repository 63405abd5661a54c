"""``SessionMiddleware`` (formerly ``OIDCSessionMiddleware``) for ASGI (Starlette, FastAPI,
any ASGI 3 app)."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any

from secure_mw._driver import run_async, run_inline
from secure_mw._stack import session_core
from secure_mw.asgi._io import ASGIApp, BodyTooLarge, Receive, Scope, read_body, view_of
from secure_mw.asgi._layer import Entered, Layer, RawHeaders, Verdict
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.http import Reply, RequestView
from secure_mw.identity import ANONYMOUS, AuthScopes
from secure_mw.oidc.core import MAX_FORM, OIDCSessionCore
from secure_mw.session.manager import SessionStore
from secure_mw.settings import Settings

__all__ = ["OIDCSessionMiddleware", "SessionMiddleware"]


class SessionMiddleware(Layer):
    """Login sessions: through an OpenID provider (``[oidc]``), the built-in password login
    (``local_users``), or both.

    Serves ``login``, ``callback``, ``logout``, ``logged-out`` and ``me`` under
    ``server.auth_prefix`` (``/.auth/``), and for every other request puts the identity in
    ``scope["user"]`` (Starlette's ``request.user``), ``scope["auth"]`` and
    ``scope["secure_mw.identity"]`` (``None`` when anonymous). With ``require_login`` (the
    default) an anonymous browser navigation is redirected to the login and anything else gets
    401; WebSocket handshakes without a session are refused before they are accepted.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings, keyring: KeyRing | None = None,
                 store: SessionStore | None = None, clock: Callable[[], float] = time.time,
                 audit: AuditLogger | None = None, require_login: bool = True,
                 core: OIDCSessionCore | None = None, **login_options: Any) -> None:
        self.app = app
        self.core = core or session_core(settings, keyring=keyring, store=store, clock=clock,
                                         audit=audit, require_login=require_login,
                                         **login_options)

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        view = view_of(scope)
        if view.method == "POST" and scope["type"] == "http" \
                and self.core.is_reserved(view.path):
            return self._enter_with_body(scope, receive, view)
        identity = self.core.warm_identity(view)
        if identity is not None:    # a live session with nothing to do: no flow to run
            scope["user"] = identity
            scope["auth"] = AuthScopes.of(identity)
            scope["secure_mw.identity"] = identity
            return None
        outcome = run_inline(self.core.handle(view))
        if outcome.__class__ is CoroutineType:      # a store that waits, or the provider
            return self._finish(scope, outcome)
        return self._verdict(scope, outcome)

    async def _enter_with_body(self, scope: Scope, receive: Receive,
                               view: RequestView) -> Verdict:
        try:
            view.body = await read_body(receive, MAX_FORM)
        except BodyTooLarge:
            return self.core.body_too_large(view)
        return self._verdict(scope, await run_async(self.core.handle(view)))

    async def _finish(self, scope: Scope, outcome: Coroutine[Any, Any, Any]) -> Verdict:
        return self._verdict(scope, await outcome)

    @staticmethod
    def _verdict(scope: Scope, outcome: Any) -> Verdict:
        reply: Reply | None = outcome.reply
        if reply is not None:
            if outcome.cookies:
                reply = reply.with_headers(("set-cookie", c) for c in outcome.cookies)
            return reply
        identity = outcome.identity
        scope["user"] = identity if identity is not None else ANONYMOUS
        scope["auth"] = AuthScopes.of(identity)
        scope["secure_mw.identity"] = identity
        if not outcome.cookies:
            return None
        extra = [(b"set-cookie", c.encode("latin-1")) for c in outcome.cookies]

        def add_cookies(headers: RawHeaders) -> None:
            headers.extend(extra)

        return add_cookies


#: The former name, kept for the applications that import it.
OIDCSessionMiddleware = SessionMiddleware
