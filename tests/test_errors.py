"""The error hierarchy: every exception class secure_mw exports derives from SecureMWError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import secure_mw
from secure_mw.errors import SecureMWError


def _modules() -> list[str]:
    # Django's glue needs a configured project; __main__ modules run.
    return sorted(m.name for m in pkgutil.walk_packages(secure_mw.__path__, "secure_mw.")
                  if not m.name.endswith("__main__")
                  and not m.name.startswith("secure_mw.contrib.django"))


def test_every_public_exception_class_is_a_secure_mw_error() -> None:
    outside = set()
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if attr.startswith("_") or not inspect.isclass(obj) \
                    or not issubclass(obj, BaseException) \
                    or not obj.__module__.startswith("secure_mw"):
                continue
            if not issubclass(obj, SecureMWError):
                outside.add(f"{obj.__module__}.{obj.__qualname__}")
    assert sorted(outside) == []


def test_errors_keep_their_standard_bases() -> None:
    """Those callers catch as a ValueError or a LookupError stay one."""
    from secure_mw._encoding import StrictJSONError
    from secure_mw.errors import ConfigError
    from secure_mw.login import PasswordPolicyError, UnknownUserError, UserExistsError
    from secure_mw.login.pages import PagesError
    from secure_mw.session.manager import RecordUnreadable

    for cls in (StrictJSONError, ConfigError, PasswordPolicyError, UserExistsError,
                PagesError, RecordUnreadable):
        assert issubclass(cls, ValueError), cls
    assert issubclass(UnknownUserError, LookupError)
