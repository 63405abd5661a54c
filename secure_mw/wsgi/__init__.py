"""WSGI middlewares (Flask, Django, any PEP 3333 application).

``protect(app, settings)`` builds the recommended stack; each middleware also works alone.
"""

from __future__ import annotations

from typing import Any

from secure_mw._stack import check_identity_source
from secure_mw.settings import Settings
from secure_mw.wsgi._io import WSGIApp
from secure_mw.wsgi.session import OIDCSessionMiddleware

__all__ = ["OIDCSessionMiddleware", "protect"]


def protect(app: WSGIApp, settings: Settings, **options: Any) -> WSGIApp:
    """Wrap ``app`` in every layer ``settings`` asks for, outermost first.

    ``options`` go to the session middleware (``keyring``, ``store``, ``clock``, ``audit``).
    """
    check_identity_source(settings)
    return OIDCSessionMiddleware(app, settings=settings, **options)
