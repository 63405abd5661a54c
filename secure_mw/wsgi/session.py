"""``OIDCSessionMiddleware`` for WSGI (Flask, Django, any PEP 3333 app)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from secure_mw._driver import run_sync
from secure_mw._stack import session_core
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.oidc.core import MAX_FORM, OIDCSessionCore
from secure_mw.session.manager import SessionStore
from secure_mw.settings import Settings
from secure_mw.wsgi._io import (
    BodyTooLarge,
    Environ,
    StartResponse,
    WSGIApp,
    view_of,
    with_extra_headers,
    write_reply,
)

__all__ = ["OIDCSessionMiddleware"]


class OIDCSessionMiddleware:
    """Login sessions through an OpenID provider (same options as the ASGI one).

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

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        view = view_of(environ)
        if view.method == "POST" and self.core.is_reserved(view.path):
            from secure_mw.wsgi._io import read_body

            try:
                view.body = read_body(environ, MAX_FORM)
            except BodyTooLarge:
                return write_reply(start_response,
                                   self.core.body_too_large(view))
        outcome = run_sync(self.core.handle(view))
        if outcome.reply is not None:
            reply = outcome.reply
            if outcome.cookies:
                reply = reply.with_headers(("set-cookie", c) for c in outcome.cookies)
            return write_reply(start_response, reply, head=view.method == "HEAD")
        environ["secure_mw.identity"] = outcome.identity
        if outcome.cookies:
            start_response = with_extra_headers(
                start_response, [("Set-Cookie", c) for c in outcome.cookies])
        return self.app(environ, start_response)
