"""Per-request authorization: path normalization and compiled access rules (framework-free).

The middlewares call :func:`check_raw_path` on the raw request path (ASGI), then
:func:`normalize_path` on the decoded one, and hand the result to
:meth:`AccessPolicy.evaluate`, which answers a :class:`Decision`.
"""

from secure_mw.authz.paths import MAX_PATH, PathRefused, check_raw_path, normalize_path
from secure_mw.authz.rules import AccessPolicy, Decision, Effect

__all__ = [
    "MAX_PATH",
    "AccessPolicy",
    "Decision",
    "Effect",
    "PathRefused",
    "check_raw_path",
    "normalize_path",
]
