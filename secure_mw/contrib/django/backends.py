"""``IdentityBackend``: ``request.user`` from the identity the ``protect()`` stack verified,
as Django's ``RemoteUserBackend`` does from ``REMOTE_USER`` — but it accepts only the
identity of the request being served (never a header, never a value handed in by other
code). The Django user named after ``Identity.sub`` is created on first sign-in (with an
unusable password that records whether the built-in login or a provider made it: the other
kind never signs in as that user) and kept up to date: email (verified ones only), name, and with
``SECURE_MW_SYNC_GROUPS = True`` its Django groups; ``SECURE_MW_STAFF_GROUPS`` /
``SECURE_MW_SUPERUSER_GROUPS`` grant ``is_staff`` / ``is_superuser``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.contrib.auth.models import Group

from secure_mw.audit import audit_logger
from secure_mw.contrib.django import identity_of
from secure_mw.identity import Identity

__all__ = ["IdentityBackend"]

_FIELD_MAX = 150   # Django's username, first_name and Group.name


_TAG = "secure_mw:"


def _kind(identity: Identity) -> str:
    """``local`` for the built-in login (names from the users file), ``provider`` for the
    rest (subjects issued by an OpenID provider or a proxy)."""
    return "local" if identity.source == "local" else "provider"


def _made_by(password: str) -> str | None:
    prefix = UNUSABLE_PASSWORD_PREFIX + _TAG
    return password[len(prefix):] if password.startswith(prefix) else None


def _groups_setting(name: str) -> frozenset[str]:
    value: Iterable[str] = getattr(settings, name, ())
    return frozenset([value] if isinstance(value, str) else value)


class IdentityBackend(ModelBackend):  # type: ignore[misc]  # Django ships no type hints
    """``auth.authenticate(request, identity=request.identity)`` — which
    :class:`~secure_mw.contrib.django.middleware.IdentityMiddleware` does for you."""

    def authenticate(self, request: Any, identity: Identity | None = None,
                     **credentials: Any) -> Any:
        if request is None or not isinstance(identity, Identity):
            return None
        if identity_of(request) is not identity:   # only the verified one of this request
            return None
        model = get_user_model()
        field = model._meta.get_field(model.USERNAME_FIELD)
        limit = field.max_length or _FIELD_MAX
        if not identity.sub or len(identity.sub) > limit:
            audit_logger().event("django_user_refused", level=logging.WARNING,
                                 user=identity.sub[:64], source=identity.source,
                                 reason=f"the subject does not fit a Django user name "
                                        f"({limit} characters at most)")
            return None
        user, created = model._default_manager.get_or_create(
            **{model.USERNAME_FIELD: identity.sub})
        made_by = _made_by(user.password)
        if not created and made_by is not None and made_by != _kind(identity):
            # The users file's names and a provider's subjects are two namespaces: a
            # provider's "admin" never becomes the built-in login's admin (nor the reverse).
            audit_logger().event("django_user_refused", level=logging.WARNING,
                                 user=identity.sub, source=identity.source,
                                 reason=f"the Django user was made by a {made_by} sign-in")
            return None
        self.configure_user(request, user, created=created, identity=identity)
        return user if self.user_can_authenticate(user) else None

    def configure_user(self, request: Any, user: Any, created: bool = True,
                       identity: Identity | None = None) -> Any:
        """Copy what the identity says about the user onto the Django user (saved only when
        something changed)."""
        if identity is None:
            return user
        groups = set(identity.groups)
        wanted: dict[str, Any] = {
            "email": identity.email if identity.email_verified else "",
            "first_name": identity.name[:_FIELD_MAX],
            "last_name": "",
        }
        staff, superuser = (_groups_setting("SECURE_MW_STAFF_GROUPS"),
                            _groups_setting("SECURE_MW_SUPERUSER_GROUPS"))
        if staff or superuser:
            wanted["is_staff"] = bool(groups & (staff | superuser))
            wanted["is_superuser"] = bool(groups & superuser)
        changed = [name for name, value in wanted.items()
                   if hasattr(user, name) and getattr(user, name) != value]
        for name in changed:
            setattr(user, name, wanted[name])
        if created:
            # Unusable (it starts with "!"), and it says which kind of sign-in made the user.
            user.password = f"{UNUSABLE_PASSWORD_PREFIX}{_TAG}{_kind(identity)}"
            user.save()
        elif changed:
            user.save(update_fields=changed)
        if getattr(settings, "SECURE_MW_SYNC_GROUPS", False):
            names = sorted(g for g in groups if len(g) <= _FIELD_MAX)
            current = set(user.groups.values_list("name", flat=True))
            if current != set(names):
                user.groups.set([Group.objects.get_or_create(name=n)[0] for n in names])
        return user
