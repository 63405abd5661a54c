"""``OIDCSessionMiddleware`` for ASGI (Starlette, FastAPI, any ASGI 3 app)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from secure_mw._driver import run_async
from secure_mw._stack import session_core
from secure_mw.asgi._io import (
    ASGIApp,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    read_body,
    refuse_websocket,
    send_reply,
    view_of,
    with_extra_headers,
)
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.identity import ANONYMOUS, AuthScopes
from secure_mw.oidc.core import MAX_FORM, OIDCSessionCore
from secure_mw.session.manager import SessionStore
from secure_mw.settings import Settings

__all__ = ["OIDCSessionMiddleware"]


class OIDCSessionMiddleware:
    """Login sessions through an OpenID provider.

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        view = view_of(scope)
        if view.method == "POST" and self.core.is_reserved(view.path) and kind == "http":
            try:
                view.body = await read_body(receive, MAX_FORM)
            except BodyTooLarge:
                await send_reply(send, self.core.body_too_large(view))
                return
        outcome = await run_async(self.core.handle(view))
        if outcome.reply is not None:
            if kind == "websocket":
                await refuse_websocket(send, receive)
                return
            reply = outcome.reply
            if outcome.cookies:
                reply = reply.with_headers(("set-cookie", c) for c in outcome.cookies)
            await send_reply(send, reply, head=view.method == "HEAD")
            return
        identity = outcome.identity
        scope["user"] = identity if identity is not None else ANONYMOUS
        scope["auth"] = AuthScopes.of(identity)
        scope["secure_mw.identity"] = identity
        if outcome.cookies:
            send = with_extra_headers(send, [(b"set-cookie", c.encode("latin-1"))
                                             for c in outcome.cookies])
        await self.app(scope, receive, send)
