"""``require(groups=..., auth_level=...)`` and ``login_required`` for Django views, decided
on the verified identity (``request.identity``): nobody signed in goes to the login (a
browser is redirected, an API client gets 401), a missing second factor to ``/.auth/2fa``
(403 with an OpenID provider, whose sessions cannot be stepped up here), a missing group
gets 403 and an audit line.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from django.http import HttpResponse

from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.authz.rules import AccessPolicy
from secure_mw.contrib.django import identity_of, load_settings
from secure_mw.http import Reply, RequestView
from secure_mw.identity import Identity
from secure_mw.settings import Settings

__all__ = ["login_required", "require"]

View = TypeVar("View", bound=Callable[..., Any])


def _view_of(request: Any) -> RequestView:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        return RequestView.from_scope(scope)
    return RequestView.from_environ(request.META)


#: Per requirement, the layer built for the settings in force (rebuilt when they change).
_layers: dict[AccessPolicy, tuple[Settings, AuthorizationLayer]] = {}


def _refusal(request: Any, policy: AccessPolicy) -> Reply | None:
    """What to answer instead of the view, or None when ``request`` meets the requirement:
    the authorization core decides, as for the Flask and FastAPI integrations."""
    settings = load_settings()
    built = _layers.get(policy)
    if built is None or built[0] is not settings:
        built = _layers[policy] = (settings, AuthorizationLayer(settings, policy=policy))
    layer = built[1]
    identity = identity_of(request)
    view = _view_of(request)
    root = "" if isinstance(getattr(request, "scope", None), dict) \
        else str(request.META.get("SCRIPT_NAME", ""))
    verdict = layer.decide(view, identity if isinstance(identity, Identity) else None,
                           root=root)
    return verdict.reply


def _response(reply: Reply) -> HttpResponse:
    response = HttpResponse(reply.body, status=reply.status)
    for name, value in reply.headers:
        response[name] = value
    return response


def require(groups: str | Iterable[str] = (), auth_level: int = 1) -> Callable[[View], View]:
    """A view decorator: the signed-in user must be in one of ``groups`` (any of them; a
    string is one group) and have signed in with at least ``auth_level`` factors (2: a
    second factor)."""
    wanted = AccessPolicy.requirement(groups, auth_level)

    def decorate(view: View) -> View:
        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def guarded_async(request: Any, *args: Any, **kwargs: Any) -> Any:
                reply = _refusal(request, wanted)
                if reply is not None:
                    return _response(reply)
                return await view(request, *args, **kwargs)

            return cast(View, guarded_async)

        @functools.wraps(view)
        def guarded(request: Any, *args: Any, **kwargs: Any) -> Any:
            reply = _refusal(request, wanted)
            if reply is not None:
                return _response(reply)
            return view(request, *args, **kwargs)

        return cast(View, guarded)

    return decorate


def login_required(view: View) -> View:
    """Like Django's ``login_required``, on the verified identity: ``require()``."""
    return require()(view)
