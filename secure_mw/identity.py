"""Who is making the request, in the shape every framework can read.

:class:`Identity` is what the session middleware (and later the signed-header verifier) puts
in ``scope["secure_mw.identity"]`` / ``environ["secure_mw.identity"]``; it also serves as
``scope["user"]``, having the properties of Starlette's ``BaseUser`` (``is_authenticated``,
``display_name``, ``identity``), so ``request.user`` works unchanged. :data:`ANONYMOUS` stands
in when nobody is logged in. ``email_verified`` says whether the email is one the identity
source vouches for; access rules on emails look only at verified ones (docs/authorization.md).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["ANONYMOUS", "AnonymousUser", "AuthScopes", "Identity", "claims_groups",
           "email_verified_claim"]

# The claims an identity keeps from an OpenID provider (everything else is dropped: tokens
# can carry a lot, and sessions must stay small).
IDENTITY_CLAIMS = ("sub", "email", "email_verified", "name", "preferred_username", "groups")


def email_verified_claim(claims: Mapping[str, Any], *, assume: bool = False) -> bool:
    """Whether ``claims`` say their email is verified: an ``email_verified`` of ``true`` (or
    the string ``"true"``, as some providers send it); ``assume`` when the claim is absent."""
    value = claims.get("email_verified")
    if value is None:
        return assume
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def normalize_username(name: str) -> str:
    """How every part of secure_mw compares user names — the users file, regulation's
    counters, the device cookie: NFKC, surrounding white space removed, case folded, so
    ``Alice``, ``ALICE``, `` alice `` and ``alice`` in fullwidth letters are one user."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def claims_groups(value: object) -> tuple[str, ...]:
    """A groups claim as a tuple of strings (a single string counts as one group)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list | tuple):
        return tuple(g for g in value if isinstance(g, str) and g)
    return ()


class Identity:
    """An authenticated user (immutable)."""

    __slots__ = ("auth_level", "claims", "email", "email_verified", "groups", "name",
                 "session_id", "source", "sub")
    sub: str
    email: str
    email_verified: bool
    name: str
    groups: tuple[str, ...]
    claims: Mapping[str, Any]
    auth_level: int
    source: str
    session_id: str

    is_authenticated = True

    def __init__(self, *, sub: str, email: str = "", email_verified: bool = False,
                 name: str = "", groups: Iterable[str] = (),
                 claims: Mapping[str, Any] | None = None, auth_level: int = 1,
                 source: str = "oidc", session_id: str = "") -> None:
        init = object.__setattr__
        init(self, "sub", sub)
        init(self, "email", email)
        init(self, "email_verified", bool(email) and email_verified is True)
        init(self, "name", name)
        init(self, "groups", tuple(groups))
        init(self, "claims", MappingProxyType(dict(claims or {})))
        init(self, "auth_level", auth_level)
        init(self, "source", source)
        init(self, "session_id", session_id)  # a digest of the session id (not the cookie)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("an Identity cannot be changed")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("an Identity cannot be changed")

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, auth_level: int = 1,
                    source: str = "oidc", session_id: str = "",
                    assume_email_verified: bool = False) -> Identity:
        """``assume_email_verified``: the email counts as verified when the claims have no
        ``email_verified`` (see :func:`email_verified_claim`)."""
        email = claims.get("email")
        name = next((v for v in (claims.get("name"), claims.get("preferred_username"))
                     if isinstance(v, str) and v), "")
        return cls(
            sub=str(claims["sub"]),
            email=email if isinstance(email, str) else "",
            email_verified=email_verified_claim(claims, assume=assume_email_verified),
            name=name,
            groups=claims_groups(claims.get("groups")),
            claims=claims,
            auth_level=auth_level,
            source=source,
            session_id=session_id,
        )

    @property
    def display_name(self) -> str:
        return self.name or self.email or self.sub

    @property
    def identity(self) -> str:
        return self.sub

    @property
    def two_factor(self) -> bool:
        return self.auth_level >= 2

    def as_dict(self) -> dict[str, Any]:
        return {"sub": self.sub, "email": self.email, "email_verified": self.email_verified,
                "name": self.name, "groups": list(self.groups), "auth_level": self.auth_level,
                "source": self.source}

    def __repr__(self) -> str:
        return f"Identity(sub={self.sub!r}, email={self.email!r}, auth_level={self.auth_level})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.sub, self.auth_level, self.source))


class AnonymousUser:
    """Nobody: ``is_authenticated`` is false (Starlette's ``UnauthenticatedUser`` shape)."""

    __slots__ = ()
    is_authenticated = False
    display_name = ""
    identity = ""
    auth_level = 0
    groups: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return "ANONYMOUS"

    def __bool__(self) -> bool:
        return False


ANONYMOUS = AnonymousUser()


class AuthScopes:
    """``scope["auth"]`` for Starlette's ``requires()``: ``authenticated`` and, after a second
    factor, ``two_factor``."""

    __slots__ = ("scopes",)

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        self.scopes = tuple(scopes)

    @classmethod
    def of(cls, identity: Identity | None) -> AuthScopes:
        if identity is None:
            return _NO_SCOPES
        return _TWO_FACTOR if identity.two_factor else _ONE_FACTOR


_NO_SCOPES = AuthScopes()
_ONE_FACTOR = AuthScopes(["authenticated"])
_TWO_FACTOR = AuthScopes(["authenticated", "two_factor"])
