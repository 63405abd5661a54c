"""Signed identity assertions: AssertionSigner (issuing, reuse, JWKS document) and
AssertionVerifier (pinned keys, assertion rules, low-s, cache), including a remote JWKS served
by a real local HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from secure_mw._encoding import b64url_encode
from secure_mw.errors import ExpiredToken, InvalidToken, StoreUnavailable
from secure_mw.tokens import KeySet, SigningKey, generate_private_jwks, jwk_thumbprint, sign
from secure_mw.tokens.assertions import AssertionSigner, AssertionVerifier
from secure_mw.tokens.keys import b64url_decode
from tests.clock import Clock
from tests.test_jwks import JWKSServer
from tests.test_token_attacks import b64, compact, raw_signature

HOST = "app.example.com"
NOW = 1_800_000_000
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
IDENTITY: dict[str, Any] = {"sub": "user-1", "email": "alice@example.com", "name": "Alice",
                            "groups": ["admins", "dev"]}


@pytest.fixture(scope="module")
def es_jwks() -> dict[str, Any]:
    return generate_private_jwks(("ES256",))


@pytest.fixture(scope="module")
def rs_jwks() -> dict[str, Any]:
    return generate_private_jwks(("RS256",))


@pytest.fixture(scope="module")
def es_key(es_jwks: dict[str, Any]) -> SigningKey:
    return SigningKey.from_jwk(es_jwks["keys"][0])


@pytest.fixture(scope="module")
def rs_key(rs_jwks: dict[str, Any]) -> SigningKey:
    return SigningKey.from_jwk(rs_jwks["keys"][0])


@pytest.fixture(scope="module")
def attacker() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture
def clock() -> Clock:
    return Clock(float(NOW))


def signer_for(jwks: dict[str, Any], clock: Clock, **options: Any) -> AssertionSigner:
    return AssertionSigner(jwks=jwks, clock=clock, **options)


def verifier_for(keys: Any, clock: Clock, **options: Any) -> AssertionVerifier:
    options.setdefault("issuer", HOST)
    options.setdefault("audience", HOST)
    return AssertionVerifier(jwks=keys, clock=clock, **options)


def pinned(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


def s_of(token: str) -> int:
    return int.from_bytes(b64url_decode(token.split(".")[2])[32:], "big")


def respell_s(token: str) -> str:
    """The same ES256 signature with s replaced by n - s (still mathematically valid)."""
    head, body, sig_b64 = token.split(".")
    sig = b64url_decode(sig_b64)
    s = int.from_bytes(sig[32:], "big")
    return f"{head}.{body}.{b64(sig[:32] + (P256_N - s).to_bytes(32, 'big'))}"


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": HOST, "aud": HOST, "sub": "user-1", "iat": NOW,
                            "exp": NOW + 300}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not DROP}


DROP = object()


def forge(key: SigningKey, header: dict[str, Any] | None = None,
          payload: dict[str, Any] | None = None, *,
          signature: bytes | Callable[[bytes], bytes] | None = None, low_s: bool = True) -> str:
    """A token built by hand (raw JSON, raw signature), low-s for ES256 unless told not to."""
    head = {"alg": key.alg, "typ": "JWT", "kid": key.kid} if header is None else header
    signing_input = f"{b64(compact(head))}.{b64(compact(payload or claims()))}"
    if signature is None:
        sig = raw_signature(key, signing_input.encode())
        if low_s and key.alg == "ES256" and int.from_bytes(sig[32:], "big") > P256_N // 2:
            sig = sig[:32] + (P256_N - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    else:
        sig = signature(signing_input.encode()) if callable(signature) else signature
    return f"{signing_input}.{b64(sig)}"


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["es", "rs"])
def test_round_trip(which: str, es_jwks: dict[str, Any], rs_jwks: dict[str, Any],
                    clock: Clock) -> None:
    private = es_jwks if which == "es" else rs_jwks
    signer = signer_for(private, clock)
    token = signer.sign(IDENTITY, audience=HOST, session_id="session-secret")
    header = json.loads(b64url_decode(token.split(".")[0]))
    key = signer.signing_key
    assert header == {"alg": "ES256" if which == "es" else "RS256", "typ": "JWT", "kid": key.kid}
    assert key.kid == jwk_thumbprint(key.public_jwk())
    got = verifier_for(signer.public_jwks(), clock).verify(token)
    assert got["iss"] == got["aud"] == HOST
    assert {k: got[k] for k in IDENTITY} == IDENTITY
    assert got["iat"] == NOW and got["exp"] == NOW + 300
    assert isinstance(got["jti"], str) and len(got["jti"]) >= 16
    assert got["sid"] != "session-secret" and "session-secret" not in token
    assert asyncio.run(verifier_for(signer.public_jwks(), clock).averify(token)) == got


def test_cached_answers_only_what_a_verification_left_and_checks_exp(
        es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    token = signer.sign(IDENTITY, audience=HOST)
    verifier = verifier_for(signer.public_jwks(), clock)
    assert verifier.cached(token) is None                 # never verified: no answer
    assert verifier.cached("not.a.token") is None
    got = verifier.verify(token)
    hit = verifier.cached(token)
    assert hit == got and hit is not got                  # a copy
    clock.advance(300 + verifier.leeway)
    with pytest.raises(ExpiredToken):
        verifier.cached(token)


def test_configured_issuer_and_per_call_issuer(es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock, issuer="proxy.example.com")
    keys = signer.public_jwks()
    token = signer.sign(IDENTITY, audience=HOST)
    assert verifier_for(keys, clock, issuer="proxy.example.com").verify(token)["iss"] == (
        "proxy.example.com")
    other = signer.sign(IDENTITY, audience=HOST, issuer="other.example")
    assert verifier_for(keys, clock, issuer="other.example").verify(other)["aud"] == HOST
    with pytest.raises(InvalidToken, match="issuer"):
        verifier_for(keys, clock).verify(token)


def test_claim_shapes(es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    verify = verifier_for(signer.public_jwks(), clock).verify
    bare = verify(signer.sign({"sub": "u", "groups": None}, audience=HOST))
    assert bare["groups"] == [] and bare["email"] == "" and bare["name"] == ""
    assert "sid" not in bare
    tuple_groups = verify(signer.sign({"sub": "u2", "groups": ("b", "a")}, audience=HOST))
    assert tuple_groups["groups"] == ["b", "a"]
    # claims the signer owns cannot be smuggled in through the identity
    smuggled = verify(signer.sign({"sub": "u3", "exp": NOW + 10**6, "aud": "evil",
                                   "iss": "evil", "sid": "raw", "custom": 7}, audience=HOST))
    assert smuggled["exp"] == NOW + 300 and smuggled["aud"] == HOST and smuggled["custom"] == 7
    assert "sid" not in smuggled
    a = verify(signer.sign(IDENTITY, audience=HOST, session_id="s1"))["sid"]
    b = verify(signer.sign(IDENTITY, audience=HOST, session_id="s2"))["sid"]
    assert a != b and hashlib.sha256(b"s1").hexdigest() not in (a, b)
    for bad in ({"email": "x"}, {"sub": ""}, {"sub": 5}, {"sub": "u", "groups": [1]},
                {"sub": "u", "email": 5}):
        with pytest.raises(ValueError):
            signer.sign(bad, audience=HOST)
    with pytest.raises(ValueError):
        signer.sign(IDENTITY, audience="")


def test_es256_assertions_are_always_low_s(es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock, cache_size=0)
    verify = verifier_for(signer.public_jwks(), clock).verify
    tokens = [signer.sign({**IDENTITY, "n": n}, audience=HOST) for n in range(40)]
    assert all(s_of(t) <= P256_N // 2 for t in tokens)
    for token in tokens[:5]:
        assert verify(token)["sub"] == "user-1"


# -- signer reuse ---------------------------------------------------------------------------


def test_signer_reuses_a_fresh_assertion(es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    first = signer.sign(IDENTITY, audience=HOST, session_id="s")
    clock.advance(239)  # 61 s of validity left: more than the 60 s margin
    assert signer.sign(dict(IDENTITY), audience=HOST, session_id="s") == first
    assert signer.sign(IDENTITY, audience="other.example", session_id="s") != first
    assert signer.sign(IDENTITY, audience=HOST, session_id="s2") != first
    assert signer.sign(IDENTITY, audience=HOST, issuer="x.example", session_id="s") != first
    clock.advance(1)  # 60 s left: within the margin, so a new one
    second = signer.sign(IDENTITY, audience=HOST, session_id="s")
    assert second != first
    assert signer.sign(IDENTITY, audience=HOST, session_id="s") == second


def test_signer_reuse_follows_the_identity(es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    identity = {**IDENTITY, "groups": ["admins"]}
    first = signer.sign(identity, audience=HOST)  # no session: keyed by sub
    identity["groups"].append("root")  # the caller mutates its own dict afterwards
    changed = signer.sign(identity, audience=HOST)
    assert changed != first
    claims_ = verifier_for(signer.public_jwks(), clock).verify(changed)
    assert claims_["groups"] == ["admins", "root"]
    assert signer.sign({**IDENTITY, "sub": "user-2"}, audience=HOST) != changed


def test_signer_reuse_is_bounded_and_can_be_disabled(es_jwks: dict[str, Any],
                                                     clock: Clock) -> None:
    signer = signer_for(es_jwks, clock, cache_size=2)
    tokens = [signer.sign(IDENTITY, audience=HOST, session_id=f"s{i}") for i in range(3)]
    assert signer.sign(IDENTITY, audience=HOST, session_id="s2") == tokens[2]
    assert signer.sign(IDENTITY, audience=HOST, session_id="s0") != tokens[0]  # evicted
    off = signer_for(es_jwks, clock, cache_size=0)
    assert off.sign(IDENTITY, audience=HOST) != off.sign(IDENTITY, audience=HOST)


def test_signer_does_not_reuse_after_the_clock_went_back(es_jwks: dict[str, Any],
                                                         clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    first = signer.sign(IDENTITY, audience=HOST)
    clock.advance(-120)
    assert signer.sign(IDENTITY, audience=HOST) != first


@pytest.mark.parametrize("options", [
    {"lifetime": 0}, {"lifetime": 86401}, {"lifetime": float("nan")}, {"lifetime": True},
    {"reuse_margin": -1}, {"reuse_margin": 300}, {"cache_size": -1}, {"issuer": ""},
])
def test_bad_signer_options(es_jwks: dict[str, Any], options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AssertionSigner(jwks=es_jwks, **options)


@pytest.mark.parametrize("jwks", [{}, {"keys": []}, {"keys": ["x"]}, {"keys": [{"kty": "oct"}]}])
def test_bad_signer_key_sets(jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AssertionSigner(jwks=jwks)


def test_public_key_set_is_not_a_signer_key_set(es_jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="keys\\[0\\]"):
        AssertionSigner(jwks={"keys": [SigningKey.from_jwk(es_jwks["keys"][0]).public_jwk()]})
    with pytest.raises(ValueError, match="same key twice"):
        AssertionSigner(jwks={"keys": es_jwks["keys"] * 2})


# -- published keys -------------------------------------------------------------------------


def test_jwks_publishes_every_key_and_the_first_signs(es_jwks: dict[str, Any],
                                                      rs_jwks: dict[str, Any],
                                                      clock: Clock) -> None:
    custom_kid = {**rs_jwks["keys"][0], "kid": "my-own-kid"}
    signer = signer_for({"keys": [*es_jwks["keys"], custom_kid]}, clock)
    published = signer.public_jwks()["keys"]
    assert [k["alg"] for k in published] == ["ES256", "RS256"]
    assert all("d" not in k and k["kid"] == jwk_thumbprint(k) for k in published)
    published.clear()  # a copy: mutation does not reach the signer
    assert len(signer.public_jwks()["keys"]) == 2
    token = signer.sign(IDENTITY, audience=HOST)
    assert json.loads(b64url_decode(token.split(".")[0]))["alg"] == "ES256"


def test_jwks_document_and_etag(es_jwks: dict[str, Any], rs_jwks: dict[str, Any]) -> None:
    one = AssertionSigner(jwks=es_jwks)
    body, etag = one.jwks_document()
    assert json.loads(body) == one.public_jwks()
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith('W/')
    assert one.jwks_document() == (body, etag)
    assert AssertionSigner(jwks=es_jwks, issuer="x.example").jwks_document() == (body, etag)
    rotated = AssertionSigner(jwks={"keys": [*rs_jwks["keys"], *es_jwks["keys"]]})
    assert rotated.jwks_document()[1] != etag
    assert AssertionSigner(jwks=rs_jwks).jwks_document()[1] not in (etag,
                                                                     rotated.jwks_document()[1])


# -- verifier: assertion rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (claims(iss="https://evil.example"), InvalidToken, "issuer"),
        (claims(iss=DROP), InvalidToken, "issuer"),
        (claims(aud="other.example"), InvalidToken, "audience"),
        (claims(aud=[HOST, "other.example"]), InvalidToken, "several audiences"),
        (claims(aud=["other.example", HOST]), InvalidToken, "several audiences"),
        (claims(aud=[]), InvalidToken, "aud"),
        (claims(aud=DROP), InvalidToken, "aud"),
        (claims(iat=NOW - 200, exp=NOW - 31), ExpiredToken, "expired"),
        (claims(nbf=NOW + 60), InvalidToken, "not yet valid"),
        (claims(iat=NOW + 60, exp=NOW + 360), InvalidToken, "future"),
        (claims(iat=DROP), InvalidToken, "iat claim missing"),
        (claims(exp=DROP), InvalidToken, "exp claim missing"),
        (claims(iat=NOW - 86400, exp=NOW + 1), InvalidToken, "lifetime"),
        (claims(iat=NOW + 20, exp=NOW + 10), InvalidToken, "before it was issued"),
        (claims(exp="1800000300"), InvalidToken, "not a number"),
        (claims(iat=True), InvalidToken, "not a number"),
    ],
)
def test_claims_refused(es_key: SigningKey, clock: Clock, payload: dict[str, Any],
                        error: type[Exception], match: str) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    with pytest.raises(error, match=match):
        verifier.verify(forge(es_key, payload=payload))


def test_claims_accepted_at_the_edges(es_key: SigningKey, clock: Clock) -> None:
    verify = verifier_for(pinned(es_key), clock, cache_size=0).verify
    assert verify(forge(es_key, payload=claims(aud=[HOST])))["aud"] == [HOST]
    assert verify(forge(es_key, payload=claims(iat=NOW - 86000, exp=NOW + 400)))
    assert verify(forge(es_key, payload=claims(iat=NOW - 200, exp=NOW - 29)))  # leeway
    no_typ = {"alg": "ES256", "kid": es_key.kid}
    assert verify(forge(es_key, no_typ))
    assert verify(forge(es_key, {**no_typ, "typ": "application/jwt"}))
    with pytest.raises(ExpiredToken):
        verifier_for(pinned(es_key), clock, leeway=0).verify(
            forge(es_key, payload=claims(exp=NOW - 1)))


@pytest.mark.parametrize("typ", ["at+jwt", "JOSE", "secevent+jwt", "", 1, None])
def test_typ_other_than_jwt_refused(es_key: SigningKey, clock: Clock, typ: object) -> None:
    token = forge(es_key, {"alg": "ES256", "kid": es_key.kid, "typ": typ})
    with pytest.raises(InvalidToken):
        verifier_for(pinned(es_key), clock).verify(token)


def test_high_s_respelling_refused_when_strict(es_jwks: dict[str, Any], clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    original = signer.sign(IDENTITY, audience=HOST)
    respelled = respell_s(original)
    assert respelled != original and s_of(respelled) > P256_N // 2
    assert verifier_for(signer.public_jwks(), clock).verify(respelled)["sub"] == "user-1"
    verifier = verifier_for(signer.public_jwks(), clock, require_low_s=True)
    with pytest.raises(InvalidToken, match="low-s"):
        verifier.verify(respelled)
    assert verifier.verify(original)["sub"] == "user-1"
    with pytest.raises(InvalidToken, match="low-s"):  # also once the original is cached
        verifier.verify(respelled)


def test_high_s_from_a_hand_signed_token_refused_when_strict(es_key: SigningKey,
                                                            clock: Clock) -> None:
    verify = verifier_for(pinned(es_key), clock, cache_size=0, require_low_s=True).verify
    default = verifier_for(pinned(es_key), clock, cache_size=0).verify
    for n in range(20):  # a raw signature with s > n/2 (about half of them) is refused
        token = forge(es_key, payload=claims(n=n), low_s=False)
        if s_of(token) > P256_N // 2:
            assert default(token)["n"] == n
            with pytest.raises(InvalidToken, match="low-s"):
                verify(token)
            assert verify(respell_s(token))["n"] == n
            return
    pytest.fail("no high-s signature in 20 tries")


def test_key_not_in_the_pinned_set_refused(es_key: SigningKey, attacker: SigningKey,
                                           clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verifier.verify(forge(attacker))
    with pytest.raises(InvalidToken, match="invalid signature"):
        verifier.verify(forge(attacker, {"alg": "ES256", "typ": "JWT", "kid": es_key.kid}))


def test_rs256_not_accepted_unless_allowed(rs_key: SigningKey, clock: Clock) -> None:
    token = forge(rs_key)
    assert verifier_for(pinned(rs_key), clock).verify(token)["sub"] == "user-1"
    with pytest.raises(InvalidToken, match="algorithm"):
        verifier_for(pinned(rs_key), clock, algorithms=("ES256",)).verify(token)


# -- verifier: a small hostile corpus (the big one is test_token_attacks.py) -----------------


def _hmac_with(secret: bytes) -> Callable[[bytes], bytes]:
    import hmac
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def _pem(key: SigningKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


DUPLICATE_ISS = f'{{"iss":"{HOST}","iss":"x","aud":"{HOST}","iat":{NOW},"exp":{NOW + 300}}}'
INFINITE_EXP = f'{{"iss":"{HOST}","aud":"{HOST}","iat":{NOW},"exp":Infinity}}'


def _raw_payload(key: SigningKey, text: str) -> str:
    head = b64(compact({"alg": key.alg, "typ": "JWT", "kid": key.kid}))
    signing_input = f"{head}.{b64(text)}"
    sig = raw_signature(key, signing_input.encode())
    if int.from_bytes(sig[32:], "big") > P256_N // 2:
        sig = sig[:32] + (P256_N - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    return f"{signing_input}.{b64(sig)}"


Hostile = Callable[[SigningKey, SigningKey, SigningKey], object]

HOSTILE: list[Any] = [
    *[pytest.param(lambda e, r, a, alg=alg: forge(e, {"alg": alg, "typ": "JWT", "kid": e.kid},
                                                  signature=b"junk"), id=f"alg-{alg}")
      for alg in ("none", "None", "NONE", "nOnE")],
    pytest.param(lambda e, r, a: forge(e).rsplit(".", 1)[0] + ".", id="stripped-signature"),
    pytest.param(lambda e, r, a: forge(r, {"alg": "HS256", "typ": "JWT", "kid": r.kid},
                                       signature=_hmac_with(_pem(r))),
                 id="hs256-rsa-public-pem-as-secret"),
    pytest.param(lambda e, r, a: forge(r, {"alg": "HS256", "typ": "JWT", "kid": r.kid},
                                       signature=_hmac_with(compact(r.public_jwk()).encode())),
                 id="hs256-rsa-jwk-as-secret"),
    pytest.param(lambda e, r, a: forge(e, {"alg": "HS256", "typ": "JWT", "kid": e.kid},
                                       signature=_hmac_with(_pem(e))),
                 id="hs256-ec-public-pem-as-secret"),
    pytest.param(lambda e, r, a: forge(a, {"alg": "ES256", "typ": "JWT", "kid": a.kid,
                                           "jwk": a.public_jwk()}), id="embedded-jwk"),
    pytest.param(lambda e, r, a: forge(e, {"alg": "ES256", "typ": "JWT", "kid": e.kid,
                                           "jwk": e.public_jwk()}), id="embedded-jwk-pinned"),
    pytest.param(lambda e, r, a: forge(a, {"alg": "ES256", "typ": "JWT", "kid": a.kid,
                                           "jku": "https://evil.example/jwks"}), id="jku"),
    pytest.param(lambda e, r, a: forge(e, {"alg": "ES256", "typ": "JWT", "kid": e.kid,
                                           "x5u": "https://evil.example/c.pem"}), id="x5u"),
    pytest.param(lambda e, r, a: forge(e, {"alg": "ES256", "typ": "JWT", "kid": e.kid,
                                           "x5c": [b64(b"0\x82cert")]}), id="x5c"),
    pytest.param(lambda e, r, a: forge(e, {"alg": "ES256", "typ": "JWT", "kid": e.kid,
                                           "crit": ["exp"]}), id="crit"),
    *[pytest.param(lambda e, r, a, k=kid: forge(a, {"alg": "ES256", "typ": "JWT", "kid": k}),
                   id=f"kid-{name}")
      for name, kid in [("path-traversal", "../../../../dev/null"),
                        ("sql", "' OR '1'='1' --"), ("very-long", "k" * 5000),
                        ("empty", ""), ("nul", "kid\x00")]],
    pytest.param(lambda e, r, a: forge(e, {"alg": "ES256", "typ": "JWT", "kid": r.kid}),
                 id="kid-of-the-rsa-key"),
    pytest.param(lambda e, r, a: forge(e, {"alg": "RS256", "typ": "JWT", "kid": e.kid}),
                 id="rs256-header-ec-signature"),
    pytest.param(lambda e, r, a: forge(e, signature=b"\x00" * 64), id="zero-signature"),
    pytest.param(lambda e, r, a: forge(e, signature=P256_N.to_bytes(32, "big") * 2),
                 id="r-s-equal-order"),
    pytest.param(lambda e, r, a: forge(e) + ".x.y", id="five-segments"),
    pytest.param(lambda e, r, a: "." * 2, id="empty-segments"),
    pytest.param(lambda e, r, a: "x" * 100_000, id="oversized"),
    pytest.param(lambda e, r, a: "é.é.é", id="non-ascii"),
    pytest.param(lambda e, r, a: forge(e).encode(), id="bytes-not-str"),
    pytest.param(lambda e, r, a: None, id="none"),
    pytest.param(lambda e, r, a: 12, id="int"),
    pytest.param(lambda e, r, a: _raw_payload(e, DUPLICATE_ISS), id="duplicate-claim"),
    pytest.param(lambda e, r, a: _raw_payload(e, INFINITE_EXP), id="infinite-exp"),
]


@pytest.mark.parametrize("build", HOSTILE)
def test_hostile_tokens_refused(build: Hostile, es_key: SigningKey, rs_key: SigningKey,
                                attacker: SigningKey, clock: Clock) -> None:
    token = build(es_key, rs_key, attacker)
    for verifier in (verifier_for(pinned(es_key, rs_key), clock),
                     verifier_for(pinned(es_key, rs_key), clock, cache_size=0)):
        with pytest.raises(InvalidToken):
            verifier.verify(token)  # type: ignore[arg-type]
        with pytest.raises(InvalidToken):
            asyncio.run(verifier.averify(token))  # type: ignore[arg-type]


# -- verifier: cache ------------------------------------------------------------------------


def test_cached_token_still_expires(es_key: SigningKey, clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    token = forge(es_key)
    assert verifier.verify(token)["sub"] == "user-1"
    assert len(verifier._cache) == 1
    clock.advance(300 + 29)
    assert verifier.verify(token)["sub"] == "user-1"  # a hit, within the leeway
    clock.advance(1)
    with pytest.raises(ExpiredToken):
        verifier.verify(token)
    assert len(verifier._cache) == 0
    with pytest.raises(ExpiredToken):
        asyncio.run(verifier.averify(token))


def test_cache_hits_do_not_verify_again(es_key: SigningKey, clock: Clock,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    token = forge(es_key)
    verifier.verify(token)

    def boom(token: str) -> dict[str, Any]:
        raise AssertionError("verified again")

    monkeypatch.setattr(verifier._core, "verify", boom)
    assert verifier.verify(token)["sub"] == "user-1"
    assert asyncio.run(verifier.averify(token))["sub"] == "user-1"


def test_cache_returns_copies(es_key: SigningKey, clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    token = forge(es_key, payload=claims(groups=["a"], meta={"teams": ["x"]}))
    first = verifier.verify(token)
    first["groups"].append("admins")
    first["meta"]["teams"].append("root")
    first["sub"] = "root"
    again = verifier.verify(token)
    assert again["groups"] == ["a"] and again["meta"] == {"teams": ["x"]}
    assert again["sub"] == "user-1"
    again["groups"].append("admins")
    assert verifier.verify(token)["groups"] == ["a"]


def test_cache_is_bounded_lru(es_key: SigningKey, clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock, cache_size=3)
    tokens = [forge(es_key, payload=claims(n=n)) for n in range(5)]
    for token in tokens[:3]:
        verifier.verify(token)
    verifier.verify(tokens[0])  # most recently used now
    verifier.verify(tokens[3])  # evicts tokens[1]
    verifier.verify(tokens[4])  # evicts tokens[2]
    expected = {hashlib.sha256(tokens[i].encode()).digest() for i in (0, 3, 4)}
    assert set(verifier._cache) == expected
    off = verifier_for(pinned(es_key), clock, cache_size=0)
    off.verify(tokens[0])
    assert len(off._cache) == 0


def test_refusals_are_not_cached(es_key: SigningKey, attacker: SigningKey, clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    for n in range(10):
        with pytest.raises(InvalidToken):
            verifier.verify(forge(attacker, payload=claims(n=n)))
    assert len(verifier._cache) == 0


def test_cache_is_thread_safe(es_key: SigningKey, clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock, cache_size=8)
    tokens = [forge(es_key, payload=claims(n=n)) for n in range(16)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(200):
                n = (i + offset) % 16
                assert verifier.verify(tokens[n])["n"] == n
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(verifier._cache) <= 8


def test_clear_cache(es_key: SigningKey, clock: Clock) -> None:
    verifier = verifier_for(pinned(es_key), clock)
    verifier.verify(forge(es_key))
    verifier.clear_cache()
    assert len(verifier._cache) == 0


# -- verifier: options ----------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {}, {"jwks": {"keys": []}, "jwks_url": "https://idp.example/jwks"},
    {"jwks": {"keys": []}, "leeway": 61}, {"jwks": {"keys": []}, "leeway": -1},
    {"jwks": {"keys": []}, "algorithms": ("HS256",)}, {"jwks": {"keys": []}, "algorithms": ()},
    {"jwks": {"keys": []}, "cache_size": -1}, {"jwks": {"keys": []}, "issuer": ""},
    {"jwks": {"keys": []}, "audience": ""}, {"jwks": "not-a-jwks"},
    {"jwks_url": "http://idp.example/jwks"}, {"jwks_url": "file:///etc/passwd"},
])
def test_bad_verifier_options(options: dict[str, Any]) -> None:
    options = {"issuer": HOST, "audience": HOST, **options}
    with pytest.raises((ValueError, TypeError)):
        AssertionVerifier(**options)


def test_jwks_as_key_set(es_key: SigningKey, clock: Clock) -> None:
    keys = KeySet.from_dict(pinned(es_key))
    verifier = AssertionVerifier(jwks=keys, issuer=HOST, audience=HOST, clock=clock)
    assert verifier.keys is keys
    assert verifier.verify(forge(es_key))["sub"] == "user-1"
    assert "AssertionVerifier" in repr(verifier) and "AssertionSigner" in repr(
        AssertionSigner(jwks={"keys": [es_key.private_jwk()]}))


# -- verifier over jwks_url: a real local HTTP server ---------------------------------------


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    srv = JWKSServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()


def test_verifier_over_jwks_url(server: JWKSServer, es_jwks: dict[str, Any],
                                attacker: SigningKey, clock: Clock) -> None:
    signer = signer_for(es_jwks, clock)
    url = server.serve_json("/.well-known/secure-mw/jwks.json", signer.public_jwks(),
                            cache_control="max-age=300")
    verifier = AssertionVerifier(jwks_url=url, issuer=HOST, audience=HOST, clock=clock)
    token = signer.sign(IDENTITY, audience=HOST, session_id="s")
    assert verifier.verify(token)["email"] == "alice@example.com"
    other = signer.sign({**IDENTITY, "sub": "user-2"}, audience=HOST)
    assert asyncio.run(verifier.averify(other))["sub"] == "user-2"
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verifier.verify(forge(attacker))
    assert server.hits["/.well-known/secure-mw/jwks.json"] == 1


def test_unreachable_jwks_url_is_invalid_token(server: JWKSServer, es_jwks: dict[str, Any],
                                               clock: Clock) -> None:
    url = server.serve_json("/jwks", {}, status=502)
    verifier = AssertionVerifier(jwks_url=url, issuer=HOST, audience=HOST, clock=clock)
    token = signer_for(es_jwks, clock).sign(IDENTITY, audience=HOST)
    with pytest.raises(InvalidToken, match="signing keys unavailable") as info:
        verifier.verify(token)
    assert isinstance(info.value.__cause__, StoreUnavailable)
    with pytest.raises(InvalidToken, match="signing keys unavailable"):
        asyncio.run(verifier.averify(token))


def test_sign_helper_tokens_need_low_s_when_strict(es_key: SigningKey, clock: Clock) -> None:
    """Strict: tokens from the core sign() are accepted exactly when their s is low."""
    verify = verifier_for(pinned(es_key), clock, cache_size=0, require_low_s=True).verify
    for n in range(6):
        token = sign(claims(n=n), es_key)
        if s_of(token) <= P256_N // 2:
            assert verify(token)["n"] == n
        else:
            with pytest.raises(InvalidToken, match="low-s"):
                verify(token)


def test_high_s_is_accepted_by_default() -> None:
    """Pomerium's, jose's and PyJWT's ES256 signatures are high-s half the time; RFC 7518
    accepts both spellings, and so does the verifier unless require_low_s=True."""
    key = SigningKey.generate("ES256")
    now = int(time.time())
    token = sign({"iss": "proxy", "aud": "app", "sub": "alice", "iat": now, "exp": now + 300},
                 key)
    header, payload, signature = token.split(".")
    raw = b64url_decode(signature)
    order = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
    s = int.from_bytes(raw[32:], "big")
    respelled = f"{header}.{payload}." + b64url_encode(raw[:32] + (order - s).to_bytes(32, "big"))
    high, low = (token, respelled) if s > order // 2 else (respelled, token)
    jwks = {"keys": [key.public_jwk()]}
    strict = AssertionVerifier(jwks=jwks, issuer="proxy", audience="app", require_low_s=True)
    default = AssertionVerifier(jwks=jwks, issuer="proxy", audience="app")
    assert strict.verify(low)["sub"] == "alice"
    with pytest.raises(InvalidToken):
        strict.verify(high)
    assert default.verify(high)["sub"] == "alice" and default.verify(low)["sub"] == "alice"
