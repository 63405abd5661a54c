"""Signed identity assertions: the JWT a proxy puts in a request header for the app behind it.

::

    signer = AssertionSigner(jwks=private_jwks)                 # the first key signs
    token = signer.sign({"sub": "alice", "email": "a@example.com", "groups": ["admins"]},
                        audience="app.example.com", session_id=session.id)
    body, etag = signer.jwks_document()       # for /.well-known/secure-mw/jwks.json

    verifier = AssertionVerifier(jwks_url="https://proxy.example/.well-known/secure-mw/jwks.json",
                                 issuer="app.example.com", audience="app.example.com")
    claims = verifier.verify(token)           # or: await verifier.averify(token)

The claims follow Pomerium's ``X-Pomerium-Jwt-Assertion``: ``iss`` and ``aud`` (the route
host unless configured), ``sub``, ``email``, ``groups`` (always a list), ``name``, ``sid`` (a
digest of the session id, never the id), ``jti``, ``iat`` and ``exp`` (``iat`` + 5 minutes);
header ``alg`` (the first key's: ES256 by default, RS256 possible), ``kid`` (the key's RFC 7638
thumbprint) and ``typ: JWT``.

:class:`AssertionVerifier` runs every check of :class:`~secure_mw.tokens.JWTVerifier` (keys
only from the pinned set, never from the token; issuer and audience pinned; ``exp`` and ``iat``
required; leeway at most 60 s) and adds the ones an assertion needs:

* ``typ``, when present, is ``JWT`` (case-insensitive, ``application/`` prefix allowed);
* with ``require_low_s=True`` (off by default), an ES256 signature must be in low-s form
  (``s <= n/2``), so that a token cannot be re-spelled as a second valid token by replacing
  ``s`` with ``n - s``. RFC 7518 does not ask for low-s and most signers (Go, jose, PyJWT,
  cryptography) do not normalize, so half of their tokens would be refused; a re-spelled
  token carries the same claims, and the cache is keyed by the whole token, so accepting
  both spellings costs only a second verification;
* ``aud`` is the audience itself or a list holding only it: a token for several audiences is
  refused, so an assertion minted for one app is never accepted by another (no ``azp`` rules);
* ``exp - iat`` is at most 24 hours and ``exp`` is not before ``iat``.

Verified tokens are cached until ``exp`` (plus the leeway), keyed by the SHA-256 of the whole
token, in a bounded LRU; a hit still checks ``exp`` against the clock and returns a copy. Only
tokens that passed every check are cached, so hostile input cannot fill the cache.

:class:`AssertionSigner` does not sign on every request: for the same session (or subject),
audience, issuer and identity claims it returns the same token while more than
``reuse_margin`` seconds of its validity remain. Its ES256 signatures are always low-s.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from secure_mw.errors import ExpiredToken, InvalidToken, StoreUnavailable
from secure_mw.tokens.jwks import KeySet, KeySource, RemoteKeySet
from secure_mw.tokens.jwt import DEFAULT_LEEWAY, DEFAULT_MAX_SIZE, JWTVerifier, sign
from secure_mw.tokens.keys import SigningKey, b64url_decode, b64url_encode, loads_strict

__all__ = [
    "DEFAULT_ASSERTION_LIFETIME",
    "MAX_ASSERTION_LIFETIME",
    "AssertionSigner",
    "AssertionVerifier",
]

#: Validity of an assertion we sign (Pomerium's: five minutes).
DEFAULT_ASSERTION_LIFETIME = 300.0
#: Longest ``exp - iat`` a verified assertion may have (and a signer may be configured with).
MAX_ASSERTION_LIFETIME = 86400.0
DEFAULT_CACHE_SIZE = 10_000

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_HALF_ORDER = _P256_ORDER // 2
#: Claims the signer sets itself; identity claims of these names are ignored.
_SIGNER_CLAIMS = frozenset({"iss", "aud", "iat", "exp", "nbf", "jti", "sid"})
_SID_CONTEXT = b"secure-mw assertion sid\x00"


def _seconds(name: str, value: float, *, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum:g} and {maximum:g} seconds")
    return float(value)


def _cache_size(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("cache_size must be a non-negative integer")
    return value


# -- verifying --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verified:
    """A cached verification: the claims and the instant they stop being valid."""

    expires_at: float
    claims: dict[str, Any]
    mutable: tuple[str, ...]  # top-level members holding a list or object
    nested: bool  # some list or object holds another one: a hit needs a deep copy

    def copy_claims(self) -> dict[str, Any]:
        if self.nested:
            return copy.deepcopy(self.claims)
        claims = self.claims.copy()
        for name in self.mutable:
            claims[name] = claims[name].copy()
        return claims


def _remember(claims: dict[str, Any], expires_at: float) -> _Verified:
    mutable = tuple(name for name, value in claims.items() if isinstance(value, list | dict))
    nested = any(
        isinstance(item, list | dict)
        for name in mutable
        for item in (claims[name].values() if isinstance(claims[name], dict) else claims[name])
    )
    return _Verified(expires_at, copy.deepcopy(claims), mutable, nested)


def _typ_is_jwt(typ: object) -> bool:
    return isinstance(typ, str) and typ.strip().lower().removeprefix("application/") == "jwt"


class AssertionVerifier:
    """Verifies signed identity assertions against a pinned key set.

    Give exactly one of ``jwks`` (a JWK Set mapping, a :class:`KeySet` or any key source) and
    ``jwks_url`` (fetched with :class:`RemoteKeySet`: https, or http to loopback only).
    ``cache_size`` bounds the cache of verified tokens (0 disables it).

    :meth:`verify` raises :class:`~secure_mw.errors.InvalidToken` (:class:`ExpiredToken` for
    ``exp``) and nothing else. When the remote key set cannot be fetched at all, the error is
    ``InvalidToken("signing keys unavailable")`` with the
    :class:`~secure_mw.errors.StoreUnavailable` as its ``__cause__``, for callers that want to
    answer 503 rather than 401.
    """

    def __init__(
        self,
        *,
        jwks: Mapping[str, Any] | KeySet | KeySource | None = None,
        jwks_url: str | None = None,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = ("ES256", "RS256"),
        leeway: float = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
        require_low_s: bool = False,
    ) -> None:
        # RFC 7518 accepts either s; Pomerium's (Go), jose's, PyJWT's and cryptography's
        # signatures are high-s half the time. require_low_s=True is the strict option for
        # deployments where every signer normalizes (ours always does).
        self.require_low_s = require_low_s
        if (jwks is None) == (jwks_url is None):
            raise ValueError("give exactly one of jwks and jwks_url")
        keys: KeySource
        if jwks is None:
            keys = RemoteKeySet(str(jwks_url))
        elif isinstance(jwks, Mapping):
            keys = KeySet.from_dict(jwks)
        elif callable(getattr(jwks, "get_key", None)) and callable(
            getattr(jwks, "aget_key", None)
        ):
            keys = jwks
        else:
            raise TypeError("jwks must be a JWK Set mapping, a KeySet or a RemoteKeySet")
        self._core = JWTVerifier(keys, issuer=issuer, audience=audience, algorithms=algorithms,
                                 leeway=leeway, clock=clock)
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = self._core.algorithms
        self.leeway = self._core.leeway
        self.cache_size = _cache_size(cache_size)
        self._max_size = DEFAULT_MAX_SIZE
        self._clock = clock
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"AssertionVerifier(issuer={self.issuer!r}, audience={self.audience!r}, "
                f"algorithms={sorted(self.algorithms)!r})")

    def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token`` (a copy), or :class:`InvalidToken`."""
        digest = self._digest(token)
        if digest is not None:  # the cache lookup, inline: it is the hot path
            with self._lock:
                entry = self._cache.get(digest)
                if entry is not None:
                    if self._clock() >= entry.expires_at:
                        del self._cache[digest]
                        raise ExpiredToken("token expired")
                    self._cache.move_to_end(digest)
            if entry is not None:
                return entry.copy_claims()
        try:
            if not isinstance(token, str):
                raise InvalidToken("token is not a string")
            claims = self._core.verify(token)
            self._check_assertion(token, claims)
        except InvalidToken:
            raise
        except StoreUnavailable as exc:
            raise InvalidToken("signing keys unavailable") from exc
        except Exception:
            raise InvalidToken("invalid token") from None
        return self._store(digest, claims)

    async def averify(self, token: str) -> dict[str, Any]:
        """Async :meth:`verify`: a remote key set is fetched without blocking the event loop."""
        digest = self._digest(token)
        if digest is not None:
            hit = self._cached(digest)
            if hit is not None:
                return hit
        try:
            if not isinstance(token, str):
                raise InvalidToken("token is not a string")
            claims = await self._core.averify(token)
            self._check_assertion(token, claims)
        except InvalidToken:
            raise
        except StoreUnavailable as exc:
            raise InvalidToken("signing keys unavailable") from exc
        except Exception:
            raise InvalidToken("invalid token") from None
        return self._store(digest, claims)

    def cached(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` (a copy) if a verification of it is cached, else ``None``;
        an expired one raises :class:`ExpiredToken`. No I/O: callers that drive
        :meth:`verify`/:meth:`averify` as a flow try this first."""
        digest = self._digest(token)
        return None if digest is None else self._cached(digest)

    def clear_cache(self) -> None:
        """Forget every cached verification (after removing a key from a static set, say)."""
        with self._lock:
            self._cache.clear()

    # -- cache ------------------------------------------------------------------------------

    def _digest(self, token: object) -> bytes | None:
        """The cache key of a plausible token; ``None`` sends anything odd to the full checks."""
        if not self.cache_size or type(token) is not str or len(token) > self._max_size:
            return None
        try:
            return hashlib.sha256(token.encode("ascii")).digest()
        except UnicodeEncodeError:
            return None

    def _cached(self, digest: bytes) -> dict[str, Any] | None:
        with self._lock:
            entry = self._cache.get(digest)
            if entry is None:
                return None
            if self._clock() >= entry.expires_at:
                del self._cache[digest]
                raise ExpiredToken("token expired")
            self._cache.move_to_end(digest)
        return entry.copy_claims()

    def _store(self, digest: bytes | None, claims: dict[str, Any]) -> dict[str, Any]:
        if digest is None:
            return claims
        try:
            entry = _remember(claims, float(claims["exp"]) + self.leeway)
        except Exception:  # an odd but valid claim set (deep nesting): just do not cache it
            return claims
        with self._lock:
            self._cache[digest] = entry
            self._cache.move_to_end(digest)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return claims

    # -- the checks an assertion adds to the JWT core ----------------------------------------

    def _check_assertion(self, token: str, claims: dict[str, Any]) -> None:
        # The core accepted the token: three canonical base64url segments, a JSON header.
        header_b64, _, signature_b64 = token.split(".")
        header = loads_strict(b64url_decode(header_b64))
        if "typ" in header and not _typ_is_jwt(header["typ"]):
            raise InvalidToken("unexpected token type")
        if self.require_low_s and header.get("alg") == "ES256":
            signature = b64url_decode(signature_b64)
            if int.from_bytes(signature[32:], "big") > _P256_HALF_ORDER:
                raise InvalidToken("ECDSA signature not in low-s form")
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) != 1:
            raise InvalidToken("token has several audiences")
        lifetime = claims["exp"] - claims["iat"]
        if lifetime < 0:
            raise InvalidToken("token expires before it was issued")
        if lifetime > MAX_ASSERTION_LIFETIME:
            raise InvalidToken("token lifetime too long")


# -- signing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signed:
    identity: dict[str, Any]  # a private copy of the identity claims it was signed for
    token: str
    iat: float
    reuse_until: float


def _session_digest(session_id: str) -> str:
    return b64url_encode(hashlib.sha256(_SID_CONTEXT + session_id.encode("utf-8")).digest())


def _groups(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else list(value)
        if all(isinstance(item, str) for item in items):
            return items
    raise ValueError("groups must be a list of strings (or None)")


def _low_s(token: str) -> str:
    """The same ES256 token with its signature's ``s`` in low form (``n - s`` if high)."""
    head, body, signature_b64 = token.split(".")
    signature = b64url_decode(signature_b64)
    s = int.from_bytes(signature[32:], "big")
    if s <= _P256_HALF_ORDER:
        return token
    low = (_P256_ORDER - s).to_bytes(32, "big")
    return f"{head}.{body}.{b64url_encode(signature[:32] + low)}"


class AssertionSigner:
    """Signs identity assertions with the first key of a private JWK Set.

    Every key of the set is published by :meth:`public_jwks`, so a new key can be published
    before it signs and an old one kept while its assertions may still be in flight. Each key's
    ``kid`` is its RFC 7638 thumbprint (a ``kid`` in the JWK is not used).

    ``issuer`` defaults to the audience of each assertion (the route host). ``lifetime`` is
    ``exp - iat`` (at most 24 h); an assertion is reused while more than ``reuse_margin``
    seconds of it remain (``0 <= reuse_margin < lifetime``). ``cache_size`` bounds the
    assertions kept for reuse (0 disables reuse).
    """

    def __init__(
        self,
        *,
        jwks: Mapping[str, Any],
        issuer: str | None = None,
        lifetime: float = DEFAULT_ASSERTION_LIFETIME,
        clock: Callable[[], float] = time.time,
        reuse_margin: float = 60.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(entries, list) or not entries:
            raise ValueError("jwks must be a private JWK Set with at least one key")
        keys: list[SigningKey] = []
        for index, jwk in enumerate(entries):
            try:
                loaded = SigningKey.from_jwk(jwk)
                keys.append(SigningKey(loaded.private_key, alg=loaded.alg))  # kid = thumbprint
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"jwks keys[{index}]: {exc}") from None
        kids = [key.kid for key in keys]
        if len(set(kids)) != len(kids):
            raise ValueError("jwks lists the same key twice")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ValueError("issuer must be a non-empty string or None")
        self.issuer = issuer
        self.lifetime = _seconds("lifetime", lifetime, minimum=1.0,
                                 maximum=MAX_ASSERTION_LIFETIME)
        self.reuse_margin = _seconds("reuse_margin", reuse_margin, minimum=0.0,
                                     maximum=MAX_ASSERTION_LIFETIME)
        if self.reuse_margin >= self.lifetime:
            raise ValueError("reuse_margin must be shorter than lifetime")
        self.cache_size = _cache_size(cache_size)
        self._keys = tuple(keys)
        self._clock = clock
        self._public: dict[str, Any] = {"keys": [key.public_jwk() for key in keys]}
        self._document = json.dumps(self._public, separators=(",", ":"), sort_keys=True).encode()
        digest = b64url_encode(hashlib.sha256(self._document).digest())
        self._etag = f'"{digest}"'
        self._cache: OrderedDict[tuple[str, str, str], _Signed] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        key = self._keys[0]
        return f"AssertionSigner(kid={key.kid!r}, alg={key.alg!r}, keys={len(self._keys)})"

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs (the first of the set)."""
        return self._keys[0]

    def sign(
        self,
        identity_claims: Mapping[str, Any],
        *,
        audience: str,
        issuer: str | None = None,
        session_id: str | None = None,
    ) -> str:
        """An assertion for ``identity_claims`` (``sub`` required; ``email``, ``name``,
        ``groups`` and any other JSON claims optional) addressed to ``audience``.

        ``iss``, ``aud``, ``iat``, ``exp``, ``nbf``, ``jti`` and ``sid`` in ``identity_claims``
        are ignored: the signer sets them. ``sid`` is a digest of ``session_id`` (absent
        without one). Bad input raises :class:`ValueError` or :class:`TypeError`.
        """
        return self.sign_reusable(identity_claims, audience=audience, issuer=issuer,
                                  session_id=session_id)[0]

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the signer dates assertions by (seconds since the epoch)."""
        return self._clock

    def sign_reusable(
        self,
        identity_claims: Mapping[str, Any],
        *,
        audience: str,
        issuer: str | None = None,
        session_id: str | None = None,
    ) -> tuple[str, float, float]:
        """:meth:`sign`, also returning the token's ``iat`` and the moment until which it
        may be handed out again (``exp - reuse_margin``): a caller that caches the token
        in front of the signer (:class:`~secure_mw.tokens.headers.IssueLayer`) keeps it
        exactly as long as the signer would."""
        identity = identity_claims if type(identity_claims) is dict else dict(identity_claims)
        subject = identity.get("sub")
        if not isinstance(subject, str) or not subject:
            raise ValueError("identity claims need a non-empty string 'sub'")
        if not isinstance(audience, str) or not audience:
            raise ValueError("audience must be a non-empty string")
        iss = issuer or self.issuer or audience
        key = (session_id if session_id is not None else "\x00" + subject, audience, iss)
        now = self._clock()
        if self.cache_size:
            with self._lock:
                entry = self._cache.get(key)
                if (entry is not None and entry.iat <= now < entry.reuse_until
                        and entry.identity == identity):
                    self._cache.move_to_end(key)
                    return entry.token, entry.iat, entry.reuse_until
        iat = int(now)
        exp = int(iat + self.lifetime)
        claims: dict[str, Any] = {
            name: value for name, value in identity.items() if name not in _SIGNER_CLAIMS
        }
        claims["email"] = identity.get("email") or ""
        claims["name"] = identity.get("name") or ""
        claims["groups"] = _groups(identity.get("groups"))
        for name in ("email", "name"):
            if not isinstance(claims[name], str):
                raise ValueError(f"identity claim {name!r} must be a string")
        claims.update(iss=iss, aud=audience, iat=iat, exp=exp, jti=secrets.token_urlsafe(16))
        if session_id is not None:
            if not isinstance(session_id, str) or not session_id:
                raise ValueError("session_id must be a non-empty string or None")
            claims["sid"] = _session_digest(session_id)
        signing_key = self._keys[0]
        token = sign(claims, signing_key)
        if signing_key.alg == "ES256":
            token = _low_s(token)
        reuse_until = exp - self.reuse_margin
        if self.cache_size:
            entry = _Signed(copy.deepcopy(identity), token, iat, reuse_until)
            with self._lock:
                self._cache[key] = entry
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return token, float(iat), reuse_until

    def public_jwks(self) -> dict[str, Any]:
        """The public JWK Set: every key of the set (the signing key first)."""
        return copy.deepcopy(self._public)

    def jwks_document(self) -> tuple[bytes, str]:
        """The public JWK Set as JSON bytes and its strong ETag (quoted base64url SHA-256)."""
        return self._document, self._etag

