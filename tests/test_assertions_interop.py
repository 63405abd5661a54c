"""Interop of signed identity assertions with independent implementations (issue 4, item 8).

* Tokens signed by panva's ``jose`` (npm, run on Node through tests/interop/jose_tool.mjs)
  and by PyJWT verify with our :class:`AssertionVerifier` as it is by default; their ES256
  signatures are not normalized to low-s (about half are high-s: both kinds are counted and
  must occur), and only the strict option ``require_low_s=True`` refuses the high-s ones.
* Tokens our :class:`AssertionSigner` signs verify with PyJWT and with ``jose``, both given
  only the published JWKS document.
* A jose token with the wrong audience or issuer, expired, or signed by a key outside the
  pinned set is refused by ours with ``InvalidToken`` / ``ExpiredToken``.

``node`` and the packages of integrations/idp (which pin ``jose``) are required: a missing
one skips these tests, or fails them under ``SECURE_MW_REQUIRE_EXTERNAL=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from secure_mw.errors import ExpiredToken, InvalidToken
from secure_mw.tokens import generate_private_jwks, public_jwks
from secure_mw.tokens.assertions import AssertionSigner, AssertionVerifier
from secure_mw.tokens.keys import b64url_decode, b64url_encode
from tests.idp import IDP_DIR
from tests.servers import ensure_npm_packages, find_program

JOSE_TOOL = Path(__file__).resolve().parent / "interop" / "jose_tool.mjs"
HOST = "app.example.com"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ES256_RUNS = 24  # P(all 24 on the same side of n/2) = 2**-23: both outcomes occur
IDENTITY: dict[str, Any] = {"sub": "user-1", "email": "alice@example.com", "name": "Alice",
                            "groups": ["admins", "dev"]}

JoseTool = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def jose_tool() -> JoseTool:
    """Runs a batch of requests through jose_tool.mjs (one Node process per batch)."""
    node = find_program("node")
    ensure_npm_packages(IDP_DIR)

    def run(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        result = subprocess.run(
            [node, str(JOSE_TOOL)], input=json.dumps(requests), capture_output=True,
            text=True, timeout=60, check=False,
            env={**os.environ, "JOSE_PACKAGE_DIR": str(IDP_DIR)},
        )
        assert result.returncode == 0, result.stderr
        answers = json.loads(result.stdout)
        assert isinstance(answers, list) and len(answers) == len(requests)
        return answers

    return run


@pytest.fixture(scope="module", params=["ES256", "RS256"])
def alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def private_sets() -> dict[str, dict[str, Any]]:
    return {name: generate_private_jwks((name,)) for name in ("ES256", "RS256")}


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": HOST, "aud": HOST, "sub": "user-1", "email": "alice@example.com",
              "groups": ["admins"], "iat": now, "exp": now + 300}
    claims.update(extra)
    return claims


def _sign_request(private: dict[str, Any], alg: str, claims: dict[str, Any]) -> dict[str, Any]:
    jwk = private["keys"][0]
    kid = public_jwks(private)["keys"][0].get("kid")
    return {"op": "sign", "jwk": jwk, "alg": alg, "claims": claims, "kid": kid}


def _s_of(token: str) -> int:
    return int.from_bytes(b64url_decode(token.split(".")[2])[32:], "big")


def _respelled(token: str) -> str:
    """The same ES256 token with ``s`` replaced by ``n - s``."""
    head, body, signature_b64 = token.split(".")
    signature = b64url_decode(signature_b64)
    s = (P256_N - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")
    return f"{head}.{body}.{b64url_encode(signature[:32] + s)}"


# -- jose signs, we verify --------------------------------------------------------------------


def _check_high_and_low_s(tokens: list[str], expected: list[dict[str, Any]],
                          pinned: dict[str, Any], who: str) -> None:
    default = AssertionVerifier(jwks=pinned, issuer=HOST, audience=HOST)
    strict = AssertionVerifier(jwks=pinned, issuer=HOST, audience=HOST, require_low_s=True)
    high = low = 0
    for token, claims in zip(tokens, expected, strict=True):
        assert default.verify(token) == claims          # RFC 7518: either s is valid
        if _s_of(token) > P256_N // 2:
            high += 1
            with pytest.raises(InvalidToken, match="low-s"):
                strict.verify(token)
            # The low-s spelling of the same signature is the one strict mode accepts.
            assert strict.verify(_respelled(token)) == claims
        else:
            low += 1
            assert strict.verify(token) == claims
    print(f"\n{who} ES256: {high} of {len(tokens)} signatures high-s, {low} low-s; "
          f"{len(tokens)} verified by default")
    assert high > 0 and low > 0, (high, low)


def test_jose_es256_tokens_verify_by_default_high_s_included(
    jose_tool: JoseTool, private_sets: dict[str, dict[str, Any]],
) -> None:
    private = private_sets["ES256"]
    claims = [_claims(jti=f"jose-{i}") for i in range(ES256_RUNS)]
    tokens = [answer["token"] for answer in
              jose_tool([_sign_request(private, "ES256", c) for c in claims])]
    _check_high_and_low_s(tokens, claims, public_jwks(private), "jose")


def test_pyjwt_es256_tokens_verify_by_default_high_s_included(
    private_sets: dict[str, dict[str, Any]],
) -> None:
    private = private_sets["ES256"]
    jwk = jwt.PyJWK(private["keys"][0])
    kid = public_jwks(private)["keys"][0]["kid"]
    claims = [_claims(jti=f"pyjwt-{i}") for i in range(ES256_RUNS)]
    tokens = [jwt.encode(c, jwk.key, algorithm="ES256", headers={"kid": kid}) for c in claims]
    _check_high_and_low_s(tokens, claims, public_jwks(private), "PyJWT")


def test_jose_rs256_tokens_verify(
    jose_tool: JoseTool, private_sets: dict[str, dict[str, Any]],
) -> None:
    private = private_sets["RS256"]
    claims = [_claims(jti=f"jose-rs-{i}") for i in range(3)]
    answers = jose_tool([_sign_request(private, "RS256", c) for c in claims])
    verifier = AssertionVerifier(jwks=public_jwks(private), issuer=HOST, audience=HOST)
    for answer, expected in zip(answers, claims, strict=True):
        assert verifier.verify(answer["token"]) == expected


def test_jose_tokens_with_wrong_claims_or_key_are_refused(
    jose_tool: JoseTool, private_sets: dict[str, dict[str, Any]], alg: str,
) -> None:
    private = private_sets[alg]
    stranger = generate_private_jwks((alg,))
    now = int(time.time())
    requests = [
        _sign_request(private, alg, _claims(aud="other.example.com")),
        _sign_request(private, alg, _claims(aud=[HOST, "other.example.com"])),
        _sign_request(private, alg, _claims(iss="evil.example.com")),
        _sign_request(private, alg, _claims(iat=now - 1000, exp=now - 600)),
        _sign_request(stranger, alg, _claims()),
    ]
    wrong_aud, two_auds, wrong_iss, expired, foreign = (
        answer["token"] for answer in jose_tool(requests))
    verifier = AssertionVerifier(jwks=public_jwks(private), issuer=HOST, audience=HOST)
    for token in (wrong_aud, two_auds, wrong_iss, foreign):
        with pytest.raises(InvalidToken) as refused:
            verifier.verify(token)
        assert not isinstance(refused.value, ExpiredToken)
    with pytest.raises(ExpiredToken):
        verifier.verify(expired)


# -- we sign, PyJWT and jose verify -----------------------------------------------------------


def test_our_assertions_verify_with_pyjwt(
    private_sets: dict[str, dict[str, Any]], alg: str,
) -> None:
    signer = AssertionSigner(jwks=private_sets[alg])
    token = signer.sign(IDENTITY, audience=HOST, session_id="session-1")
    document, _etag = signer.jwks_document()
    key_set = jwt.PyJWKSet.from_json(document.decode())
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["kid"] == signer.signing_key.kid
    key = next(k for k in key_set.keys if k.key_id == header["kid"])
    claims = jwt.decode(token, key, algorithms=[alg], audience=HOST, issuer=HOST,
                        options={"require": ["exp", "iat", "iss", "aud", "sub"]})
    assert {name: claims[name] for name in IDENTITY} == IDENTITY
    assert claims["exp"] - claims["iat"] == 300 and claims["sid"] and claims["jti"]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=[alg], audience="other.example.com", issuer=HOST)
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(token, key, algorithms=[alg], audience=HOST, issuer="other.example.com")
    # Pinned to the other algorithm, PyJWT refuses it too.
    other = "RS256" if alg == "ES256" else "ES256"
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, key, algorithms=[other], audience=HOST, issuer=HOST)


def test_our_assertions_verify_with_jose(
    jose_tool: JoseTool, private_sets: dict[str, dict[str, Any]], alg: str,
) -> None:
    # Two keys published (the first signs), as during a rotation.
    both = {"keys": private_sets[alg]["keys"] + generate_private_jwks((alg,))["keys"]}
    signer = AssertionSigner(jwks=both)
    token = signer.sign(IDENTITY, audience=HOST, session_id="session-1")
    published = json.loads(signer.jwks_document()[0])
    ours = AssertionVerifier(jwks=published, issuer=HOST, audience=HOST).verify(token)
    verify = {"op": "verify", "jwks": published, "token": token, "issuer": HOST,
              "audience": HOST, "algorithms": [alg]}
    good, wrong_aud, wrong_iss, tampered = jose_tool([
        verify,
        {**verify, "audience": "other.example.com"},
        {**verify, "issuer": "other.example.com"},
        {**verify, "token": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")},
    ])
    assert good["ok"], good
    assert good["claims"] == ours
    assert good["header"] == {"alg": alg, "kid": signer.signing_key.kid, "typ": "JWT"}
    for answer in (wrong_aud, wrong_iss, tampered):
        assert answer["ok"] is False, answer
    assert "aud" in wrong_aud["error"] and "iss" in wrong_iss["error"]
