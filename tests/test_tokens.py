"""JWT signing and verification: keys, thumbprints, round trips, claims and options."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secure_mw.errors import ExpiredToken, InvalidToken
from secure_mw.tokens import (
    SUPPORTED_ALGORITHMS,
    JWTVerifier,
    KeySet,
    SigningKey,
    VerifyingKey,
    generate_private_jwks,
    jwk_thumbprint,
    public_jwks,
    sign,
    verify,
)
from secure_mw.tokens.keys import b64url_decode, b64url_encode

ISS = "https://issuer.example"
AUD = "api://secure-mw-tests"
NOW = 1_800_000_000.0
DROP = object()


@pytest.fixture(scope="module")
def key_for() -> dict[str, SigningKey]:
    return {alg: SigningKey.generate(alg) for alg in SUPPORTED_ALGORITHMS}


@pytest.fixture(scope="module")
def es256(key_for: dict[str, SigningKey]) -> SigningKey:
    return key_for["ES256"]


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW, "exp": NOW + 300}
    for name, value in changes.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def keyset(*keys: SigningKey) -> KeySet:
    return KeySet.from_dict({"keys": [k.public_jwk() for k in keys]})


def verifier(keys: KeySet, *, now: float = NOW, **options: Any) -> JWTVerifier:
    return JWTVerifier(keys, issuer=ISS, audience=AUD, clock=lambda: now, **options)


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


# -- RFC 7638 thumbprints ------------------------------------------------------------------

RFC7638_RSA = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
    "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vM"
    "QFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}


def test_thumbprint_matches_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_RSA) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_ignores_optional_members_and_their_order() -> None:
    reordered = {"e": "AQAB", "use": "sig", "n": RFC7638_RSA["n"], "kty": "RSA"}
    assert jwk_thumbprint(reordered) == jwk_thumbprint(RFC7638_RSA)


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "RSA", "n": RFC7638_RSA["n"]}, id="rsa-without-e"),
        pytest.param({"kty": "EC", "crv": "P-256", "x": "AA"}, id="ec-without-y"),
        pytest.param({"kty": "RSA", "n": 5, "e": "AQAB"}, id="n-not-a-string"),
        pytest.param({"kty": "XYZ"}, id="unknown-kty"),
        pytest.param({}, id="no-kty"),
    ],
)
def test_thumbprint_refuses_incomplete_jwks(jwk: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


# -- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_generated_key_kid_is_thumbprint_of_public_jwk(
    key_for: dict[str, SigningKey], alg: str
) -> None:
    key = key_for[alg]
    public = key.public_jwk()
    assert key.alg == alg
    assert public["alg"] == alg and public["use"] == "sig" and public["kid"] == key.kid
    assert key.kid == jwk_thumbprint(public)
    assert VerifyingKey.from_jwk(public).thumbprint() == key.kid


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_public_jwk_holds_no_private_member(key_for: dict[str, SigningKey], alg: str) -> None:
    public = key_for[alg].public_jwk()
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(public)
    private = key_for[alg].private_jwk()
    assert "d" in private


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_private_jwk_round_trip_signs_for_the_original_public_key(
    key_for: dict[str, SigningKey], alg: str
) -> None:
    original = key_for[alg]
    reloaded = SigningKey.from_jwk(json.loads(json.dumps(original.private_jwk())))
    assert (reloaded.kid, reloaded.alg) == (original.kid, original.alg)
    token = sign(claims(), reloaded)
    assert verifier(keyset(original), algorithms=[alg]).verify(token)["sub"] == "alice"


def test_generated_rsa_keys_are_3072_bits(key_for: dict[str, SigningKey]) -> None:
    for alg in ("RS256", "PS256"):
        private = key_for[alg].private_key
        assert isinstance(private, rsa.RSAPrivateKey)
        assert private.key_size == 3072


@pytest.mark.parametrize("alg", ["HS256", "none", "ES384", "RS512", "es256", ""])
def test_generate_refuses_unsupported_algorithms(alg: str) -> None:
    with pytest.raises(ValueError):
        SigningKey.generate(alg)


def test_rsa_private_jwk_without_crt_parameters_is_completed(
    key_for: dict[str, SigningKey],
) -> None:
    full = key_for["RS256"].private_jwk()
    minimal = {name: full[name] for name in ("kty", "n", "e", "d")}
    key = SigningKey.from_jwk(minimal)
    assert key.kid == key_for["RS256"].kid and key.alg == "RS256"
    assert key.private_jwk()["p"] in (full["p"], full["q"])


def _p384_private_jwk() -> dict[str, Any]:
    private = ec.generate_private_key(ec.SECP384R1())
    nums = private.private_numbers()
    return {
        "kty": "EC", "crv": "P-384",
        "x": b64url_encode(nums.public_numbers.x.to_bytes(48, "big")),
        "y": b64url_encode(nums.public_numbers.y.to_bytes(48, "big")),
        "d": b64url_encode(nums.private_value.to_bytes(48, "big")),
    }


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda k: {**k["ES256"].private_jwk(), "alg": "RS256"}, id="ec-with-rsa-alg"),
        pytest.param(lambda k: {**k["ES256"].private_jwk(), "alg": "HS256"}, id="ec-with-hmac-alg"),
        pytest.param(lambda k: {**k["ES256"].private_jwk(), "alg": "none"}, id="ec-with-alg-none"),
        pytest.param(lambda k: {**k["RS256"].private_jwk(), "alg": "ES256"}, id="rsa-with-ec-alg"),
        pytest.param(lambda k: {**k["ES256"].private_jwk(), "use": "enc"}, id="use-enc"),
        pytest.param(lambda k: {**k["ES256"].private_jwk(), "kid": 7}, id="kid-not-a-string"),
        pytest.param(
            lambda k: {**k["ES256"].private_jwk(), "d": k["EdDSA"].private_jwk()["d"]},
            id="ec-d-of-another-key",
        ),
        pytest.param(
            lambda k: {**k["EdDSA"].private_jwk(), "x": k["ES256"].private_jwk()["x"]},
            id="okp-x-of-another-key",
        ),
        pytest.param(lambda k: {**k["ES256"].private_jwk(), "d": "AA"}, id="ec-d-too-short"),
        pytest.param(lambda k: _p384_private_jwk(), id="ec-p384"),
        pytest.param(lambda k: {"kty": "oct", "k": "c2VjcmV0"}, id="symmetric-oct"),
        pytest.param(lambda k: {**k["RS256"].private_jwk(), "qi": "AQAB"}, id="rsa-bad-crt"),
    ],
)
def test_signing_key_from_jwk_refuses(
    key_for: dict[str, SigningKey], mutate: Callable[[dict[str, SigningKey]], dict[str, Any]]
) -> None:
    with pytest.raises(ValueError):
        SigningKey.from_jwk(mutate(key_for))


def test_rsa_keys_below_2048_bits_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError):
        SigningKey(small)


def test_from_pem_round_trip_and_repr_hides_key_material(es256: SigningKey) -> None:
    pem = es256.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key = SigningKey.from_pem(pem)
    assert (key.kid, key.alg) == (es256.kid, "ES256")
    assert es256.private_jwk()["d"] not in repr(key)
    assert repr(key) == f"SigningKey(kid={es256.kid!r}, alg='ES256')"
    assert SigningKey.from_pem(pem.decode(), kid="mine").kid == "mine"


def test_generate_private_jwks_and_public_jwks() -> None:
    private = generate_private_jwks(SUPPORTED_ALGORITHMS)
    public = public_jwks(private)
    assert [k["alg"] for k in public["keys"]] == list(SUPPORTED_ALGORITHMS)
    for jwk in public["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    keys = KeySet.from_dict(public)
    assert len(keys) == 4 and not keys.ignored
    for jwk in private["keys"]:
        token = sign(claims(), SigningKey.from_jwk(jwk))
        assert verifier(keys, algorithms=SUPPORTED_ALGORITHMS).verify(token)["iss"] == ISS


@pytest.mark.parametrize(
    "document",
    [{}, {"keys": "x"}, {"keys": [{"kty": "EC"}]}, [], None],
    ids=["no-keys", "keys-not-a-list", "incomplete-key", "list", "none"],
)
def test_public_jwks_refuses_malformed_sets(document: Any) -> None:
    with pytest.raises(ValueError):
        public_jwks(document)


# -- sign / verify round trips ---------------------------------------------------------------


@pytest.mark.parametrize("alg", SUPPORTED_ALGORITHMS)
def test_round_trip(key_for: dict[str, SigningKey], alg: str) -> None:
    key = key_for[alg]
    token = sign(claims(roles=["admin"], n=1.5), key)
    header, _ = segments(token)
    assert header == {"alg": alg, "typ": "JWT", "kid": key.kid}
    result = verifier(keyset(key), algorithms=[alg]).verify(token)
    assert result == claims(roles=["admin"], n=1.5)
    assert verifier(keyset(key), algorithms=[alg]).verify(token.encode()) == result


def test_key_set_with_every_algorithm_selects_by_kid(key_for: dict[str, SigningKey]) -> None:
    keys = keyset(*key_for.values())
    check = verifier(keys, algorithms=SUPPORTED_ALGORITHMS)
    for key in key_for.values():
        assert check.verify(sign(claims(sub=key.alg), key))["sub"] == key.alg


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256", "PS256"])
def test_interoperates_with_plain_pyjwt(key_for: dict[str, SigningKey], alg: str) -> None:
    key = key_for[alg]
    ours = sign(claims(), key)
    decoded = pyjwt.decode(ours, key.private_key.public_key(), algorithms=[alg], audience=AUD,
                           issuer=ISS, options={"verify_exp": False, "verify_iat": False})
    assert decoded["sub"] == "alice"
    theirs = pyjwt.encode(claims(), key.private_key, algorithm=alg, headers={"kid": key.kid})
    assert verifier(keyset(key), algorithms=[alg]).verify(theirs)["sub"] == "alice"


def test_functional_verify_and_async_verify(es256: SigningKey) -> None:
    token = sign(claims(), es256)
    assert verify(token, keyset(es256), issuer=ISS, audience=AUD, now=NOW)["sub"] == "alice"
    with pytest.raises(ExpiredToken):
        verify(token, keyset(es256), issuer=ISS, audience=AUD, now=NOW + 10_000)
    assert asyncio.run(verifier(keyset(es256)).averify(token))["sub"] == "alice"
    with pytest.raises(InvalidToken):
        asyncio.run(verifier(keyset(es256)).averify(token + "x"))


def test_float_times_are_accepted(es256: SigningKey) -> None:
    token = sign(claims(iat=NOW - 0.5, exp=NOW + 0.25, nbf=NOW - 0.5), es256)
    assert verifier(keyset(es256), leeway=0).verify(token)["exp"] == NOW + 0.25


def test_large_integer_exp_is_compared_exactly(es256: SigningKey) -> None:
    token = sign(claims(exp=10**30), es256)
    assert verifier(keyset(es256)).verify(token)["exp"] == 10**30


@pytest.mark.parametrize(
    "headers",
    [{"alg": "none"}, {"kid": "other"}, {"jwk": {}}, {"jku": "https://x"}, {"x5c": []},
     {"crit": ["exp"]}, {"x5u": "https://x"}, {"b64": False}],
    ids=lambda h: f"header-{next(iter(h))}",
)
def test_sign_refuses_dangerous_headers(es256: SigningKey, headers: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sign(claims(), es256, headers=headers)


@pytest.mark.parametrize(
    "bad",
    [claims(exp="soon"), claims(exp=True), claims(iat=float("nan")), claims(nbf=float("inf")),
     claims(extra=float("nan"))],
    ids=["exp-string", "exp-bool", "iat-nan", "nbf-inf", "claim-nan"],
)
def test_sign_refuses_bad_claims(es256: SigningKey, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sign(bad, es256)


def test_sign_refuses_non_string_claim_names(es256: SigningKey) -> None:
    with pytest.raises(TypeError):
        sign({**claims(), 1: "one"}, es256)  # type: ignore[dict-item]


def test_typ_is_checked_when_configured(es256: SigningKey) -> None:
    keys = keyset(es256)
    access = sign(claims(), es256, headers={"typ": "application/at+jwt"})
    plain = sign(claims(), es256)
    assert verifier(keys, typ="at+JWT").verify(access)["sub"] == "alice"
    with pytest.raises(InvalidToken, match="type"):
        verifier(keys, typ="at+jwt").verify(plain)
    assert verifier(keys).verify(access)["sub"] == "alice"  # no typ configured: not checked


# -- time claims and leeway -----------------------------------------------------------------


def test_expired_token_raises_expired_token(es256: SigningKey) -> None:
    token = sign(claims(iat=NOW - 600, exp=NOW - 31), es256)
    with pytest.raises(ExpiredToken) as info:
        verifier(keyset(es256)).verify(token)
    assert info.value.reason == "token expired" and info.value.status == 401


@pytest.mark.parametrize(
    ("leeway", "offset", "valid"),
    [(30, -29.999, True), (30, -30, False), (0, -0.001, False), (0, 0.001, True),
     (60, -59.5, True), (60, -60, False)],
    ids=["30s-just-inside", "30s-boundary", "0s-just-expired", "0s-just-inside",
         "60s-inside", "60s-boundary"],
)
def test_exp_leeway_boundary(es256: SigningKey, leeway: float, offset: float, valid: bool) -> None:
    token = sign(claims(iat=NOW - 600, exp=NOW + offset), es256)
    check = verifier(keyset(es256), leeway=leeway)
    if valid:
        assert check.verify(token)["sub"] == "alice"
    else:
        with pytest.raises(ExpiredToken):
            check.verify(token)


@pytest.mark.parametrize(("offset", "valid"), [(30, True), (30.5, False), (3600, False)])
def test_not_yet_valid(es256: SigningKey, offset: float, valid: bool) -> None:
    token = sign(claims(nbf=NOW + offset), es256)
    if valid:
        assert verifier(keyset(es256)).verify(token)
    else:
        with pytest.raises(InvalidToken, match="not yet valid") as info:
            verifier(keyset(es256)).verify(token)
        assert not isinstance(info.value, ExpiredToken)


@pytest.mark.parametrize(("offset", "valid"), [(30, True), (31, False), (86400, False)])
def test_iat_in_the_future(es256: SigningKey, offset: float, valid: bool) -> None:
    token = sign(claims(iat=NOW + offset, exp=NOW + 90000), es256)
    if valid:
        assert verifier(keyset(es256)).verify(token)
    else:
        with pytest.raises(InvalidToken, match="future"):
            verifier(keyset(es256)).verify(token)


@pytest.mark.parametrize("name", ["exp", "iat"])
def test_exp_and_iat_are_required(es256: SigningKey, name: str) -> None:
    token = sign(claims(**{name: DROP}), es256)
    with pytest.raises(InvalidToken, match=f"{name} claim missing"):
        verifier(keyset(es256)).verify(token)


# -- issuer and audience ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [ISS + "/", ISS.upper(), "https://issuer.example.evil", "", [ISS], None, DROP, 1],
    ids=["trailing-slash", "upper-case", "suffix", "empty", "list", "null", "missing", "number"],
)
def test_issuer_mismatch(es256: SigningKey, iss: Any) -> None:
    with pytest.raises(InvalidToken, match="issuer"):
        verifier(keyset(es256)).verify(sign(claims(iss=iss), es256))


@pytest.mark.parametrize(
    "aud",
    [AUD, [AUD], ["other", AUD], [AUD, AUD]],
    ids=["string", "list-of-one", "list-with-other", "list-repeated"],
)
def test_audience_accepted(es256: SigningKey, aud: Any) -> None:
    assert verifier(keyset(es256)).verify(sign(claims(aud=aud), es256))["aud"] == aud


@pytest.mark.parametrize(
    "aud",
    [AUD + " ", AUD.upper(), "other", ["other"], [], [AUD, 1], [[AUD]], {"aud": AUD}, None, DROP,
     f"{AUD},other"],
    ids=["trailing-space", "upper-case", "other", "list-without", "empty-list",
         "list-with-number", "nested-list", "object", "null", "missing", "comma-joined"],
)
def test_audience_mismatch(es256: SigningKey, aud: Any) -> None:
    with pytest.raises(InvalidToken, match="aud"):
        verifier(keyset(es256)).verify(sign(claims(aud=aud), es256))


# -- options and allow-lists ------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"leeway": 61}, {"leeway": 3600}, {"leeway": -1}, {"leeway": True},
     {"leeway": float("nan")}, {"algorithms": ["none"]}, {"algorithms": ["HS256"]},
     {"algorithms": ["ES256", "RS384"]}, {"algorithms": []}, {"max_size": 0},
     {"max_size": "16k"}, {"issuer": ""}, {"audience": ""}, {"typ": ""}],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_bad_options_are_refused(es256: SigningKey, options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"issuer": ISS, "audience": AUD, **options}
    with pytest.raises(ValueError):
        JWTVerifier(keyset(es256), **settings)


def test_max_leeway_is_accepted_and_a_string_algorithm_means_one(es256: SigningKey) -> None:
    check = JWTVerifier(keyset(es256), issuer=ISS, audience=AUD, leeway=60, algorithms="ES256")
    assert check.leeway == 60 and check.algorithms == {"ES256"}


def test_algorithm_outside_the_allow_list_is_refused(key_for: dict[str, SigningKey]) -> None:
    key = key_for["EdDSA"]
    with pytest.raises(InvalidToken, match="algorithm not allowed"):
        verifier(keyset(key)).verify(sign(claims(), key))  # default allow-list: ES256 only


def test_the_keys_own_alg_binds_it(key_for: dict[str, SigningKey]) -> None:
    rsa_key = key_for["RS256"]
    as_pss = SigningKey(rsa_key.private_key, alg="PS256")
    pinned_rs = keyset(rsa_key)  # its JWK says alg RS256
    check = verifier(pinned_rs, algorithms=["RS256", "PS256"])
    assert check.verify(sign(claims(), rsa_key))
    with pytest.raises(InvalidToken, match="does not match the key"):
        check.verify(sign(claims(), as_pss))
    no_alg = {k: v for k, v in rsa_key.public_jwk().items() if k != "alg"}
    either = verifier(KeySet.from_dict({"keys": [no_alg]}), algorithms=["RS256", "PS256"])
    assert either.verify(sign(claims(), as_pss)) and either.verify(sign(claims(), rsa_key))


def test_max_size_is_configurable(es256: SigningKey) -> None:
    token = sign(claims(pad="x" * 500), es256)
    assert verifier(keyset(es256), max_size=len(token)).verify(token)
    with pytest.raises(InvalidToken, match="too large"):
        verifier(keyset(es256), max_size=len(token) - 1).verify(token)
    big = sign(claims(pad="x" * 20_000), es256)
    with pytest.raises(InvalidToken, match="too large"):
        verifier(keyset(es256)).verify(big)
    assert verifier(keyset(es256), max_size=64 * 1024).verify(big)


def test_single_key_set_accepts_a_token_without_kid(es256: SigningKey) -> None:
    no_kid = pyjwt.encode(claims(), es256.private_key, algorithm="ES256")
    assert "kid" not in pyjwt.get_unverified_header(no_kid)
    assert verifier(keyset(es256)).verify(no_kid)["sub"] == "alice"
    other = SigningKey.generate()
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verifier(keyset(es256, other)).verify(no_kid)


def test_reasons_never_contain_the_token(es256: SigningKey) -> None:
    token = sign(claims(exp=NOW - 100), es256)
    for candidate in (token, token[:-2], token + "." + token, token.replace(".", "!")):
        with pytest.raises(InvalidToken) as info:
            verifier(keyset(es256)).verify(candidate)
        for part in candidate.split("."):
            assert part not in str(info.value) or len(part) < 4
