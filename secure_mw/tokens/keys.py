"""Signature keys: JWK import and export (RFC 7517/7518) and JWK thumbprints (RFC 7638).

::

    key = SigningKey.generate("ES256")       # kid = RFC 7638 thumbprint of the public key
    key.public_jwk()                         # {"kty": "EC", "crv": "P-256", "x": .., "y": ..,
                                             #  "kid": .., "alg": "ES256", "use": "sig"}
    same = SigningKey.from_jwk(key.private_jwk())
    vk = VerifyingKey.from_jwk(key.public_jwk())

Only asymmetric signature algorithms exist here — ES256 (P-256), EdDSA (Ed25519, Ed448),
RS256 and PS256 (RSA of 2048 bits or more). There is no HMAC and no ``none``: a key is never
a shared secret, so a public key can never be turned into an HMAC secret.

A key is bound to the algorithms its type allows (EC P-256 → ES256, OKP → EdDSA,
RSA → RS256/PS256); a JWK that names its own ``alg`` is bound to that one alone.

:func:`b64url_decode` and :func:`loads_strict` are the strict decoders the JWT verifier uses:
base64url without padding, in its one canonical form; JSON with no duplicate member, no
``NaN``/``Infinity`` and no number that overflows to infinity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from secure_mw._encoding import StrictJSONError, b64url_decode, b64url_encode, loads_strict

__all__ = [
    "MAX_KID_LENGTH",
    "SUPPORTED_ALGORITHMS",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "StrictJSONError",
    "VerifyingKey",
    "b64url_decode",
    "b64url_encode",
    "generate_private_jwks",
    "jwk_thumbprint",
    "loads_strict",
    "public_jwks",
]

#: Every algorithm secure_mw signs or verifies with. Nothing else is ever accepted.
SUPPORTED_ALGORITHMS: tuple[str, ...] = ("ES256", "EdDSA", "RS256", "PS256")

#: A ``kid`` longer than this is refused (in tokens) or ignored (in key sets).
MAX_KID_LENGTH = 256

PrivateKey: TypeAlias = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey: TypeAlias = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_RSA_MIN_BITS = 2048
_RSA_MAX_BITS = 16384
_RSA_GENERATE_BITS = 3072
_OKP_SIZES = {"Ed25519": 32, "Ed448": 57}
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
    "oct": ("k", "kty"),
}


# -- strict encodings: shared with the crypto core and outbound HTTP (secure_mw._encoding)


# -- thumbprints and JWK members ----------------------------------------------------------


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: base64url(SHA-256) of the required members, sorted, compact."""
    if not isinstance(jwk, Mapping):
        raise ValueError("a JWK must be a JSON object")
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("unsupported key type for a thumbprint")
    required: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"JWK member {name!r} missing or not a string")
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def _member_bytes(jwk: Mapping[str, Any], name: str, size: int | None = None) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK member {name!r} missing or not a string")
    raw = b64url_decode(value)
    if size is not None and len(raw) != size:
        raise ValueError(f"JWK member {name!r} has the wrong length")
    if size is None and not raw:
        raise ValueError(f"JWK member {name!r} is empty")
    return raw


def _member_int(jwk: Mapping[str, Any], name: str, size: int | None = None) -> int:
    return int.from_bytes(_member_bytes(jwk, name, size), "big")


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(length, "big"))


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise ValueError(f"kid must be a string of 1 to {MAX_KID_LENGTH} characters")
    return kid


# -- key material -------------------------------------------------------------------------


def _public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    kty = jwk.get("kty")
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError("unsupported EC curve (only P-256)")
        x = _member_int(jwk, "x", 32)
        y = _member_int(jwk, "y", 32)
        # cryptography refuses a point that is not on the curve (invalid-curve attacks).
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if kty == "OKP":
        crv = jwk.get("crv")
        if crv == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(_member_bytes(jwk, "x", 32))
        if crv == "Ed448":
            return ed448.Ed448PublicKey.from_public_bytes(_member_bytes(jwk, "x", 57))
        raise ValueError("unsupported OKP curve (only Ed25519, Ed448)")
    if kty == "RSA":
        n = _member_int(jwk, "n")
        e = _member_int(jwk, "e")
        _check_rsa_numbers(n, e)
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise ValueError("unsupported key type")


def _check_rsa_numbers(n: int, e: int) -> None:
    if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
        raise ValueError(f"RSA modulus must have {_RSA_MIN_BITS} to {_RSA_MAX_BITS} bits")
    if e < 3 or e % 2 == 0 or e.bit_length() > 64:
        raise ValueError("unsupported RSA public exponent")


def _private_key_from_jwk(jwk: Mapping[str, Any]) -> PrivateKey:
    public = _public_key_from_jwk(jwk)
    if isinstance(public, ec.EllipticCurvePublicKey):
        d = _member_int(jwk, "d", 32)
        if not 0 < d < _P256_ORDER:
            raise ValueError("EC private scalar out of range")
        ec_private = ec.derive_private_key(d, ec.SECP256R1())
        if ec_private.public_key().public_numbers() != public.public_numbers():
            raise ValueError("EC private key does not match its public key")
        return ec_private
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        crv = str(jwk.get("crv"))
        raw_d = _member_bytes(jwk, "d", _OKP_SIZES[crv])
        okp_private: ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey = (
            ed25519.Ed25519PrivateKey.from_private_bytes(raw_d)
            if crv == "Ed25519"
            else ed448.Ed448PrivateKey.from_private_bytes(raw_d)
        )
        if _raw_public(okp_private.public_key()) != _member_bytes(jwk, "x"):
            raise ValueError("OKP private key does not match its public key")
        return okp_private
    numbers = public.public_numbers()
    d = _member_int(jwk, "d")
    crt = ("p", "q", "dp", "dq", "qi")
    if any(name in jwk for name in crt):
        p, q, dp, dq, qi = (_member_int(jwk, name) for name in crt)
    else:  # only n, e, d given: recover the CRT parameters
        p, q = rsa.rsa_recover_prime_factors(numbers.n, numbers.e, d)
        dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
    # cryptography checks the consistency of every parameter here.
    return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, numbers).private_key()


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _raw_public(key: ed25519.Ed25519PublicKey | ed448.Ed448PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public_members(key: PublicKey) -> dict[str, str]:
    """The public JWK members (RFC 7518) of a key, in thumbprint order."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        nums = key.public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": _int_b64(nums.x, 32), "y": _int_b64(nums.y, 32)}
    if isinstance(key, rsa.RSAPublicKey):
        rnums = key.public_numbers()
        return {"e": _int_b64(rnums.e), "kty": "RSA", "n": _int_b64(rnums.n)}
    crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
    return {"crv": crv, "kty": "OKP", "x": b64url_encode(_raw_public(key))}


def _algorithms_for(key: PublicKey) -> frozenset[str]:
    """The algorithms a key's type allows (before any ``alg`` the key itself names)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset({"ES256"}) if isinstance(key.curve, ec.SECP256R1) else frozenset()
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset({"RS256", "PS256"})
    return frozenset({"EdDSA"})


def _restrict(allowed: frozenset[str], alg: object) -> frozenset[str]:
    """Narrow ``allowed`` to the key's own ``alg``; refuse an alg its type cannot use."""
    if alg is None:
        return allowed
    if not isinstance(alg, str) or alg not in allowed:
        raise ValueError("the key's alg is not supported for its key type")
    return frozenset({alg})


# -- public API ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class VerifyingKey:
    """A public key pinned for signature verification, with its ``kid`` and the algorithms it
    may be used with. Built from a JWK by :meth:`from_jwk`; private members are ignored."""

    kid: str
    algorithms: frozenset[str]
    public_key: PublicKey = field(repr=False)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerifyingKey:
        """A verifying key from a JWK, or :class:`ValueError` saying why it is unusable.

        Refused: a ``use`` other than ``sig``, ``key_ops`` without ``verify``, an unsupported
        ``kty``/``crv``/``alg``, an EC point not on P-256, RSA below 2048 bits, a bad ``kid``.
        Without a ``kid`` the key's RFC 7638 thumbprint is its kid.
        """
        if not isinstance(jwk, Mapping):
            raise ValueError("a JWK must be a JSON object")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise ValueError("key is not for signatures (use)")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise ValueError("key is not for verification (key_ops)")
        public = _public_key_from_jwk(jwk)
        algorithms = _restrict(_algorithms_for(public), jwk.get("alg"))
        kid = _check_kid(jwk["kid"]) if "kid" in jwk else jwk_thumbprint(_public_members(public))
        return cls(kid=kid, algorithms=algorithms, public_key=public)

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK (with ``kid``, ``use`` and ``alg`` when the key has only one)."""
        jwk: dict[str, Any] = {**_public_members(self.public_key), "kid": self.kid, "use": "sig"}
        if len(self.algorithms) == 1:
            jwk["alg"] = next(iter(self.algorithms))
        return jwk

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint of the public key (equal to ``kid`` unless a kid was given)."""
        return jwk_thumbprint(_public_members(self.public_key))


class SigningKey:
    """A private signature key with its ``kid`` and its one algorithm ``alg``.

    The ``repr`` and every error message leave the key material out.
    """

    __slots__ = ("_private", "alg", "kid")

    def __init__(
        self, private_key: PrivateKey, *, alg: str | None = None, kid: str | None = None
    ) -> None:
        if not isinstance(
            private_key,
            ec.EllipticCurvePrivateKey
            | rsa.RSAPrivateKey
            | ed25519.Ed25519PrivateKey
            | ed448.Ed448PrivateKey,
        ):
            raise TypeError("unsupported private key type")
        public = private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            nums = public.public_numbers()
            _check_rsa_numbers(nums.n, nums.e)
        allowed = _algorithms_for(public)
        if not allowed:
            raise ValueError("unsupported EC curve (only P-256)")
        if alg is None:
            alg = "RS256" if isinstance(public, rsa.RSAPublicKey) else next(iter(allowed))
        self.alg: str = next(iter(_restrict(allowed, alg)))
        self.kid: str = _check_kid(kid) if kid is not None else jwk_thumbprint(
            _public_members(public)
        )
        self._private: PrivateKey = private_key

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    @property
    def private_key(self) -> PrivateKey:
        """The ``cryptography`` private key object."""
        return self._private

    @classmethod
    def generate(cls, alg: str = "ES256") -> SigningKey:
        """A new random key: ES256 (P-256), EdDSA (Ed25519), RS256 or PS256 (RSA 3072)."""
        key: PrivateKey
        if alg == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        elif alg in ("RS256", "PS256"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=_RSA_GENERATE_BITS)
        else:
            raise ValueError(f"cannot generate a key for algorithm {alg!r}; "
                             f"supported: {', '.join(SUPPORTED_ALGORITHMS)}")
        return cls(key, alg=alg)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> SigningKey:
        """A signing key from a private JWK. Its ``alg`` defaults from the key type (ES256,
        EdDSA, RS256); its ``kid`` is the JWK's own or else the RFC 7638 thumbprint."""
        if not isinstance(jwk, Mapping):
            raise ValueError("a JWK must be a JSON object")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise ValueError("key is not for signatures (use)")
        alg = jwk.get("alg")
        if alg is not None and not isinstance(alg, str):
            raise ValueError("the key's alg must be a string")
        kid = jwk.get("kid")
        if kid is not None:
            kid = _check_kid(kid)
        return cls(_private_key_from_jwk(jwk), alg=alg, kid=kid)

    @classmethod
    def from_pem(
        cls,
        data: bytes | str,
        *,
        password: bytes | None = None,
        alg: str | None = None,
        kid: str | None = None,
    ) -> SigningKey:
        """A signing key from a PEM private key (PKCS#8 or traditional)."""
        raw = data.encode("ascii") if isinstance(data, str) else data
        key = serialization.load_pem_private_key(raw, password=password)
        if not isinstance(
            key,
            ec.EllipticCurvePrivateKey
            | rsa.RSAPrivateKey
            | ed25519.Ed25519PrivateKey
            | ed448.Ed448PrivateKey,
        ):
            raise ValueError("unsupported private key type")
        return cls(key, alg=alg, kid=kid)

    def verifying_key(self) -> VerifyingKey:
        """The matching public key, bound to this key's ``alg``."""
        return VerifyingKey(
            kid=self.kid, algorithms=frozenset({self.alg}), public_key=self._private.public_key()
        )

    def public_jwk(self) -> dict[str, Any]:
        """Public JWK with ``kid``, ``alg`` and ``use: sig`` — safe to publish."""
        return {
            **_public_members(self._private.public_key()),
            "kid": self.kid,
            "alg": self.alg,
            "use": "sig",
        }

    def private_jwk(self) -> dict[str, Any]:
        """Private JWK (public members plus ``d`` and, for RSA, the CRT parameters). Secret."""
        jwk = self.public_jwk()
        key = self._private
        if isinstance(key, ec.EllipticCurvePrivateKey):
            jwk["d"] = _int_b64(key.private_numbers().private_value, 32)
        elif isinstance(key, rsa.RSAPrivateKey):
            nums = key.private_numbers()
            for name, value in (
                ("d", nums.d), ("p", nums.p), ("q", nums.q),
                ("dp", nums.dmp1), ("dq", nums.dmq1), ("qi", nums.iqmp),
            ):
                jwk[name] = _int_b64(value)
        else:
            jwk["d"] = b64url_encode(
                key.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            )
        return jwk


def generate_private_jwks(algs: Iterable[str] = ("ES256",)) -> dict[str, Any]:
    """A new private JWK Set with one fresh key per algorithm in ``algs``. Keep it secret."""
    if isinstance(algs, str):
        algs = (algs,)
    return {"keys": [SigningKey.generate(alg).private_jwk() for alg in algs]}


def public_jwks(private_jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The public JWK Set to publish for a private one (every private member dropped).

    Raises :class:`ValueError` if the set or any key in it is malformed.
    """
    keys = private_jwks.get("keys") if isinstance(private_jwks, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError("a JWK Set must be an object with a 'keys' list")
    public: list[dict[str, Any]] = []
    for index, jwk in enumerate(keys):
        try:
            public.append(SigningKey.from_jwk(jwk).public_jwk())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"keys[{index}]: {exc}") from None
    return {"keys": public}


def client_signing_key(jwks_text: str) -> SigningKey:
    """The first key of a private JWK Set given as JSON text (``oidc.client_jwks``).

    Raises :class:`ValueError` naming what is wrong, never echoing key material.
    """
    from secure_mw._encoding import StrictJSONError, loads_strict

    try:
        data = loads_strict(jwks_text.encode("utf-8"))
    except (StrictJSONError, UnicodeError):
        raise ValueError("is not a JSON JWK Set") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError("must be a JWK Set with at least one private key")
    try:
        return SigningKey.from_jwk(keys[0])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"first key: {exc}") from None
