"""System checks: ``manage.py check`` reports every problem ``secure-mw check-config``
would, for ``settings.SECURE_MW`` (``secure_mw.E001``: the settings, ``secure_mw.E002``:
what building the stack finds, ``secure_mw.W001``: start-up warnings) and how the glue is
installed (``secure_mw.E003`` to ``E005``, ``secure_mw.W002``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.settings import Settings

__all__ = ["check_glue", "check_settings"]

MIDDLEWARE = "secure_mw.contrib.django.middleware.IdentityMiddleware"
BACKEND = "secure_mw.contrib.django.backends.IdentityBackend"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


def _error(problem: ConfigProblem, id: str) -> checks.CheckMessage:
    where = f"SECURE_MW: {problem.path}" if problem.path else "SECURE_MW"
    return checks.Error(f"{where}: {problem.message}", id=id)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every problem in ``settings.SECURE_MW`` at once, then what building the ``protect()``
    stack finds (on a best-effort copy when the settings have problems) and its warnings."""
    from secure_mw._stack import dry_run
    from secure_mw.contrib.django import _configured, _read

    found: list[checks.CheckMessage] = []
    problems: list[ConfigProblem] = []
    built: Settings | None
    try:
        built = _read(_configured())
    except ConfigError as exc:
        problems = list(exc.problems)
        found += [_error(p, "secure_mw.E001") for p in problems]
        built = exc.partial if isinstance(exc.partial, Settings) else None
    if built is None:
        return found
    later, warnings = dry_run(built)
    # What follows from a value already reported (replaced by its default) is not repeated.
    found += [_error(p, "secure_mw.E002") for p in later if not any(
        p.path == q.path or (q.path and p.path.startswith(q.path + ".")) for q in problems)]
    found += [checks.Warning(f"SECURE_MW: {w}", id="secure_mw.W001") for w in warnings]
    return found


def check_glue(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The middleware and the backend are where they must be."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    backends = list(getattr(settings, "AUTHENTICATION_BACKENDS", []))
    found: list[checks.CheckMessage] = []
    if MIDDLEWARE not in middleware:
        if BACKEND in backends:
            found.append(checks.Error(
                f"{BACKEND} is in AUTHENTICATION_BACKENDS but {MIDDLEWARE} is not in "
                "MIDDLEWARE: request.user would not follow the secure_mw session",
                hint=f"add {MIDDLEWARE!r} after {AUTH_MIDDLEWARE!r}", id="secure_mw.E003"))
        else:
            found.append(checks.Warning(
                f"{MIDDLEWARE} is not in MIDDLEWARE: views have no request.identity",
                hint=f"add {MIDDLEWARE!r} after {AUTH_MIDDLEWARE!r}", id="secure_mw.W002"))
        return found
    if BACKEND in backends:
        if AUTH_MIDDLEWARE not in middleware:
            found.append(checks.Error(
                f"{BACKEND} needs {AUTH_MIDDLEWARE} in MIDDLEWARE", id="secure_mw.E004"))
        elif middleware.index(AUTH_MIDDLEWARE) > middleware.index(MIDDLEWARE):
            found.append(checks.Error(
                f"{MIDDLEWARE} must come after {AUTH_MIDDLEWARE} in MIDDLEWARE",
                id="secure_mw.E005"))
    return found
