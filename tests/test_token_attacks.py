"""A corpus of hostile tokens (RFC 8725 and the JWT attack literature). Each must be refused
with InvalidToken — never accepted, never another exception.

Tokens are forged by hand here (raw JSON text, raw signatures) so that the corpus does not
depend on the code under test to build them. The verifier allows all four algorithms, so it is
never the allow-list alone that saves us.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_mw.errors import InvalidToken
from secure_mw.tokens import SUPPORTED_ALGORITHMS, JWTVerifier, KeySet, SigningKey

ISS = "https://issuer.example"
AUD = "api://secure-mw-tests"
NOW = 1_800_000_000
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def raw_signature(key: SigningKey, message: bytes, alg: str | None = None) -> bytes:
    """Sign like a JWS library would, straight on `cryptography`."""
    private = key.private_key
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if isinstance(private, rsa.RSAPrivateKey):
        if (alg or key.alg) == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return private.sign(message, pss, hashes.SHA256())
        return private.sign(message, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return private.sign(message)


@dataclass
class Ctx:
    ec: SigningKey
    rsa: SigningKey
    ed: SigningKey
    attacker: SigningKey
    keys: KeySet
    verifier: JWTVerifier

    def claims(self, **changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW,
                                "exp": NOW + 300}
        base.update(changes)
        return base

    def header(self, key: SigningKey | None = None, **changes: Any) -> dict[str, Any]:
        key = key or self.ec
        return {"alg": key.alg, "typ": "JWT", "kid": key.kid, **changes}

    def forge(
        self,
        header: dict[str, Any] | str | bytes | None = None,
        payload: dict[str, Any] | str | bytes | None = None,
        *,
        signer: SigningKey | None = None,
        signature: bytes | Callable[[bytes], bytes] | None = None,
        alg: str | None = None,
    ) -> str:
        """header/payload: a dict (compact JSON), raw JSON text or raw bytes."""
        parts = []
        for part, default in ((header, self.header(signer)), (payload, self.claims())):
            part = default if part is None else part
            parts.append(b64(compact(part) if isinstance(part, dict) else part))
        signing_input = ".".join(parts).encode()
        if signature is None:
            sig = raw_signature(signer or self.ec, signing_input, alg)
        elif callable(signature):
            sig = signature(signing_input)
        else:
            sig = signature
        return f"{parts[0]}.{parts[1]}.{b64(sig)}"

    def valid(self) -> str:
        return self.forge()


@pytest.fixture(scope="module")
def ctx() -> Ctx:
    ec_key = SigningKey.generate("ES256")
    rsa_key = SigningKey.generate("RS256")
    ed_key = SigningKey.generate("EdDSA")
    attacker = SigningKey.generate("ES256")
    off_curve = {**ec_key.public_jwk(), "kid": "off-curve",
                 "y": b64((int.from_bytes(base64.urlsafe_b64decode(
                     ec_key.public_jwk()["y"] + "="), "big") ^ 1).to_bytes(32, "big"))}
    keys = KeySet.from_dict({"keys": [ec_key.public_jwk(), rsa_key.public_jwk(),
                                      ed_key.public_jwk(), off_curve]})
    assert len(keys) == 3 and "off-curve" not in keys
    verifier = JWTVerifier(keys, issuer=ISS, audience=AUD, algorithms=SUPPORTED_ALGORITHMS,
                           clock=lambda: float(NOW))
    return Ctx(ec_key, rsa_key, ed_key, attacker, keys, verifier)


def test_forged_controls_are_accepted(ctx: Ctx) -> None:
    """The forging helpers make valid tokens; so refusals below are due to the attack."""
    assert ctx.verifier.verify(ctx.valid())["sub"] == "alice"
    for key in (ctx.rsa, ctx.ed):
        assert ctx.verifier.verify(ctx.forge(ctx.header(key), signer=key))["sub"] == "alice"
    assert ctx.verifier.verify(ctx.forge(payload=_raw_claims()))["iss"] == ISS
    assert ctx.verifier.verify(_es256_rs(ctx))["sub"] == "alice"
    assert ctx.verifier.verify(_swap_signature(ctx, lambda m: raw_signature(ctx.ec, m)))


def _pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hmac(secret: bytes, digest: str = "sha256") -> Callable[[bytes], bytes]:
    return lambda message: hmac.new(secret, message, getattr(hashlib, digest)).digest()


def _swap_signature(ctx: Ctx, sig: Callable[[bytes], bytes]) -> str:
    head, body, _ = ctx.valid().split(".")
    return f"{head}.{body}.{b64(sig(f'{head}.{body}'.encode()))}"


def _es256_rs(ctx: Ctx, r: int | None = None, s: int | None = None) -> str:
    def tweak(message: bytes) -> bytes:
        good = raw_signature(ctx.ec, message)
        rr = int.from_bytes(good[:32], "big") if r is None else r
        ss = int.from_bytes(good[32:], "big") if s is None else s
        return rr.to_bytes(32, "big") + ss.to_bytes(32, "big")
    return ctx.forge(signature=tweak)


def _ed25519_s_plus_l(ctx: Ctx) -> str:
    def malleate(message: bytes) -> bytes:
        good = raw_signature(ctx.ed, message)
        s = int.from_bytes(good[32:], "little") + ED25519_L
        return good[:32] + s.to_bytes(32, "little")
    return ctx.forge(ctx.header(ctx.ed), signer=ctx.ed, signature=malleate)


def _der_signature(ctx: Ctx) -> str:
    private = ctx.ec.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return ctx.forge(signature=lambda m: private.sign(m, ec.ECDSA(hashes.SHA256())))


def _with_std_alphabet(ctx: Ctx) -> str:
    for n in range(200):
        token = ctx.forge(payload=ctx.claims(n=n))
        if "-" in token or "_" in token:
            return token.replace("-", "+").replace("_", "/")
    raise AssertionError("no token with - or _ found")


def _non_canonical_signature(ctx: Ctx) -> str:
    token = ctx.valid()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    twin = alphabet[last | 1] if last % 16 == 0 else alphabet[last & ~15]
    forged = token[:-1] + twin  # same 64 bytes, unused low bits changed
    assert base64.urlsafe_b64decode(forged.split(".")[2] + "==") == base64.urlsafe_b64decode(
        token.split(".")[2] + "==")
    return forged


def _segments(ctx: Ctx, count: int) -> str:
    head, body, sig = ctx.valid().split(".")
    return ".".join(([head, body, sig] * 2)[:count])


def _jwe_like(ctx: Ctx) -> str:
    head = b64(compact({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": ctx.rsa.kid}))
    return ".".join([head, b64(b"k" * 256), b64(b"i" * 12), b64(b"c" * 40), b64(b"t" * 16)])


def _pad(ctx: Ctx, index: int, padding_text: str = "=") -> str:
    parts = ctx.valid().split(".")
    parts[index] += padding_text
    return ".".join(parts)


def _insert(ctx: Ctx, text: str, position: int = 10) -> str:
    token = ctx.valid()
    return token[:position] + text + token[position:]


def _splice(ctx: Ctx) -> str:
    admin = ctx.forge(payload=ctx.claims(sub="admin")).split(".")
    user = ctx.valid().split(".")
    return f"{admin[0]}.{admin[1]}.{user[2]}"


def _raw_claims(**raw: str) -> str:
    """Payload JSON text with the given members inserted verbatim."""
    base = {"iss": json.dumps(ISS), "aud": json.dumps(AUD), "sub": '"alice"',
            "iat": str(NOW), "exp": str(NOW + 300)}
    base.update(raw)
    return "{" + ",".join(f'"{k}":{v}' for k, v in base.items() if v != "DROP") + "}"


def _nested(depth: int) -> str:
    return _raw_claims(deep="[" * depth + "]" * depth)


Build = Callable[[Ctx], object]

ALG_NONE = [
    pytest.param(lambda c, a=alg, s=sig: c.forge(c.header(alg=a), signature=s),
                 id=f"alg-{alg}-{'empty' if not sig else 'junk'}-sig")
    for alg in ("none", "None", "NONE", "nOnE", "none ")
    for sig in (b"", b"junk-signature")
]

CASES: list[Any] = [
    *ALG_NONE,
    pytest.param(lambda c: c.valid().rsplit(".", 1)[0] + ".", id="alg-none-style-stripped-sig"),
    # --- header alg malformed --------------------------------------------------------------
    pytest.param(lambda c: c.forge({"typ": "JWT", "kid": c.ec.kid}), id="alg-missing"),
    pytest.param(lambda c: c.forge(c.header(alg=None)), id="alg-null"),
    pytest.param(lambda c: c.forge(c.header(alg=256)), id="alg-number"),
    pytest.param(lambda c: c.forge(c.header(alg=["ES256"])), id="alg-list"),
    pytest.param(lambda c: c.forge(c.header(alg="")), id="alg-empty"),
    pytest.param(lambda c: c.forge(c.header(alg="es256")), id="alg-lower-case"),
    pytest.param(lambda c: c.forge(c.header(alg="ES256 ")), id="alg-trailing-space"),
    pytest.param(lambda c: c.forge(c.header(alg="ES384")), id="alg-ES384"),
    pytest.param(lambda c: c.forge(c.header(alg="ES256K")), id="alg-ES256K"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="RS512"), signer=c.rsa), id="alg-RS512"),
    # --- algorithm confusion: public key material as an HMAC secret ----------------------
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="HS256"), signature=_hmac(_pem(c.rsa))),
                 id="hs256-secret-rsa-public-pem"),
    pytest.param(lambda c: c.forge(c.header(alg="HS256"), signature=_hmac(_pem(c.ec))),
                 id="hs256-secret-ec-public-pem"),
    pytest.param(lambda c: c.forge(c.header(c.ed, alg="HS256"), signature=_hmac(_pem(c.ed))),
                 id="hs256-secret-ed25519-public-pem"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="HS256"), signature=_hmac(_der(c.rsa))),
                 id="hs256-secret-rsa-public-der"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="HS256"),
                                   signature=_hmac(compact(c.rsa.public_jwk()).encode())),
                 id="hs256-secret-rsa-jwk-json"),
    pytest.param(lambda c: c.forge(c.header(alg="HS256"),
                                   signature=_hmac(compact(c.ec.public_jwk()).encode())),
                 id="hs256-secret-ec-jwk-json"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="HS384"),
                                   signature=_hmac(_pem(c.rsa), "sha384")),
                 id="hs384-secret-rsa-public-pem"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="HS512"),
                                   signature=_hmac(_pem(c.rsa), "sha512")),
                 id="hs512-secret-rsa-public-pem"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="hs256"), signature=_hmac(_pem(c.rsa))),
                 id="hs256-lower-case-rsa-pem"),
    pytest.param(lambda c: c.forge({"alg": "HS256", "typ": "JWT"}, signature=_hmac(_pem(c.rsa))),
                 id="hs256-no-kid-rsa-pem"),
    # --- keys supplied by the token -----------------------------------------------------
    pytest.param(lambda c: c.forge(c.header(c.attacker, jwk=c.attacker.public_jwk()),
                                   signer=c.attacker), id="jwk-header-attacker-key"),
    pytest.param(lambda c: c.forge(c.header(jwk=c.attacker.public_jwk()), signer=c.attacker),
                 id="jwk-header-with-pinned-kid"),
    pytest.param(lambda c: c.forge(c.header(jwk=c.ec.public_jwk())),
                 id="jwk-header-validly-signed"),
    pytest.param(lambda c: c.forge(c.header(c.attacker, jku="https://evil.example/jwks.json"),
                                   signer=c.attacker), id="jku-header-attacker"),
    pytest.param(lambda c: c.forge(c.header(jku="https://evil.example/jwks.json")),
                 id="jku-header-validly-signed"),
    pytest.param(lambda c: c.forge(c.header(x5u="https://evil.example/cert.pem")),
                 id="x5u-header"),
    pytest.param(lambda c: c.forge(c.header(x5c=[b64(b"0\x82fake-certificate")])),
                 id="x5c-header"),
    pytest.param(lambda c: c.forge(c.header(x5c="not-a-list"), signer=c.attacker),
                 id="x5c-header-attacker"),
    # --- kid tricks ------------------------------------------------------------------------
    *[
        pytest.param(lambda c, k=kid: c.forge(c.header(c.attacker, kid=k), signer=c.attacker),
                     id=f"kid-{name}")
        for name, kid in [
            ("path-traversal", "../../../../../../dev/null"),
            ("absolute-path", "/etc/passwd"),
            ("sql-injection", "' OR '1'='1"),
            ("sql-union", "x' UNION SELECT 'secret' --"),
            ("shell", "|cat /etc/passwd"),
            ("nul-byte", "key\x00"),
            ("url", "https://evil.example/key"),
        ]
    ],
    pytest.param(lambda c: c.forge(c.header(kid=0)), id="kid-integer"),
    pytest.param(lambda c: c.forge(c.header(kid=None)), id="kid-null"),
    pytest.param(lambda c: c.forge(c.header(kid=True)), id="kid-bool"),
    pytest.param(lambda c: c.forge(c.header(kid=[c.ec.kid])), id="kid-list-of-pinned"),
    pytest.param(lambda c: c.forge(c.header(kid={"kid": c.ec.kid})), id="kid-object"),
    pytest.param(lambda c: c.forge(c.header(kid="")), id="kid-empty"),
    pytest.param(lambda c: c.forge(c.header(kid="k" * 10_000)), id="kid-huge"),
    pytest.param(lambda c: c.forge(c.header(kid=c.ec.kid.upper())), id="kid-case-changed"),
    pytest.param(lambda c: c.forge(c.header(kid=c.ec.kid + " ")), id="kid-trailing-space"),
    pytest.param(lambda c: c.forge(c.header(kid=c.ec.kid), signer=c.attacker),
                 id="kid-pinned-signed-by-attacker"),
    pytest.param(lambda c: c.forge(c.header(kid=c.rsa.kid)), id="kid-of-rsa-key-es256-sig"),
    pytest.param(lambda c: c.forge(c.header(c.ed, kid=c.ec.kid), signer=c.ed),
                 id="kid-of-ec-key-eddsa-sig"),
    pytest.param(lambda c: c.forge(c.header(kid="off-curve")), id="kid-of-off-curve-key"),
    pytest.param(lambda c: c.forge({"alg": "ES256", "typ": "JWT"}), id="no-kid-several-keys"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="PS256"), signer=c.rsa, alg="PS256"),
                 id="ps256-on-key-pinned-to-rs256"),
    pytest.param(lambda c: c.forge(c.header(c.rsa, alg="ES256"), signer=c.rsa),
                 id="es256-header-rsa-key"),
    # --- signatures ------------------------------------------------------------------------
    pytest.param(lambda c: c.valid().rsplit(".", 1)[0] + ".", id="sig-stripped"),
    pytest.param(lambda c: c.valid().rsplit(".", 1)[0], id="sig-segment-removed"),
    pytest.param(lambda c: c.forge(signature=bytes(range(64))), id="sig-garbage-64"),
    pytest.param(lambda c: c.forge(signature=b"\0" * 64), id="sig-all-zero"),
    pytest.param(lambda c: c.forge(signature=b"\xff" * 64), id="sig-all-ff"),
    pytest.param(lambda c: c.forge(signature=lambda m: raw_signature(c.ec, m)[:63]),
                 id="sig-63-bytes"),
    pytest.param(lambda c: c.forge(signature=lambda m: raw_signature(c.ec, m) + b"\0"),
                 id="sig-65-bytes"),
    pytest.param(lambda c: c.forge(signature=lambda m: b"\0" + raw_signature(c.ec, m)),
                 id="sig-leading-zero"),
    pytest.param(lambda c: c.forge(signature=b"\x01"), id="sig-1-byte"),
    pytest.param(lambda c: _es256_rs(c, r=0), id="ecdsa-r-zero"),
    pytest.param(lambda c: _es256_rs(c, s=0), id="ecdsa-s-zero"),
    pytest.param(lambda c: _es256_rs(c, r=0, s=0), id="ecdsa-r-and-s-zero"),
    pytest.param(lambda c: _es256_rs(c, r=P256_N), id="ecdsa-r-equals-n"),
    pytest.param(lambda c: _es256_rs(c, s=P256_N), id="ecdsa-s-equals-n"),
    pytest.param(lambda c: _es256_rs(c, r=P256_N + 1), id="ecdsa-r-above-n"),
    pytest.param(lambda c: _es256_rs(c, s=2**256 - 1), id="ecdsa-s-max"),
    pytest.param(_der_signature, id="ecdsa-der-encoded-sig"),
    pytest.param(_ed25519_s_plus_l, id="ed25519-s-plus-l-malleated"),
    pytest.param(lambda c: c.forge(c.header(c.rsa), signer=c.rsa,
                                   signature=lambda m: b"\0" + raw_signature(c.rsa, m)),
                 id="rsa-sig-one-byte-long"),
    pytest.param(lambda c: c.forge(c.header(c.rsa), signer=c.rsa,
                                   signature=lambda m: raw_signature(c.rsa, m)[1:]),
                 id="rsa-sig-one-byte-short"),
    pytest.param(lambda c: c.forge(c.header(c.rsa), signer=c.rsa,
                                   signature=lambda m: raw_signature(c.rsa, m, "PS256")),
                 id="rsa-pss-sig-under-rs256"),
    pytest.param(_splice, id="sig-spliced-from-other-token"),
    pytest.param(lambda c: _swap_signature(c, lambda m: raw_signature(c.attacker, m)),
                 id="sig-by-unpinned-key"),
    # --- invalid claims, validly signed --------------------------------------------------
    *[
        pytest.param(lambda c, r=raw: c.forge(payload=_raw_claims(**r)), id=name)
        for name, raw in [
            ("exp-string", {"exp": f'"{NOW + 300}"'}),
            ("exp-bool", {"exp": "true"}),
            ("exp-list", {"exp": f"[{NOW + 300}]"}),
            ("exp-object", {"exp": '{"v":1}'}),
            ("exp-null", {"exp": "null"}),
            ("exp-NaN", {"exp": "NaN"}),
            ("exp-Infinity", {"exp": "Infinity"}),
            ("exp-minus-Infinity", {"exp": "-Infinity"}),
            ("exp-1e400", {"exp": "1e400"}),
            ("exp-5000-digits", {"exp": "9" * 5000}),
            ("exp-missing", {"exp": "DROP"}),
            ("iat-missing", {"iat": "DROP"}),
            ("iat-string", {"iat": f'"{NOW}"'}),
            ("iat-bool", {"iat": "false"}),
            ("iat-NaN", {"iat": "NaN"}),
            ("nbf-string", {"nbf": f'"{NOW}"'}),
            ("nbf-NaN", {"nbf": "NaN"}),
            ("nbf-minus-1e400", {"nbf": "-1e400"}),
            ("nbf-null", {"nbf": "null"}),
            ("iss-missing", {"iss": "DROP"}),
            ("iss-list", {"iss": json.dumps([ISS])}),
            ("iss-number", {"iss": "1"}),
            ("aud-missing", {"aud": "DROP"}),
            ("aud-empty-list", {"aud": "[]"}),
            ("aud-list-of-numbers", {"aud": "[1,2]"}),
            ("aud-nested-list", {"aud": json.dumps([[AUD]])}),
            ("aud-null", {"aud": "null"}),
            ("aud-object", {"aud": json.dumps({AUD: True})}),
            ("claim-NaN-elsewhere", {"score": "NaN"}),
            ("nested-duplicate-member", {"ctx": '{"a":1,"a":2}'}),
        ]
    ],
    # --- duplicate members -----------------------------------------------------------------
    pytest.param(lambda c: c.forge(payload=_raw_claims(exp=str(NOW - 999)) [:-1]
                                   + f',"exp":{NOW + 300}' + "}"), id="payload-exp-twice"),
    pytest.param(lambda c: c.forge(payload=_raw_claims() [:-1] + ',"aud":"other"}'),
                 id="payload-aud-twice"),
    pytest.param(lambda c: c.forge(payload=_raw_claims() [:-1] + ',"iss":"https://evil"}'),
                 id="payload-iss-twice"),
    pytest.param(lambda c: c.forge(f'{{"alg":"none","alg":"ES256","kid":"{c.ec.kid}"}}'),
                 id="header-alg-twice"),
    pytest.param(lambda c: c.forge(
        f'{{"alg":"ES256","kid":"{c.attacker.kid}","kid":"{c.ec.kid}"}}'), id="header-kid-twice"),
    # --- crit and other header parameters --------------------------------------------------
    pytest.param(lambda c: c.forge(c.header(crit=["exp"])), id="crit-exp"),
    pytest.param(lambda c: c.forge(c.header(crit=[])), id="crit-empty-list"),
    pytest.param(lambda c: c.forge(c.header(crit=["b64"], b64=False)), id="crit-b64-false"),
    pytest.param(lambda c: c.forge(c.header(crit="x")), id="crit-string"),
    pytest.param(lambda c: c.forge(c.header(crit=None)), id="crit-null"),
    pytest.param(lambda c: c.forge(c.header(b64=False)), id="b64-false-without-crit"),
    pytest.param(lambda c: c.forge(c.header(zip="DEF")), id="zip-header"),
    pytest.param(lambda c: c.forge(c.header(enc="A256GCM")), id="enc-header"),
    # --- size and structure -----------------------------------------------------------------
    pytest.param(lambda c: c.forge(payload=c.claims(pad="x" * 17_000)), id="oversized-17KiB"),
    pytest.param(lambda c: "a" * 10_000_000, id="oversized-10MB-string"),
    pytest.param(lambda c: b"a." * 5_000_000, id="oversized-10MB-bytes"),
    pytest.param(lambda c: "", id="empty-string"),
    pytest.param(lambda c: ".", id="one-dot"),
    pytest.param(lambda c: "..", id="two-dots"),
    pytest.param(lambda c: "....", id="four-dots"),
    pytest.param(lambda c: _segments(c, 1), id="1-segment"),
    pytest.param(lambda c: _segments(c, 2), id="2-segments"),
    pytest.param(lambda c: _segments(c, 4), id="4-segments"),
    pytest.param(lambda c: _segments(c, 5), id="5-segments"),
    pytest.param(_jwe_like, id="jwe-compact"),
    pytest.param(lambda c: "." + c.valid(), id="leading-dot"),
    pytest.param(lambda c: c.valid() + ".", id="trailing-dot"),
    pytest.param(lambda c: c.forge(""), id="header-empty"),
    pytest.param(lambda c: c.forge(payload=""), id="payload-empty"),
    # --- base64url strictness -----------------------------------------------------------------
    pytest.param(lambda c: _pad(c, 0), id="padding-in-header"),
    pytest.param(lambda c: _pad(c, 1, "=="), id="padding-in-payload"),
    pytest.param(lambda c: _pad(c, 2), id="padding-in-signature"),
    pytest.param(_with_std_alphabet, id="standard-b64-plus-slash"),
    pytest.param(_non_canonical_signature, id="non-canonical-b64-trailing-bits"),
    pytest.param(lambda c: _pad(c, 2, "AAA"), id="impossible-b64-length"),
    pytest.param(lambda c: _insert(c, "é"), id="non-ascii-latin"),
    pytest.param(lambda c: _insert(c, "\uff41"), id="non-ascii-fullwidth"),
    pytest.param(lambda c: _insert(c, "٣"), id="non-ascii-arabic-digit"),
    pytest.param(lambda c: _insert(c, "\u200b"), id="zero-width-space"),
    pytest.param(lambda c: "\ufeff" + c.valid(), id="bom-prefix"),
    pytest.param(lambda c: c.valid() + "\n", id="trailing-newline"),
    pytest.param(lambda c: " " + c.valid(), id="leading-space"),
    pytest.param(lambda c: _insert(c, "\t"), id="tab-inside"),
    pytest.param(lambda c: _insert(c, "\0"), id="nul-inside"),
    pytest.param(lambda c: _insert(c, "\ud800"), id="lone-surrogate"),
    pytest.param(lambda c: c.valid().encode() + b"\xff", id="bytes-not-ascii"),
    # --- JSON strictness ----------------------------------------------------------------------
    *[
        pytest.param(lambda c, h=header: c.forge(h), id=f"header-json-{name}")
        for name, header in [("array", "[]"), ("string", '"ES256"'), ("null", "null"),
                             ("number", "1"), ("trailing-garbage", '{"alg":"ES256"}x'),
                             ("single-quotes", "{'alg':'ES256'}"),
                             ("comment", '{"alg":"ES256"/* c */}'),
                             ("utf16", '{"alg":"ES256"}'.encode("utf-16")),
                             ("not-utf8", b'{"alg":"ES256","x":"\xff"}')]
    ],
    *[
        pytest.param(lambda c, p=payload: c.forge(payload=p), id=f"payload-json-{name}")
        for name, payload in [("array", "[]"), ("string", '"claims"'), ("null", "null"),
                              ("NaN", "NaN"), ("utf16", _raw_claims().encode("utf-16")),
                              ("utf8-bom", b"\xef\xbb\xbf" + _raw_claims().encode()),
                              ("not-utf8", _raw_claims(sub='"\xff"').encode("latin-1")),
                              ("deep-nesting", _nested(5000))]
    ],
    # --- not a token at all -----------------------------------------------------------------
    *[
        pytest.param(lambda c, v=value: v, id=f"type-{name}")
        for name, value in [("none", None), ("int", 0), ("float", 1.5), ("bool", True),
                            ("list", ["a", "b", "c"]), ("dict", {"alg": "none"}),
                            ("object", object()), ("bytes-garbage", b"\xff\xfe\x00"),
                            ("bytearray", bytearray(b"a.b.c")), ("memoryview", memoryview(b"a"))]
    ],
]


@pytest.mark.parametrize("build", CASES)
def test_hostile_token_is_refused(ctx: Ctx, build: Build) -> None:
    token = build(ctx)
    with pytest.raises(InvalidToken) as info:
        ctx.verifier.verify(token)  # type: ignore[arg-type]
    assert type(info.value).__name__ in ("InvalidToken", "ExpiredToken")
    assert 0 < len(info.value.reason) < 80
    if isinstance(token, str) and "." in token:
        for part in token.split("."):
            assert len(part) < 8 or part not in str(info.value)


@pytest.mark.parametrize("build", CASES[:40] + CASES[-25:])
def test_hostile_token_is_refused_async(ctx: Ctx, build: Build) -> None:
    import asyncio

    with pytest.raises(InvalidToken):
        asyncio.run(ctx.verifier.averify(build(ctx)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda c: c.forge(c.header(alg="nOnE"), signature=b"x"), "alg none"),
        (lambda c: c.forge(c.header(c.rsa, alg="HS256"), signature=_hmac(_pem(c.rsa))), "HMAC"),
        (lambda c: c.forge(c.header(crit=[])), "critical"),
        (lambda c: c.forge(c.header(jwk=c.ec.public_jwk())), "embedded keys"),
        (lambda c: c.forge(c.header(kid="k" * 257)), "invalid kid"),
        (lambda c: c.forge(c.header(kid=c.rsa.kid)), "does not match the key"),
        (lambda c: _es256_rs(c, s=0), "invalid signature"),
        (lambda c: c.forge(payload=_raw_claims(exp="NaN")), "NaN"),
        (lambda c: c.forge(payload=_raw_claims(exp="1e400")), "out of range"),
        (lambda c: c.forge(payload=_raw_claims(exp='"1"')), "exp claim is not a number"),
        (lambda c: c.forge(payload=_raw_claims()[:-1] + ',"exp":1}'), "duplicate member"),
        (_jwe_like, "JWE"),
        (lambda c: _pad(c, 0), "base64url"),
    ],
    ids=["none", "hmac", "crit", "jwk", "kid", "key-type", "signature", "nan", "infinity",
         "exp-type", "duplicate", "jwe", "padding"],
)
def test_refusal_reasons_are_precise(ctx: Ctx, build: Build, reason: str) -> None:
    with pytest.raises(InvalidToken, match=reason):
        ctx.verifier.verify(build(ctx))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "jwk_change",
    [
        {"x": b64(b"\0" * 32), "y": b64(b"\0" * 32)},
        {"y": b64((2**256 - 2**224 + 2**192 + 2**96 - 1).to_bytes(32, "big"))},  # y = p
        {"x": b64(b"\xff" * 32)},
        {"x": b64(b"\x01" * 31)},
        {"crv": "P-384"},
        {"crv": "secp256k1"},
        {"kty": "oct", "k": b64(b"secret")},
    ],
    ids=["origin", "y-equals-p", "x-above-p", "x-short", "wrong-crv", "secp256k1", "as-oct"],
)
def test_invalid_ec_keys_are_never_loaded(ctx: Ctx, jwk_change: dict[str, str]) -> None:
    bad = {**ctx.ec.public_jwk(), **jwk_change, "kid": "bad"}
    keys = KeySet.from_dict({"keys": [bad]})
    assert len(keys) == 0 and keys.get_key("bad") is None and keys.get_key(None) is None
    check = JWTVerifier(keys, issuer=ISS, audience=AUD, clock=lambda: float(NOW))
    with pytest.raises(InvalidToken):
        check.verify(ctx.forge(ctx.header(kid="bad")))


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.text(max_size=400), st.binary(max_size=400),
                      st.text(alphabet="abcXYZ019-_.=+/ ", max_size=300)))
def test_fuzz_garbage_only_raises_invalid_token(ctx: Ctx, data: str | bytes) -> None:
    with pytest.raises(InvalidToken):
        ctx.verifier.verify(data)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(max_codepoint=0x2FF))
def test_fuzz_single_character_mutation(ctx: Ctx, position: int, replacement: str) -> None:
    token = ctx.valid()
    index = position % len(token)
    mutated = token[:index] + replacement + token[index + 1:]
    if mutated == token:
        assert ctx.verifier.verify(mutated)["sub"] == "alice"
        return
    with pytest.raises(InvalidToken):
        ctx.verifier.verify(mutated)


def test_recursion_limit_is_not_an_escape_hatch(ctx: Ctx) -> None:
    depth = sys.getrecursionlimit() * 2
    with pytest.raises(InvalidToken):
        ctx.verifier.verify(ctx.forge(payload=_nested(depth)))
