"""Flask integration: ``SecureMW(app)`` wraps ``app.wsgi_app`` in the :func:`secure_mw.wsgi.protect`
stack (so ``app`` stays a Flask object and ``flask run`` works), :data:`current_identity` is who
is signed in (:data:`~secure_mw.identity.ANONYMOUS` when nobody), and :func:`login_required` /
:func:`require` guard a view. The decisions are the authorization core's: a decorator compiles
its requirement into an access rule once and asks the same layer the ``[access_control]``
middleware asks (docs/quickstart/flask.md).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

try:
    from flask import Flask, Response, current_app, has_request_context, request
    from werkzeug.local import LocalProxy
except ImportError as exc:  # pragma: no cover - exercised by tests/test_plain_install.py
    raise ImportError(
        "secure_mw.contrib.flask needs Flask: pip install 'secure-mw[flask]'") from exc

from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.authz.rules import AccessPolicy
from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.identity import ANONYMOUS, AnonymousUser, Identity
from secure_mw.settings import Settings
from secure_mw.wsgi import protect
from secure_mw.wsgi._io import view_of

__all__ = ["CONFIG_KEY", "SecureMW", "current_identity", "login_required", "require"]

#: The ``app.config`` key read by :meth:`SecureMW.init_app`.
CONFIG_KEY = "SECURE_MW"
_EXTENSION = "secure_mw"

F = TypeVar("F", bound=Callable[..., Any])


class SecureMW:
    """The Flask extension: ``SecureMW(app)``, or ``ext = SecureMW()`` then
    ``ext.init_app(app)`` in an app factory.

    ``app.config["SECURE_MW"]`` is a mapping (the TOML file's tables), the path of a TOML
    file, or a :class:`~secure_mw.Settings`; without it, ``$SECURE_MW_CONFIG`` and the
    ``SECURE_MW_*`` environment variables configure the app. A mapping and a file take
    ``SECURE_MW_*`` overrides from ``environ`` (default: the process environment). A bad
    configuration raises :class:`~secure_mw.errors.ConfigError` from ``init_app``, naming
    every key path at fault. ``options`` go to :func:`secure_mw.wsgi.protect` (``keyring``,
    ``store``, ``users``, ``clock``, ``audit``, ...).
    """

    def __init__(self, app: Flask | None = None, *, environ: Mapping[str, str] | None = None,
                 **options: Any) -> None:
        self.environ = environ
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if _EXTENSION in app.extensions:
            raise RuntimeError("SecureMW is already set up on this app")
        settings = settings_from(app.config.get(CONFIG_KEY), environ=self.environ,
                                 base_dir=app.root_path)
        app.wsgi_app = protect(app.wsgi_app, settings, **self.options)  # type: ignore[method-assign,assignment]
        app.extensions[_EXTENSION] = _State(settings)
        app.context_processor(_template_context)


def settings_from(value: object, *, environ: Mapping[str, str] | None = None,
                  base_dir: str | os.PathLike[str] | None = None) -> Settings:
    """The settings ``app.config["SECURE_MW"]`` stands for (see :class:`SecureMW`); relative
    ``*_file`` paths of a mapping are resolved against ``base_dir``."""
    env = os.environ if environ is None else environ
    if value is None:
        path = env.get("SECURE_MW_CONFIG")
        return Settings.from_file(path, environ=env) if path else \
            Settings.from_mapping({}, environ=env)
    if isinstance(value, Settings):
        return value
    if isinstance(value, str | os.PathLike):
        return Settings.from_file(Path(value), environ=env)
    if isinstance(value, Mapping):
        return Settings.from_mapping(value, environ=env, base_dir=base_dir)
    raise ConfigError([ConfigProblem(
        CONFIG_KEY, f"expected a mapping, the path of a TOML file or a Settings, not "
                    f"{type(value).__name__}")])


class _State:
    """What the extension keeps per app: its settings, and one authorization layer per
    decorator requirement (built at the first request that needs it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layers: dict[AccessPolicy, AuthorizationLayer] = {}

    def layer(self, policy: AccessPolicy) -> AuthorizationLayer:
        layer = self.layers.get(policy)
        if layer is None:
            layer = self.layers[policy] = AuthorizationLayer(self.settings, policy=policy)
        return layer


def _identity() -> Identity | AnonymousUser:
    if not has_request_context():
        return ANONYMOUS
    identity = request.environ.get("secure_mw.identity")
    return identity if isinstance(identity, Identity) else ANONYMOUS


#: Who is making the current request: an :class:`~secure_mw.identity.Identity`, or
#: :data:`~secure_mw.identity.ANONYMOUS` (falsy, ``is_authenticated`` false) when nobody is
#: signed in or outside a request. Templates see it as ``current_identity`` too.
current_identity: Identity | AnonymousUser = cast(
    "Identity | AnonymousUser", LocalProxy(_identity))


def _template_context() -> dict[str, Any]:
    nonce = request.environ.get("secure_mw.csp_nonce", "") if has_request_context() else ""
    return {"current_identity": _identity(), "csp_nonce": nonce}


def require(groups: str | Iterable[str] = (), auth_level: int = 1) -> Callable[[F], F]:
    """A view decorator: the signed-in user must be in one of ``groups`` (any of them; none
    given: any user) and have authenticated at ``auth_level`` (2: with a second factor).
    Nobody signed in: a browser navigation is redirected to the login and back, anything
    else gets 401 JSON saying where to log in. Signed in but not allowed: 403 (an HTML page
    for a browser, JSON otherwise), audited as ``authorization_denied``. A second factor
    is offered by the built-in login; an OpenID provider's session that lacks it gets 403."""
    policy = AccessPolicy.requirement(groups, auth_level)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            state = current_app.extensions.get(_EXTENSION)
            if not isinstance(state, _State):
                raise RuntimeError("@require and @login_required need SecureMW(app)")
            environ = request.environ
            identity = environ.get("secure_mw.identity")
            verdict = state.layer(policy).decide(
                view_of(environ), identity if isinstance(identity, Identity) else None,
                root=environ.get("SCRIPT_NAME", ""))
            if verdict.reply is not None:
                reply = verdict.reply
                return Response(reply.body, status=reply.status, headers=reply.headers)
            return view(*args, **kwargs)

        return cast(F, guarded)

    return decorate


def login_required(view: F) -> F:
    """A view decorator: somebody must be signed in (see :func:`require`)."""
    return require()(view)
