"""Django integration: an installable app (``"secure_mw.contrib.django"`` in
``INSTALLED_APPS``) configured by ``settings.SECURE_MW`` (a mapping or a TOML path).
:func:`get_wsgi_application` / :func:`get_asgi_application` wrap Django's own application in
the ``protect()`` stack; :mod:`.middleware` puts the verified identity on ``request.identity``,
:mod:`.backends` turns it into ``request.user``, :mod:`.decorators` has ``require()`` and
:mod:`.checks` reports every configuration problem in ``manage.py check``
(docs/quickstart/django.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    import django  # noqa: F401
except ImportError as exc:   # pragma: no cover - a plain install
    raise ImportError("secure_mw.contrib.django needs Django: "
                      "pip install 'secure-mw[django]'") from exc

from secure_mw.identity import ANONYMOUS, AnonymousUser, Identity
from secure_mw.settings import Settings

__all__ = ["get_asgi_application", "get_wsgi_application", "identity_of", "load_settings"]

#: Where the verified identity lives in a request's ``META`` (WSGI) or ``scope`` (ASGI).
IDENTITY_KEY = "secure_mw.identity"


def _configured() -> object:
    from django.conf import settings

    return getattr(settings, "SECURE_MW", None)


def _read(value: object) -> Settings:
    """Settings from the value of ``settings.SECURE_MW``: a mapping, a TOML file's path, or
    (when unset) ``$SECURE_MW_CONFIG``; relative paths are relative to ``BASE_DIR``.
    ``SECURE_MW_*`` environment variables override them, as they do for every other way
    of configuring secure_mw. Raises ConfigError."""
    from collections.abc import Mapping

    from django.conf import settings

    from secure_mw.errors import ConfigError, ConfigProblem

    base = getattr(settings, "BASE_DIR", None)
    if value is None:
        return Settings.from_environment()
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        return Settings.from_file(path, environ=os.environ)
    if isinstance(value, Mapping):
        return Settings.from_mapping(value, environ=os.environ,
                                     base_dir=Path(base) if base is not None else None)
    raise ConfigError([ConfigProblem("", "must be a mapping (a dict, as a TOML "
                                     "file would give) or the path of a TOML file, not "
                                     f"{type(value).__name__}")])


_cache: tuple[str, Settings] | None = None


def load_settings() -> Settings:
    """The secure_mw :class:`Settings` of this Django project, read again only when
    ``settings.SECURE_MW`` changes (raises ConfigError naming every problem)."""
    global _cache  # noqa: PLW0603 - one process-wide copy
    value = _configured()
    key = repr((value, os.environ.get("SECURE_MW_CONFIG")))
    if _cache is None or _cache[0] != key:
        _cache = (key, _read(value))
    return _cache[1]


def get_wsgi_application(**options: Any) -> Any:
    """Django's WSGI application inside the ``protect()`` stack (``options`` go to
    :func:`secure_mw.wsgi.protect`). Use it in ``wsgi.py`` in place of Django's own."""
    from django.core.wsgi import get_wsgi_application as django_wsgi

    from secure_mw.wsgi import protect

    app = django_wsgi()   # django.setup() first: SECURE_MW is read from the settings
    return protect(app, load_settings(), **options)


def get_asgi_application(**options: Any) -> Any:
    """Django's ASGI application inside the ``protect()`` stack (``options`` go to
    :func:`secure_mw.asgi.protect`). Use it in ``asgi.py`` in place of Django's own."""
    from django.core.asgi import get_asgi_application as django_asgi

    from secure_mw.asgi import protect

    app = django_asgi()
    return protect(app, load_settings(), **options)


def identity_of(request: Any) -> Identity | AnonymousUser:
    """The verified identity of a Django request: what the ``protect()`` stack put in the
    WSGI environ or the ASGI scope, never anything the client sent; :data:`ANONYMOUS` when
    nobody is signed in (or the application is not wrapped)."""
    found = request.META.get(IDENTITY_KEY)
    if found is None:
        scope = getattr(request, "scope", None)
        if isinstance(scope, dict):
            found = scope.get(IDENTITY_KEY)
    return found if isinstance(found, Identity) else ANONYMOUS
