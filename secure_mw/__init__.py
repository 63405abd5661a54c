"""secure_mw: the protections of an identity-aware proxy and an authentication portal,
in-process, as stackable ASGI and WSGI middlewares.

The foundation is here: :class:`Settings`, the crypto core (:mod:`secure_mw.crypto`),
the token core (:mod:`secure_mw.tokens`), the error hierarchy (:mod:`secure_mw.errors`)
and audit events (:mod:`secure_mw.audit`).
"""

from typing import TYPE_CHECKING, Any

from secure_mw.audit import AuditLogger
from secure_mw.errors import (
    ConfigError,
    DecryptError,
    ExpiredToken,
    InvalidToken,
    SecureMWError,
    StoreUnavailable,
)
from secure_mw.settings import Settings

if TYPE_CHECKING:
    from secure_mw.guards.redirect import is_safe_redirect

__version__ = "0.1.0.dev0"

__all__ = [
    "AuditLogger",
    "ConfigError",
    "DecryptError",
    "ExpiredToken",
    "InvalidToken",
    "SecureMWError",
    "Settings",
    "StoreUnavailable",
    "__version__",
    "is_safe_redirect",
]


def __getattr__(name: str) -> Any:
    # The guards load when asked for: importing secure_mw (or secure_mw.settings) does not.
    if name == "is_safe_redirect":
        from secure_mw.guards.redirect import is_safe_redirect

        return is_safe_redirect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
