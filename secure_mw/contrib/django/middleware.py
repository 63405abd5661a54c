"""``IdentityMiddleware`` (after ``AuthenticationMiddleware``): ``request.identity`` is the
identity the ``protect()`` stack verified (:data:`~secure_mw.identity.ANONYMOUS` when
nobody), and with :class:`~secure_mw.contrib.django.backends.IdentityBackend` configured,
``request.user`` follows it. The Django login is bound to the secure_mw session it came
from: when that session ends (``/.auth/logout``, expiry, ``secure-mw users end-sessions``)
or another one replaces it, the next request ends the Django login too (its session data
is flushed), so a Django session cookie never outlives the sign-in it was made for.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import auth

from secure_mw.contrib.django import IDENTITY_KEY, identity_of
from secure_mw.identity import Identity

__all__ = ["IdentityMiddleware"]

BACKEND = "secure_mw.contrib.django.backends.IdentityBackend"
#: Keys in the Django session: the secure_mw session the login belongs to, and a digest of
#: what the identity said when the Django user was last brought up to date.
BOUND_KEY = "_secure_mw_session"
SEEN_KEY = "_secure_mw_identity"


def _digest(identity: Identity) -> str:
    text = json.dumps(identity.as_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


log = logging.getLogger("secure_mw.contrib.django")


def _wrapped(request: Any) -> bool:
    """Whether the ``protect()`` stack saw ``request`` (it always sets the identity key)."""
    scope = getattr(request, "scope", None)
    return IDENTITY_KEY in request.META or (isinstance(scope, dict) and IDENTITY_KEY in scope)


class IdentityMiddleware:
    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.warned = False

    def __call__(self, request: Any) -> Any:
        if not self.warned and not _wrapped(request):
            self.warned = True    # every such request stays anonymous: fail closed, say why
            log.warning("a request reached Django without the secure_mw stack: nobody is "
                        "signed in; serve secure_mw.contrib.django.get_wsgi_application() "
                        "(or get_asgi_application()) from wsgi.py (asgi.py)")
        identity = identity_of(request)
        request.identity = identity
        if BACKEND in settings.AUTHENTICATION_BACKENDS and hasattr(request, "user"):
            self._follow(request, identity if isinstance(identity, Identity) else None)
        return self.get_response(request)

    @staticmethod
    def _follow(request: Any, identity: Identity | None) -> None:
        if identity is not None and identity.source == "bearer":
            # A token is sent with every request: request.user for this one, no Django
            # session (no login, no session row, no sessionid cookie for an API client).
            user = auth.authenticate(request, identity=identity)
            if user is not None:
                request.user = user
            else:
                from django.contrib.auth.models import AnonymousUser

                request.user = AnonymousUser()
            return
        session = request.session
        ours = session.get(auth.BACKEND_SESSION_KEY) == BACKEND
        if identity is None:
            if ours:   # the secure_mw session is gone: so is the Django login
                auth.logout(request)
            return
        user = request.user
        same = (ours and user.is_authenticated and user.get_username() == identity.sub
                and session.get(BOUND_KEY) == identity.session_id)
        if same and session.get(SEEN_KEY) == _digest(identity):
            return
        if ours and not same:   # another sign-in: nothing of the old one is kept
            auth.logout(request)
        user = auth.authenticate(request, identity=identity)
        if user is None:        # refused (an inactive user, a subject too long)
            if session.get(auth.BACKEND_SESSION_KEY) == BACKEND:
                auth.logout(request)
            return
        if not same:
            auth.login(request, user, backend=BACKEND)
        request.user = user
        request.session[BOUND_KEY] = identity.session_id
        request.session[SEEN_KEY] = _digest(identity)
