"""JSON Web Tokens (RFC 7519), signed (JWS compact form) with an asymmetric key.

::

    token = sign({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300}, key)
    claims = verify(token, keys, issuer=ISS, audience=AUD)               # one-off

    verifier = JWTVerifier(keys, issuer=ISS, audience=AUD, algorithms=("ES256", "EdDSA"))
    claims = verifier.verify(token)             # or: await verifier.averify(token)

:class:`JWTVerifier` holds the options, validated once; use it on request paths.
:func:`verify` builds one per call. ``keys`` is a :class:`~secure_mw.tokens.KeySet` or a
:class:`~secure_mw.tokens.RemoteKeySet`.

What :meth:`JWTVerifier.verify` checks, in this order (RFC 8725), before anything else
touches the token: type (``str`` or ASCII ``bytes``) and size (``max_size``, 16 KiB by
default), exactly three non-empty segments (JWE refused), strict base64url, strict JSON objects
(no duplicate members, no NaN/Infinity). Then the header: ``alg`` in the allow-list (never
``none``, never ``HS*``), no ``crit``, no embedded or remote keys (``jwk``, ``jku``, ``x5u``,
``x5c``), a sane ``kid``. The key comes from the pinned set by exact ``kid`` only, and ``alg``
must be one the key allows (its type, and its own ``alg`` if it names one). The signature is
checked by PyJWT's algorithm for ``alg``, after our own length and range checks. Claims:
``exp`` and ``iat`` required, ``nbf`` optional, all numbers (not booleans) and finite; the
leeway (default 30 s, at most 60 s) applies to each; ``iss`` equal to the issuer; ``aud`` a
string or list of strings holding the audience (or one of the audiences) exactly.

Every refusal raises :class:`~secure_mw.errors.InvalidToken` (:class:`ExpiredToken` for
``exp``) with a short reason that never contains the token. The one other error is
:class:`~secure_mw.errors.StoreUnavailable`, when a remote key set cannot be fetched at all.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

from secure_mw.errors import ExpiredToken, InvalidToken, SecureMWError
from secure_mw.tokens.jwks import KeySource
from secure_mw.tokens.keys import (
    MAX_KID_LENGTH,
    SUPPORTED_ALGORITHMS,
    SigningKey,
    StrictJSONError,
    VerifyingKey,
    b64url_decode,
    b64url_encode,
    loads_strict,
)

__all__ = ["DEFAULT_LEEWAY", "DEFAULT_MAX_SIZE", "MAX_LEEWAY", "JWTVerifier", "sign", "verify"]

DEFAULT_LEEWAY = 30.0
MAX_LEEWAY = 60.0
DEFAULT_MAX_SIZE = 16 * 1024

#: PyJWT's implementations of the algorithms we accept — and of no other.
_ALGORITHMS: dict[str, Algorithm] = {
    name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS
}
#: Header parameters we refuse: keys supplied by the token itself, extensions we do not
#: implement (crit, b64), and JWE parameters.
_REFUSED_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "enc"})
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_TIME_CLAIMS = ("exp", "iat", "nbf")


# -- signing ------------------------------------------------------------------------------


def _dumps(value: Mapping[str, Any], what: str) -> bytes:
    if any(not isinstance(name, str) for name in value):
        raise TypeError(f"{what} member names must be strings")
    try:
        text = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except ValueError:
        raise ValueError(f"{what} holds NaN or Infinity") from None
    return text.encode("utf-8")


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def sign(
    claims: Mapping[str, Any], key: SigningKey, *, headers: Mapping[str, Any] | None = None
) -> str:
    """Sign ``claims`` as a compact JWS with ``key`` (header ``alg``, ``kid``, ``typ: JWT``).

    ``headers`` may add or override other header parameters (``typ``, ``cty``, ...); it may
    not set ``alg``, ``kid``, ``crit``, ``jwk``, ``jku``, ``x5u``, ``x5c``, ``b64``, ``zip``
    or ``enc``. ``exp``, ``iat`` and ``nbf``, when present, must be finite numbers;
    :func:`verify` requires ``exp`` and ``iat``.
    """
    if not isinstance(key, SigningKey):
        raise TypeError("key must be a SigningKey")
    if not isinstance(claims, Mapping):
        raise TypeError("claims must be a mapping")
    for name in _TIME_CLAIMS:
        if name in claims and not _is_number(claims[name]):
            raise ValueError(f"claim {name!r} must be a finite number")
    header: dict[str, Any] = {"alg": key.alg, "typ": "JWT", "kid": key.kid}
    for name, value in (headers or {}).items():
        if name in ("alg", "kid") or name in _REFUSED_HEADERS:
            raise ValueError(f"header parameter {name!r} cannot be set")
        header[name] = value
    signing_input = (
        b64url_encode(_dumps(header, "header")) + "." + b64url_encode(_dumps(claims, "claims"))
    )
    signature = _ALGORITHMS[key.alg].sign(signing_input.encode("ascii"), key.private_key)
    return signing_input + "." + b64url_encode(signature)


# -- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    """A token that passed every check that needs no key."""

    alg: str
    kid: str | None
    signing_input: bytes
    signature: bytes
    claims: dict[str, Any]


def _decode_segment(segment: str) -> bytes:
    try:
        return b64url_decode(segment)
    except ValueError:
        raise InvalidToken("token is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = loads_strict(raw)
    except StrictJSONError as exc:
        raise InvalidToken(f"{what}: {exc}") from None
    except (UnicodeDecodeError, RecursionError):
        raise InvalidToken(f"{what}: not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{what} is not a JSON object")
    return value


def _check_options(
    algorithms: Iterable[str], leeway: float, max_size: int
) -> tuple[frozenset[str], float, int]:
    if isinstance(algorithms, str):
        algorithms = (algorithms,)
    allowed = frozenset(algorithms)
    if not allowed:
        raise ValueError("algorithms must name at least one algorithm")
    unsupported = sorted(a for a in allowed if a not in SUPPORTED_ALGORITHMS)
    if unsupported:
        raise ValueError(f"unsupported algorithms {unsupported}; "
                         f"allowed: {', '.join(SUPPORTED_ALGORITHMS)}")
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not math.isfinite(
        leeway
    ):
        raise ValueError("leeway must be a number of seconds")
    if not 0 <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY:g} seconds")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 64:
        raise ValueError("max_size must be an integer of at least 64 (bytes)")
    return allowed, float(leeway), max_size


class JWTVerifier:
    """Verifies tokens against a pinned key set with fixed, validated options.

    ``issuer`` and ``audience`` are compared exactly. ``typ``, when given, must match the
    header's ``typ`` (case-insensitive, ``application/`` prefix optional), which keeps one kind
    of token from being accepted as another. ``clock`` returns the current Unix time.
    """

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str | Iterable[str],
        algorithms: Iterable[str] = ("ES256",),
        leeway: float = DEFAULT_LEEWAY,
        max_size: int = DEFAULT_MAX_SIZE,
        typ: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (callable(getattr(keys, "get_key", None))
                and callable(getattr(keys, "aget_key", None))):
            raise TypeError("keys must be a KeySet or a RemoteKeySet")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be a non-empty string")
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audience must be a non-empty string or a list of them")
        if typ is not None and (not isinstance(typ, str) or not typ):
            raise ValueError("typ must be a non-empty string or None")
        self.keys = keys
        self.issuer = issuer
        self.audience = audiences[0]
        #: A token is accepted when its ``aud`` holds any one of these exactly.
        self.audiences = frozenset(audiences)
        self.algorithms, self.leeway, self.max_size = _check_options(algorithms, leeway, max_size)
        self.typ = _media_type(typ) if typ is not None else None
        self._clock = clock

    def __repr__(self) -> str:
        return (f"JWTVerifier(issuer={self.issuer!r}, audience={self.audience!r}, "
                f"algorithms={sorted(self.algorithms)!r})")

    def verify(self, token: str | bytes) -> dict[str, Any]:
        """The verified claims of ``token``, or :class:`InvalidToken`."""
        try:
            parsed = self._parse(token)
            return self._finish(parsed, self.keys.get_key(parsed.kid))
        except SecureMWError:
            raise
        except Exception:
            # Defence in depth: no input may raise anything but our errors.
            raise InvalidToken("invalid token") from None

    async def averify(self, token: str | bytes) -> dict[str, Any]:
        """Async :meth:`verify`: a remote key set is fetched without blocking the loop."""
        try:
            parsed = self._parse(token)
            return self._finish(parsed, await self.keys.aget_key(parsed.kid))
        except SecureMWError:
            raise
        except Exception:
            raise InvalidToken("invalid token") from None

    # -- steps ----------------------------------------------------------------------------

    def _parse(self, token: object) -> _Parsed:
        if isinstance(token, bytes | bytearray):
            if len(token) > self.max_size:
                raise InvalidToken("token too large")
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken("token is not ASCII") from None
        if not isinstance(token, str):
            raise InvalidToken("token is not a string")
        if len(token) > self.max_size:
            raise InvalidToken("token too large")
        segments = token.split(".")
        if len(segments) == 5:
            raise InvalidToken("encrypted tokens (JWE) are not accepted")
        if len(segments) != 3 or not all(segments):
            raise InvalidToken("token must have three non-empty segments")
        header_b64, payload_b64, signature_b64 = segments

        header = _json_object(_decode_segment(header_b64), "header")
        alg, kid = self._check_header(header)
        claims = _json_object(_decode_segment(payload_b64), "payload")
        return _Parsed(
            alg=alg,
            kid=kid,
            signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
            signature=_decode_segment(signature_b64),
            claims=claims,
        )

    def _check_header(self, header: dict[str, Any]) -> tuple[str, str | None]:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise InvalidToken("alg missing or not a string")
        if alg.strip().lower() == "none":
            raise InvalidToken("unsigned tokens (alg none) are not accepted")
        if alg.upper().startswith("HS"):
            raise InvalidToken("HMAC algorithms are not accepted")
        if alg not in self.algorithms:
            raise InvalidToken("algorithm not allowed")
        if "crit" in header:
            raise InvalidToken("critical header parameters are not supported")
        if any(name in header for name in _REFUSED_HEADERS):
            raise InvalidToken("header parameter not allowed (embedded keys or JWE)")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
            raise InvalidToken("invalid kid")
        if "kid" in header and kid is None:
            raise InvalidToken("invalid kid")
        if self.typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or _media_type(typ) != self.typ:
                raise InvalidToken("unexpected token type")
        return alg, kid

    def _finish(self, parsed: _Parsed, key: VerifyingKey | None) -> dict[str, Any]:
        if key is None:
            raise InvalidToken("unknown signing key")
        if parsed.alg not in key.algorithms:
            raise InvalidToken("algorithm does not match the key")
        if not _signature_valid(parsed.alg, key, parsed.signing_input, parsed.signature):
            raise InvalidToken("invalid signature")
        self._check_claims(parsed.claims, self._clock())
        return parsed.claims

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        leeway = self.leeway
        exp = _time_claim(claims, "exp", required=True)
        iat = _time_claim(claims, "iat", required=True)
        nbf = _time_claim(claims, "nbf", required=False)
        if exp is not None and now >= exp + leeway:
            raise ExpiredToken("token expired")
        if nbf is not None and nbf - leeway > now:
            raise InvalidToken("token not yet valid")
        if iat is not None and iat - leeway > now:
            raise InvalidToken("token issued in the future")
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss != self.issuer:
            raise InvalidToken("issuer mismatch")
        aud = claims.get("aud")
        if isinstance(aud, str):
            audiences: list[object] = [aud]
        elif isinstance(aud, list) and aud:
            audiences = aud
        else:
            raise InvalidToken("aud missing or malformed")
        if not all(isinstance(a, str) for a in audiences):
            raise InvalidToken("aud missing or malformed")
        if self.audiences.isdisjoint(audiences):
            raise InvalidToken("audience mismatch")


def _media_type(typ: str) -> str:
    typ = typ.strip().lower()
    return typ.removeprefix("application/")


def _time_claim(claims: Mapping[str, Any], name: str, *, required: bool) -> float | int | None:
    if name not in claims:
        if required:
            raise InvalidToken(f"{name} claim missing")
        return None
    value = claims[name]
    if not _is_number(value):
        raise InvalidToken(f"{name} claim is not a number")
    number: float | int = value
    return number


def _signature_valid(alg: str, key: VerifyingKey, message: bytes, signature: bytes) -> bool:
    """Our own shape checks, then PyJWT's verification for ``alg``."""
    public = key.public_key
    if alg == "ES256":
        if not isinstance(public, ec.EllipticCurvePublicKey) or len(signature) != 64:
            return False
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _P256_ORDER and 0 < s < _P256_ORDER):
            return False
    elif alg == "EdDSA":
        if isinstance(public, ed25519.Ed25519PublicKey):
            if len(signature) != 64:
                return False
        elif not isinstance(public, ed448.Ed448PublicKey) or len(signature) != 114:
            return False
    elif alg in ("RS256", "PS256"):
        if not isinstance(public, rsa.RSAPublicKey):
            return False
        if len(signature) != (public.key_size + 7) // 8:
            return False
    else:  # pragma: no cover - the allow-list admits nothing else
        return False
    algorithm = _ALGORITHMS[alg]
    try:
        prepared = algorithm.prepare_key(public)  # checks the key family and curve again
        return bool(algorithm.verify(message, prepared, signature))
    except Exception:
        return False


def verify(
    token: str | bytes,
    keys: KeySource,
    *,
    issuer: str,
    audience: str,
    algorithms: Iterable[str] = ("ES256",),
    leeway: float = DEFAULT_LEEWAY,
    max_size: int = DEFAULT_MAX_SIZE,
    typ: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify ``token`` once (see :class:`JWTVerifier`); ``now`` overrides the current time.

    Option errors raise :class:`ValueError`; token errors :class:`InvalidToken`.
    """
    clock: Callable[[], float] = time.time if now is None else (lambda: now)
    verifier = JWTVerifier(keys, issuer=issuer, audience=audience, algorithms=algorithms,
                           leeway=leeway, max_size=max_size, typ=typ, clock=clock)
    return verifier.verify(token)
