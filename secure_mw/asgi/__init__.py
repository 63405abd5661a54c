"""ASGI middlewares (Starlette, FastAPI, any ASGI 3 application).

``protect(app, settings)`` builds the recommended stack; each middleware also works alone.
"""

from __future__ import annotations

from typing import Any

from secure_mw._stack import check_identity_source
from secure_mw.asgi._io import ASGIApp
from secure_mw.asgi.session import OIDCSessionMiddleware
from secure_mw.settings import Settings

__all__ = ["OIDCSessionMiddleware", "protect"]


def protect(app: ASGIApp, settings: Settings, **options: Any) -> ASGIApp:
    """Wrap ``app`` in every layer ``settings`` asks for, outermost first.

    ``options`` go to the session middleware (``keyring``, ``store``, ``clock``, ``audit``).
    """
    check_identity_source(settings)
    return OIDCSessionMiddleware(app, settings=settings, **options)
