"""The session record, its lifetime rules and its byte encoding."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from secure_mw._encoding import StrictJSONError, b64url_encode, loads_strict
from secure_mw.errors import InvalidToken
from secure_mw.identity import IDENTITY_CLAIMS, Identity, email_verified_claim

__all__ = ["ClaimsTooLarge", "Session", "identity_claims", "new_session_id", "session_digest"]

SESSION_ID_BYTES = 32          # 256 bits
FORMAT_VERSION = 1
#: At most this many bytes (compact JSON) of the claims kept for the access rules.
MAX_KEPT_CLAIMS = 4096


class ClaimsTooLarge(InvalidToken):
    """The claims the access rules read are larger than a session keeps
    (:data:`MAX_KEPT_CLAIMS`): the sign-in is refused rather than the rules left blind."""


def new_session_id() -> str:
    """43 base64url characters of CSPRNG output."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def session_digest(session_id: str) -> str:
    """A short public handle for a session id (audit lines, ``sid`` claims); not reversible."""
    return b64url_encode(hashlib.sha256(session_id.encode()).digest()[:12])


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """One logged-in user agent. Immutable: changes make a new record (``evolve``)."""

    id: str = field(repr=False)     # the cookie value with server-side stores: a secret
    claims: Mapping[str, Any]
    auth_level: int = 1
    source: str = "oidc"
    created: float
    last_active: float
    expires: float                 # absolute end (expiration or remember-me)
    remember: bool = False
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    # OpenID tokens and bookkeeping: access_token, refresh_token, id_token, access_expires,
    # profile_at (when the profile was last fetched).
    tokens: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # The Identity built from this record, made once (records are immutable; ``evolve``
    # starts without it).
    _identity: Identity | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def sub(self) -> str:
        return str(self.claims["sub"])

    @property
    def digest(self) -> str:
        return session_digest(self.id)

    def identity(self) -> Identity:
        identity = self._identity
        if identity is None:
            # The built-in login's emails come from the administrator's users file: verified
            # (records written before the flag was stored have none).
            identity = Identity.from_claims(self.claims, auth_level=self.auth_level,
                                            source=self.source, session_id=self.digest,
                                            assume_email_verified=self.source == "local")
            object.__setattr__(self, "_identity", identity)
        return identity

    def ends_at(self, inactivity: float) -> float:
        """When this session stops being valid if nothing else happens."""
        if self.remember:
            return self.expires
        return min(self.expires, self.last_active + inactivity)

    def expired_reason(self, now: float, inactivity: float) -> str | None:
        if now >= self.expires:
            return "expired"
        if not self.remember and now >= self.last_active + inactivity:
            return "inactive"
        return None

    def evolve(self, **changes: Any) -> Session:
        return replace(self, **changes)

    # -- encoding -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        record = {
            "v": FORMAT_VERSION, "id": self.id, "c": dict(self.claims), "l": self.auth_level,
            "s": self.source, "t0": self.created, "ta": self.last_active, "te": self.expires,
            "r": self.remember, "x": self.csrf, "k": dict(self.tokens),
        }
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Session:
        """Decode a record; anything malformed raises :class:`ValueError`."""
        try:
            record = loads_strict(data)
        except StrictJSONError as exc:
            raise ValueError(f"session record is not valid JSON: {exc}") from None
        if not isinstance(record, dict) or type(record.get("v")) is not int \
                or record["v"] != FORMAT_VERSION:
            raise ValueError("session record has an unknown format")
        try:
            session = cls(
                id=record["id"], claims=record["c"], auth_level=record["l"], source=record["s"],
                created=record["t0"], last_active=record["ta"], expires=record["te"],
                remember=record["r"], csrf=record["x"], tokens=record["k"],
            )
        except KeyError as exc:
            raise ValueError(f"session record lacks {exc}") from None
        if not (isinstance(session.id, str) and isinstance(session.claims, dict)
                and isinstance(session.claims.get("sub"), str)
                and isinstance(session.tokens, dict) and isinstance(session.csrf, str)
                and type(session.auth_level) is int and isinstance(session.source, str)
                and isinstance(session.remember, bool)
                and all(isinstance(t, int | float) and not isinstance(t, bool)
                        for t in (session.created, session.last_active, session.expires))):
            raise ValueError("session record has fields of the wrong type")
        return session


def identity_claims(claims: Mapping[str, Any], groups_claim: str = "groups", *,
                    assume_email_verified: bool = False,
                    keep: Collection[str] = ()) -> dict[str, Any]:
    """The identity part of provider claims, with the groups claim renamed to ``groups``,
    and the top-level claims named in ``keep`` (those the access rules read:
    :func:`secure_mw.authz.rules.claim_names`) as they are; those may take at most
    :data:`MAX_KEPT_CLAIMS` bytes, else :class:`ClaimsTooLarge`.

    Claims with an ``email`` always get a boolean ``email_verified`` (the provider's, or
    ``assume_email_verified`` when it sent none), so that a later profile update with a new
    email never inherits the old email's flag."""
    out = {k: claims[k] for k in IDENTITY_CLAIMS if k in claims and k != "groups"}
    kept = {k: claims[k] for k in sorted(keep) if k in claims and k not in IDENTITY_CLAIMS}
    if kept:
        size = len(json.dumps(kept, separators=(",", ":"), ensure_ascii=False,
                              default=str).encode())
        if size > MAX_KEPT_CLAIMS:
            raise ClaimsTooLarge(f"the claims the access rules read ({', '.join(kept)}) "
                                 f"take {size} bytes, above the {MAX_KEPT_CLAIMS} a session "
                                 "keeps")
        out.update(kept)
    if "email" in out or "email_verified" in out:
        out["email_verified"] = email_verified_claim(claims, assume=assume_email_verified)
    groups = claims.get(groups_claim)
    if groups is None and "." in groups_claim:   # a nested claim path, e.g. realm_access.roles
        node: Any = claims
        for part in groups_claim.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        groups = node
    if isinstance(groups, str):
        groups = [groups]
    out["groups"] = [g for g in groups if isinstance(g, str)] if isinstance(groups, list) else []
    return out
