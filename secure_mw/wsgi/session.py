"""``SessionMiddleware`` (formerly ``OIDCSessionMiddleware``) for WSGI (Flask, Django,
any PEP 3333 app)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from secure_mw._driver import run_sync
from secure_mw._stack import session_core
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.http import Reply
from secure_mw.oidc.core import MAX_FORM, OIDCSessionCore
from secure_mw.session.manager import SessionStore
from secure_mw.settings import Settings
from secure_mw.wsgi._io import BodyTooLarge, Environ, WSGIApp, read_body, view_of
from secure_mw.wsgi._layer import Headers, Layer, Verdict

__all__ = ["OIDCSessionMiddleware", "SessionMiddleware"]


class SessionMiddleware(Layer):
    """Login sessions (same options as the ASGI one): through an OpenID provider, the
    built-in password login, or both.

    The identity is ``environ["secure_mw.identity"]`` (``None`` when anonymous).
    """

    def __init__(self, app: WSGIApp, *, settings: Settings, keyring: KeyRing | None = None,
                 store: SessionStore | None = None, clock: Callable[[], float] = time.time,
                 audit: AuditLogger | None = None, require_login: bool = True,
                 core: OIDCSessionCore | None = None, **login_options: Any) -> None:
        self.app = app
        self.core = core or session_core(settings, keyring=keyring, store=store, clock=clock,
                                         audit=audit, require_login=require_login,
                                         **login_options)

    def enter(self, environ: Environ) -> Verdict:
        view = view_of(environ)
        if view.method == "POST" and self.core.is_reserved(view.path):
            try:
                view.body = read_body(environ, MAX_FORM)
            except BodyTooLarge:
                return self.core.body_too_large(view)
        else:
            identity = self.core.warm_identity(view)
            if identity is not None:    # a live session with nothing to do: no flow to run
                environ["secure_mw.identity"] = identity
                return None
        outcome = run_sync(self.core.handle(view))
        reply: Reply | None = outcome.reply
        if reply is not None:
            if outcome.cookies:
                reply = reply.with_headers(("set-cookie", c) for c in outcome.cookies)
            return reply
        environ["secure_mw.identity"] = outcome.identity
        if not outcome.cookies:
            return None
        extra = [("Set-Cookie", c) for c in outcome.cookies]

        def add_cookies(headers: Headers) -> None:
            headers.extend(extra)

        return add_cookies


#: The former name, kept for the applications that import it.
OIDCSessionMiddleware = SessionMiddleware
