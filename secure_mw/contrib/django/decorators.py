"""``require(groups=..., auth_level=...)`` and ``login_required`` for Django views, decided
on the verified identity (``request.identity``): nobody signed in goes to the login (a
browser is redirected, an API client gets 401), a missing second factor to ``/.auth/2fa``
(403 with an OpenID provider, whose sessions cannot be stepped up here), a missing group
gets 403 and an audit line.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from django.http import HttpResponse

from secure_mw.audit import audit_logger
from secure_mw.contrib.django import identity_of, load_settings
from secure_mw.http import Reply, RequestView, html_reply, json_reply
from secure_mw.identity import Identity
from secure_mw.oidc.core import challenge
from secure_mw.settings import Settings

__all__ = ["login_required", "require"]

View = TypeVar("View", bound=Callable[..., Any])


def _view_of(request: Any) -> RequestView:
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        return RequestView.from_scope(scope)
    return RequestView.from_environ(request.META)


def _cookie_name(settings: Settings) -> str:
    from secure_mw.session.cookies import CookieJarSpec

    jar = CookieJarSpec(secure=settings.session.cookie_secure,
                        domain=settings.session.cookie_domain)
    return jar.name(settings.session.cookie_name)


def _refusal(request: Any, groups: frozenset[str], auth_level: int) -> Reply | None:
    """What to answer instead of the view, or None when ``request`` meets the requirement."""
    identity = identity_of(request)
    settings = load_settings()
    if not isinstance(identity, Identity):
        return challenge(_view_of(request), settings.server.auth_prefix,
                         _cookie_name(settings))
    # Any one of the groups will do, as require() in the Flask and FastAPI integrations and
    # as a list of subjects in an access rule.
    missing = sorted(groups) if groups and not groups & set(identity.groups) else []
    if identity.auth_level < auth_level and not missing and settings.oidc is None:
        return challenge(_view_of(request), settings.server.auth_prefix,
                         _cookie_name(settings), step="2fa")
    if not missing and identity.auth_level >= auth_level:
        return None
    view = _view_of(request)
    reason = f"not in any of {', '.join(missing)}" if missing else \
        f"auth level {identity.auth_level} below {auth_level}"
    audit_logger().event("authorization_denied", level=logging.WARNING,
                         remote_ip=view.client, method=view.method, host=view.host,
                         path=view.path, user=identity.sub, rule="django_view",
                         effect="deny", reason=reason)
    if view.wants_html:
        return html_reply(403, "Access denied", "You do not have access to this page.")
    return json_reply(403, {"error": "forbidden"})


def _response(reply: Reply) -> HttpResponse:
    response = HttpResponse(reply.body, status=reply.status)
    for name, value in reply.headers:
        response[name] = value
    return response


def require(groups: str | Iterable[str] = (), auth_level: int = 1) -> Callable[[View], View]:
    """A view decorator: the signed-in user must be in one of ``groups`` (any of them; a
    string is one group) and have signed in with at least ``auth_level`` factors (2: a
    second factor)."""
    wanted = frozenset([groups] if isinstance(groups, str) else groups)
    if auth_level < 1:
        raise ValueError("auth_level must be 1 (signed in) or more")

    def decorate(view: View) -> View:
        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def guarded_async(request: Any, *args: Any, **kwargs: Any) -> Any:
                reply = _refusal(request, wanted, auth_level)
                if reply is not None:
                    return _response(reply)
                return await view(request, *args, **kwargs)

            return cast(View, guarded_async)

        @functools.wraps(view)
        def guarded(request: Any, *args: Any, **kwargs: Any) -> Any:
            reply = _refusal(request, wanted, auth_level)
            if reply is not None:
                return _response(reply)
            return view(request, *args, **kwargs)

        return cast(View, guarded)

    return decorate


def login_required(view: View) -> View:
    """Like Django's ``login_required``, on the verified identity: ``require()``."""
    return require()(view)
