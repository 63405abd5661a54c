"""Signed tokens: JWT sign/verify with an algorithm allow-list, and pinned key sets (JWKS).

::

    from secure_mw.tokens import JWTVerifier, KeySet, SigningKey, sign

    key = SigningKey.generate("ES256")
    token = sign({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 300}, key)

    keys = KeySet.from_dict({"keys": [key.public_jwk()]})    # or RemoteKeySet(url)
    claims = JWTVerifier(keys, issuer=ISS, audience=AUD).verify(token)

Accepted algorithms: ES256 (default), EdDSA, RS256, PS256 — never ``none``, never HMAC.
Every refusal raises :class:`secure_mw.errors.InvalidToken` (``ExpiredToken`` for ``exp``).
See :mod:`secure_mw.tokens.jwt`, :mod:`~secure_mw.tokens.jwks` and :mod:`~secure_mw.tokens.keys`.
"""

from __future__ import annotations

from secure_mw.tokens.assertions import AssertionSigner, AssertionVerifier
from secure_mw.tokens.headers import AssertionAuth
from secure_mw.tokens.jwks import KeySet, KeySource, RemoteKeySet
from secure_mw.tokens.jwt import JWTVerifier, sign, verify
from secure_mw.tokens.keys import (
    SUPPORTED_ALGORITHMS,
    SigningKey,
    VerifyingKey,
    generate_private_jwks,
    jwk_thumbprint,
    public_jwks,
)

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "AssertionAuth",
    "AssertionSigner",
    "AssertionVerifier",
    "JWTVerifier",
    "KeySet",
    "KeySource",
    "RemoteKeySet",
    "SigningKey",
    "VerifyingKey",
    "generate_private_jwks",
    "jwk_thumbprint",
    "public_jwks",
    "sign",
    "verify",
]
