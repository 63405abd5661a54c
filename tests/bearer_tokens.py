"""Bearer tokens for the tests: good access tokens (RFC 9068) and every kind the resource
server must refuse, made with keys the tests generate."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from secure_mw.tokens import SigningKey
from secure_mw.tokens.jwt import _ALGORITHMS

ISSUER = "https://idp.example"
AUDIENCE = "https://api.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jws(header: dict[str, Any], claims: dict[str, Any], key: SigningKey | None) -> str:
    """A compact JWS with any header at all (sign() refuses the dangerous ones)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if key is None:
        return signing_input + "."
    signature = _ALGORITHMS[key.alg].sign(signing_input.encode("ascii"), key.private_key)
    return signing_input + "." + b64(signature)


@dataclass
class Minter:
    """Signs access tokens with ``key`` (whose public half the server pins)."""

    key: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))
    clock: Callable[[], float] = time.time

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.public_jwk()]}

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                                  "client_id": "cli", "iat": now, "exp": now + 300,
                                  "jti": "j-1", "scope": "api:read api:write",
                                  "groups": ["staff"]}
        for name, value in changes.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def header(self, **changes: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": self.key.alg, "typ": "at+jwt", "kid": self.key.kid}
        for name, value in changes.items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def token(self, *, header: dict[str, Any] | None = None, **changes: Any) -> str:
        return jws({**self.header(), **(header or {})}, self.claims(**changes), self.key)

    def refusals(self, *, huge: int = 100 * 1024) -> dict[str, str]:
        """Every token the server must refuse (401 invalid_token), by name."""
        attacker = SigningKey.generate("ES256")
        impostor = SigningKey(SigningKey.generate("ES256").private_key, kid=self.key.kid)
        pem = self.key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        hs_input = (b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": self.key.kid})
                        .encode()) + "." + b64(json.dumps(self.claims()).encode()))
        hs256 = hs_input + "." + b64(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest())
        good = self.token()
        head, payload, signature = good.split(".")
        other = self.claims(sub="mallory")
        return {
            "alg_none": jws({"alg": "none", "typ": "at+jwt"}, self.claims(), None),
            "alg_none_signed": jws({"alg": "none", "typ": "at+jwt"}, self.claims(),
                                   None) + "AAAA",
            "hs256_with_public_key": hs256,
            "alg_not_allowed": jws({**self.header(), "alg": "ES512"}, self.claims(),
                                   None) + "AAAA",
            "embedded_jwk": jws({"alg": "ES256", "typ": "at+jwt", "kid": attacker.kid,
                                 "jwk": attacker.public_jwk()}, self.claims(), attacker),
            "jku": jws({**self.header(), "jku": "https://evil.example/jwks.json"},
                       self.claims(), self.key),
            "x5u": jws({**self.header(), "x5u": "https://evil.example/cert.pem"},
                       self.claims(), self.key),
            "x5c": jws({**self.header(), "x5c": ["MIIB"]}, self.claims(), self.key),
            "crit": jws({**self.header(), "crit": ["exp"]}, self.claims(), self.key),
            "expired": self.token(exp=int(self.clock()) - 120, iat=int(self.clock()) - 400),
            "not_yet_valid": self.token(nbf=int(self.clock()) + 600),
            "issued_in_future": self.token(iat=int(self.clock()) + 600,
                                           exp=int(self.clock()) + 900),
            "wrong_audience": self.token(aud="https://other-api.example"),
            "audience_prefix": self.token(aud=AUDIENCE + ".evil"),
            "no_audience": self.token(aud=None),
            "wrong_issuer": self.token(iss="https://evil.example"),
            "issuer_trailing_slash": self.token(iss=ISSUER + "/"),
            "missing_exp": self.token(exp=None),
            "exp_not_a_number": self.token(exp="tomorrow"),
            "missing_iat": self.token(iat=None),
            "missing_sub": self.token(sub=None),
            "typ_jwt_id_token": self.token(header={"typ": "JWT"}),
            "typ_missing": jws(self.header(typ=None), self.claims(), self.key),
            "unknown_kid": self.token(header={"kid": "not-pinned"}),
            "other_key_same_kid": jws(self.header(), self.claims(), impostor),
            "tampered_payload": f"{head}.{b64(json.dumps(other).encode())}.{signature}",
            "tampered_signature": f"{head}.{payload}.{signature[:-4]}AAAA",
            "sender_constrained_cnf": self.token(cnf={"jkt": "abc"}),
            "not_base64": "a.b.c",
            "not_json": f"{b64(b'{not json')}.{payload}.{signature}",
            "json_array_header": f"{b64(b'[1,2]')}.{payload}.{signature}",
            "duplicate_members": b64(b'{"alg":"ES256","alg":"none"}') + f".{payload}.{signature}",
            "two_segments": f"{head}.{payload}",
            "jwe_five_segments": "a.b.c.d.e",
            "opaque_without_introspection": "2YotnFZFEjr1zCsicMWpAA",
            "huge": f"{head}.{b64(b'x' * huge)}.{signature}",
        }
