"""Known-answer tests for :mod:`secure_mw.crypto.primitives` (and the envelope's XAES-256-GCM
key derivation) against published vectors.

Every value below is copied from the cited document (hex exactly as laid out there, with
whitespace stripped by :func:`h`). The AEAD tests also check that flipping a single bit of the
ciphertext, the tag or the associated data makes decryption fail.

The two vectors whose cost is out of proportion to a unit run (RFC 6070's 16,777,216-iteration
PBKDF2 and RFC 7914's N=1048576 scrypt, about 1 GiB) are marked ``slow`` and skipped unless
``SECURE_MW_RUN_SLOW=1`` is set.
"""

from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.exceptions import CryptoError

from secure_mw.crypto import primitives as p
from secure_mw.crypto.envelope import XaesKdf

RUN_SLOW = os.environ.get("SECURE_MW_RUN_SLOW") == "1"
slow = [
    pytest.mark.slow,
    pytest.mark.skipif(not RUN_SLOW, reason="slow vector; set SECURE_MW_RUN_SLOW=1 to run"),
]


def h(text: str) -> bytes:
    """Decode hex laid out with arbitrary whitespace, as the RFCs print it."""
    return bytes.fromhex("".join(text.split()))


def flip(data: bytes, index: int) -> bytes:
    """Return ``data`` with the lowest bit of byte ``index`` inverted."""
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


class AeadVector(NamedTuple):
    key: bytes
    nonce: bytes
    plaintext: bytes
    aad: bytes
    ciphertext: bytes
    tag: bytes


def tamper_cases(vectors: dict[str, AeadVector]) -> list:
    """(vector, field) pairs for which a one-bit flip is possible, with readable ids."""
    cases = []
    for name, vec in vectors.items():
        fields = ["tag"]
        if vec.ciphertext:
            fields.insert(0, "ciphertext")
        if vec.aad:
            fields.append("aad")
        cases += [pytest.param(vec, field, id=f"{name}-{field}") for field in fields]
    return cases


def tampered(vec: AeadVector, field: str) -> tuple[bytes, bytes]:
    """Return (ciphertext || tag, aad) with one bit of ``field`` flipped."""
    ct, tag, aad = vec.ciphertext, vec.tag, vec.aad
    if field == "ciphertext":
        ct = flip(ct, len(ct) // 2)
    elif field == "tag":
        tag = flip(tag, len(tag) - 1)
    else:
        aad = flip(aad, 0)
    return ct + tag, aad


# ---------------------------------------------------------------------------------------------
# XChaCha20-Poly1305 -- draft-irtf-cfrg-xchacha-03, Appendix A.3.1 "AEAD_XCHACHA20_POLY1305"
# (developer-friendly restatement of A.1). HChaCha20 (section 2.2.1) is not exposed; not tested.
# ---------------------------------------------------------------------------------------------

XCHACHA_VECTORS = {
    "draft-xchacha-A.3.1": AeadVector(
        key=h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
        nonce=h("404142434445464748494a4b4c4d4e4f5051525354555657"),
        plaintext=h(
            """
            4c616469657320616e642047656e746c656d656e206f662074686520636c6173
            73206f66202739393a204966204920636f756c64206f6666657220796f75206f
            6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73
            637265656e20776f756c642062652069742e
            """
        ),
        aad=h("50515253c0c1c2c3c4c5c6c7"),
        ciphertext=h(
            """
            bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
            731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
            2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
            21f9664c97637da9768812f615c68b13b52e
            """
        ),
        tag=h("c0875924c1c7987947deafd8780acf49"),
    ),
}


@pytest.mark.parametrize("vec", list(XCHACHA_VECTORS.values()), ids=list(XCHACHA_VECTORS))
def test_xchacha20poly1305_encrypt(vec: AeadVector) -> None:
    # Argument order is libsodium's: (message, aad, nonce, key).
    out = p.xchacha20poly1305_encrypt(vec.plaintext, vec.aad, vec.nonce, vec.key)
    assert out == vec.ciphertext + vec.tag


@pytest.mark.parametrize("vec", list(XCHACHA_VECTORS.values()), ids=list(XCHACHA_VECTORS))
def test_xchacha20poly1305_decrypt(vec: AeadVector) -> None:
    out = p.xchacha20poly1305_decrypt(vec.ciphertext + vec.tag, vec.aad, vec.nonce, vec.key)
    assert out == vec.plaintext


@pytest.mark.parametrize(("vec", "field"), tamper_cases(XCHACHA_VECTORS))
def test_xchacha20poly1305_rejects_tampering(vec: AeadVector, field: str) -> None:
    sealed, aad = tampered(vec, field)
    with pytest.raises(CryptoError):
        p.xchacha20poly1305_decrypt(sealed, aad, vec.nonce, vec.key)


# ---------------------------------------------------------------------------------------------
# ChaCha20-Poly1305 -- RFC 8439
# ---------------------------------------------------------------------------------------------

CHACHA_VECTORS = {
    # RFC 8439 section 2.8.2, "Example and Test Vector for AEAD_CHACHA20_POLY1305".
    # Nonce = 32-bit fixed-common part (07 00 00 00) || IV (40 41 42 43 44 45 46 47).
    "rfc8439-2.8.2": AeadVector(
        key=h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
        nonce=h("07000000 4041424344454647"),
        plaintext=h(
            """
            4c616469657320616e642047656e746c656d656e206f662074686520636c6173
            73206f66202739393a204966204920636f756c64206f6666657220796f75206f
            6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73
            637265656e20776f756c642062652069742e
            """
        ),
        aad=h("50515253c0c1c2c3c4c5c6c7"),
        ciphertext=h(
            """
            d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
            3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
            92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
            3ff4def08e4b7a9de576d26586cec64b6116
            """
        ),
        tag=h("1ae10b594f09e26a7e902ecbd0600691"),
    ),
    # RFC 8439 appendix A.5, "ChaCha20-Poly1305 AEAD Decryption".
    "rfc8439-A.5": AeadVector(
        key=h("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0"),
        nonce=h("000000000102030405060708"),
        plaintext=h(
            """
            496e7465726e65742d4472616674732061726520647261667420646f63756d65
            6e74732076616c696420666f722061206d6178696d756d206f6620736978206d
            6f6e74687320616e64206d617920626520757064617465642c207265706c6163
            65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65
            6e747320617420616e792074696d652e20497420697320696e617070726f7072
            6961746520746f2075736520496e7465726e65742d4472616674732061732072
            65666572656e6365206d6174657269616c206f7220746f206369746520746865
            6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67
            726573732e2fe2809d
            """
        ),
        aad=h("f33388860000000000004e91"),
        ciphertext=h(
            """
            64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
            4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
            332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
            9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
            b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
            af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
            0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
            49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
            a6ad5cb4022b02709b
            """
        ),
        tag=h("eead9d67890cbb22392336fea1851f38"),
    ),
}


@pytest.mark.parametrize("vec", list(CHACHA_VECTORS.values()), ids=list(CHACHA_VECTORS))
def test_chacha20poly1305_encrypt(vec: AeadVector) -> None:
    out = p.chacha20poly1305_encrypt(vec.key, vec.nonce, vec.plaintext, vec.aad)
    assert out == vec.ciphertext + vec.tag


@pytest.mark.parametrize("vec", list(CHACHA_VECTORS.values()), ids=list(CHACHA_VECTORS))
def test_chacha20poly1305_decrypt(vec: AeadVector) -> None:
    out = p.chacha20poly1305_decrypt(vec.key, vec.nonce, vec.ciphertext + vec.tag, vec.aad)
    assert out == vec.plaintext


@pytest.mark.parametrize(("vec", "field"), tamper_cases(CHACHA_VECTORS))
def test_chacha20poly1305_rejects_tampering(vec: AeadVector, field: str) -> None:
    sealed, aad = tampered(vec, field)
    with pytest.raises(InvalidTag):
        p.chacha20poly1305_decrypt(vec.key, vec.nonce, sealed, aad)


# ---------------------------------------------------------------------------------------------
# AES-256-GCM -- McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)" (the GCM spec
# submitted to NIST), Appendix B, test cases 13-18 (256-bit key). Case 17 uses a 64-bit IV and
# case 18 a 480-bit IV, both of which go through GHASH to form J0.
# ---------------------------------------------------------------------------------------------

_GCM_K0 = h("0000000000000000000000000000000000000000000000000000000000000000")
_GCM_K = h("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
_GCM_IV96 = h("cafebabefacedbaddecaf888")
_GCM_AAD = h("feedfacedeadbeeffeedfacedeadbeef abaddad2")
_GCM_P64 = h(
    """
    d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
    1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255
    """
)
_GCM_P60 = _GCM_P64[:60]  # cases 16-18 use the first 60 bytes of case 15's plaintext

GCM_VECTORS = {
    "gcm-tc13": AeadVector(
        key=_GCM_K0,
        nonce=h("000000000000000000000000"),
        plaintext=b"",
        aad=b"",
        ciphertext=b"",
        tag=h("530f8afbc74536b9a963b4f1c4cb738b"),
    ),
    "gcm-tc14": AeadVector(
        key=_GCM_K0,
        nonce=h("000000000000000000000000"),
        plaintext=h("00000000000000000000000000000000"),
        aad=b"",
        ciphertext=h("cea7403d4d606b6e074ec5d3baf39d18"),
        tag=h("d0d1c8a799996bf0265b98b5d48ab919"),
    ),
    "gcm-tc15": AeadVector(
        key=_GCM_K,
        nonce=_GCM_IV96,
        plaintext=_GCM_P64,
        aad=b"",
        ciphertext=h(
            """
            522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
            8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662898015ad
            """
        ),
        tag=h("b094dac5d93471bdec1a502270e3cc6c"),
    ),
    "gcm-tc16": AeadVector(
        key=_GCM_K,
        nonce=_GCM_IV96,
        plaintext=_GCM_P60,
        aad=_GCM_AAD,
        ciphertext=h(
            """
            522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
            8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662
            """
        ),
        tag=h("76fc6ece0f4e1768cddf8853bb2d551b"),
    ),
    "gcm-tc17": AeadVector(
        key=_GCM_K,
        nonce=h("cafebabefacedbad"),
        plaintext=_GCM_P60,
        aad=_GCM_AAD,
        ciphertext=h(
            """
            c3762df1ca787d32ae47c13bf19844cb af1ae14d0b976afac52ff7d79bba9de0
            feb582d33934a4f0954cc2363bc73f78 62ac430e64abe499f47c9b1f
            """
        ),
        tag=h("3a337dbf46a792c45e454913fe2ea8f2"),
    ),
    "gcm-tc18": AeadVector(
        key=_GCM_K,
        nonce=h(
            """
            9313225df88406e555909c5aff5269aa 6a7a9538534f7da1e4c303d2a318a728
            c3c0c95156809539fcf0e2429a6b5254 16aedbf5a0de6a57a637b39b
            """
        ),
        plaintext=_GCM_P60,
        aad=_GCM_AAD,
        ciphertext=h(
            """
            5a8def2f0c9e53f1f75d7853659e2a20 eeb2b22aafde6419a058ab4f6f746bf4
            0fc0c3b780f244452da3ebf1c5d82cde a2418997200ef82e44ae7e3f
            """
        ),
        tag=h("a44a8266ee1c8eb0c8b5d4cf5ae9f19a"),
    ),
}


@pytest.mark.parametrize("vec", list(GCM_VECTORS.values()), ids=list(GCM_VECTORS))
def test_aes256gcm_encrypt(vec: AeadVector) -> None:
    out = p.aes256gcm_encrypt(vec.key, vec.nonce, vec.plaintext, vec.aad)
    assert out == vec.ciphertext + vec.tag


@pytest.mark.parametrize("vec", list(GCM_VECTORS.values()), ids=list(GCM_VECTORS))
def test_aes256gcm_decrypt(vec: AeadVector) -> None:
    out = p.aes256gcm_decrypt(vec.key, vec.nonce, vec.ciphertext + vec.tag, vec.aad)
    assert out == vec.plaintext


@pytest.mark.parametrize(("vec", "field"), tamper_cases(GCM_VECTORS))
def test_aes256gcm_rejects_tampering(vec: AeadVector, field: str) -> None:
    sealed, aad = tampered(vec, field)
    with pytest.raises(InvalidTag):
        p.aes256gcm_decrypt(vec.key, vec.nonce, sealed, aad)


# ---------------------------------------------------------------------------------------------
# XAES-256-GCM -- C2SP XAES-256-GCM (c2sp.org/XAES-256-GCM), "Test vectors": the two vectors
# (MSB(L) = 0 and MSB(L) = 1) with their derived keys, and the accumulated randomized test of
# 10 000 iterations. The envelope's 0x03 algorithm is this construction.
# ---------------------------------------------------------------------------------------------

XAES_VECTORS = {
    "c2sp-msb0": (
        AeadVector(
            key=h("0101010101010101010101010101010101010101010101010101010101010101"),
            nonce=b"ABCDEFGHIJKLMNOPQRSTUVWX",
            plaintext=b"XAES-256-GCM",
            aad=b"",
            ciphertext=h("ce546ef63c9cc60765923609"),
            tag=h("b33a9a1974e96e52daf2fcf7075e2271"),
        ),
        h("c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b"),
    ),
    "c2sp-msb1": (
        AeadVector(
            key=h("0303030303030303030303030303030303030303030303030303030303030303"),
            nonce=b"ABCDEFGHIJKLMNOPQRSTUVWX",
            plaintext=b"XAES-256-GCM",
            aad=b"c2sp.org/XAES-256-GCM",
            ciphertext=h("986ec1832593df5443a17943"),
            tag=h("7fd083bf3fdb41abd740a21f71eb769d"),
        ),
        h("e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8"),
    ),
}
XAES_AEAD = {name: vec for name, (vec, _) in XAES_VECTORS.items()}


def xaes_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(XaesKdf(key).key(nonce[:12])).encrypt(nonce[12:], plaintext, aad)


def xaes_open(key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(XaesKdf(key).key(nonce[:12])).decrypt(nonce[12:], sealed, aad)


@pytest.mark.parametrize("name", list(XAES_VECTORS))
def test_xaes256gcm_derived_key(name: str) -> None:
    vec, derived = XAES_VECTORS[name]
    assert XaesKdf(vec.key).key(vec.nonce[:12]) == derived


@pytest.mark.parametrize("vec", list(XAES_AEAD.values()), ids=list(XAES_AEAD))
def test_xaes256gcm_encrypt(vec: AeadVector) -> None:
    assert xaes_seal(vec.key, vec.nonce, vec.plaintext, vec.aad) == vec.ciphertext + vec.tag


@pytest.mark.parametrize("vec", list(XAES_AEAD.values()), ids=list(XAES_AEAD))
def test_xaes256gcm_decrypt(vec: AeadVector) -> None:
    assert xaes_open(vec.key, vec.nonce, vec.ciphertext + vec.tag, vec.aad) == vec.plaintext


@pytest.mark.parametrize(("vec", "field"), tamper_cases(XAES_AEAD))
def test_xaes256gcm_rejects_tampering(vec: AeadVector, field: str) -> None:
    sealed, aad = tampered(vec, field)
    with pytest.raises(InvalidTag):
        xaes_open(vec.key, vec.nonce, sealed, aad)
    with pytest.raises(InvalidTag):  # either half of the nonce
        xaes_open(vec.key, flip(vec.nonce, 0), vec.ciphertext + vec.tag, vec.aad)
    with pytest.raises(InvalidTag):
        xaes_open(vec.key, flip(vec.nonce, 23), vec.ciphertext + vec.tag, vec.aad)


def test_xaes256gcm_accumulated_10000() -> None:
    """Keys, nonces, plaintexts and additional data read in turn from one SHAKE-128 stream
    of the empty input (lengths as one byte, RFC 8446 ``<0..255>``); the ciphertexts are
    hashed by a second SHAKE-128."""
    iterations = 10_000
    stream = hashlib.shake_128(b"").digest(iterations * (32 + 24 + 1 + 255 + 1 + 255))
    assert stream[:16] == h("7f9c2ba4e88f827d616045507605853e")
    pos = 0

    def read(size: int) -> bytes:
        nonlocal pos
        pos += size
        return stream[pos - size : pos]

    digest = hashlib.shake_128()
    for _ in range(iterations):
        key, nonce = read(32), read(24)
        plaintext = read(read(1)[0])
        aad = read(read(1)[0])
        digest.update(xaes_seal(key, nonce, plaintext, aad))
    assert digest.digest(32) == h(
        "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939"
    )


# ---------------------------------------------------------------------------------------------
# PBKDF2-HMAC-SHA1 -- RFC 6070 section 2 (all six vectors; the c=16777216 one is slow).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "salt", "iterations", "expected"),
    [
        pytest.param(
            b"password", b"salt", 1, h("0c60c80f961f0e71f3a9b524af6012062fe037a6"), id="c=1"
        ),
        pytest.param(
            b"password", b"salt", 2, h("ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"), id="c=2"
        ),
        pytest.param(
            b"password", b"salt", 4096, h("4b007901b765489abead49d926f721d065a429c1"), id="c=4096"
        ),
        pytest.param(
            b"password",
            b"salt",
            16777216,
            h("eefe3d61cd4da4e4e9945b3d6ba2158c2634e984"),
            id="c=16777216",
            marks=slow,
        ),
        pytest.param(
            b"passwordPASSWORDpassword",
            b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
            4096,
            h("3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"),
            id="long-password-dkLen=25",
        ),
        pytest.param(
            b"pass\0word",
            b"sa\0lt",
            4096,
            h("56fa6aa75548099dcc37d7f03425e0c3"),
            id="embedded-NUL-dkLen=16",
        ),
    ],
)
def test_pbkdf2_sha1_rfc6070(
    password: bytes, salt: bytes, iterations: int, expected: bytes
) -> None:
    assert p.pbkdf2_sha1(password, salt, iterations, len(expected)) == expected


# ---------------------------------------------------------------------------------------------
# PBKDF2-HMAC-SHA256 -- RFC 7914 section 11.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "salt", "iterations", "expected"),
    [
        pytest.param(
            b"passwd",
            b"salt",
            1,
            h(
                """
                55ac046e56e3089fec1691c22544b605 f94185216dde0465e68b9d57c20dacbc
                49ca9cccf179b645991664b39d77ef31 7c71b845b1e30bd509112041d3a19783
                """
            ),
            id="passwd-c=1",
        ),
        pytest.param(
            b"Password",
            b"NaCl",
            80000,
            h(
                """
                4ddcd8f60b98be21830cee5ef22701f9 641a4418d04c0414aeff08876b34ab56
                a1d425a1225833549adb841b51c9b317 6a272bdebba1d078478f62b397f33c8d
                """
            ),
            id="Password-c=80000",
        ),
    ],
)
def test_pbkdf2_sha256_rfc7914(
    password: bytes, salt: bytes, iterations: int, expected: bytes
) -> None:
    assert p.pbkdf2_sha256(password, salt, iterations, len(expected)) == expected


# ---------------------------------------------------------------------------------------------
# scrypt -- RFC 7914 section 12 (the N=1048576 vector needs ~1 GiB and is slow).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "salt", "n", "r", "p_", "expected"),
    [
        pytest.param(
            b"",
            b"",
            16,
            1,
            1,
            h(
                """
                77d6576238657b203b19ca42c18a0497 f16b4844e3074ae8dfdffa3fede21442
                fcd0069ded0948f8326a753a0fc81f17 e8d3e0fb2e0d3628cf35e20c38d18906
                """
            ),
            id="empty-N=16-r=1-p=1",
        ),
        pytest.param(
            b"password",
            b"NaCl",
            1024,
            8,
            16,
            h(
                """
                fdbabe1c9d3472007856e7190d01e9fe 7c6ad7cbc8237830e77376634b373162
                2eaf30d92e22a3886ff109279d9830da c727afb94a83ee6d8360cbdfa2cc0640
                """
            ),
            id="password-N=1024-r=8-p=16",
        ),
        pytest.param(
            b"pleaseletmein",
            b"SodiumChloride",
            16384,
            8,
            1,
            h(
                """
                7023bdcb3afd7348461c06cd81fd38eb fda8fbba904f8e3ea9b543f6545da1f2
                d5432955613f0fcf62d49705242a9af9 e61e85dc0d651e40dfcf017b45575887
                """
            ),
            id="pleaseletmein-N=16384-r=8-p=1",
        ),
        pytest.param(
            b"pleaseletmein",
            b"SodiumChloride",
            1048576,
            8,
            1,
            h(
                """
                2101cb9b6a511aaeaddbbe09cf70f881 ec568d574a2ffd4dabe5ee9820adaa47
                8e56fd8f4ba5d09ffa1c6d927c40f4c3 37304049e8a952fbcbf45c6fa77a41a4
                """
            ),
            id="pleaseletmein-N=1048576-r=8-p=1",
            marks=slow,
        ),
    ],
)
def test_scrypt_rfc7914(
    password: bytes, salt: bytes, n: int, r: int, p_: int, expected: bytes
) -> None:
    assert p.scrypt(password, salt, n=n, r=r, p=p_, length=len(expected)) == expected


# ---------------------------------------------------------------------------------------------
# HKDF-SHA256 -- RFC 5869 appendix A.1-A.3 (test cases 1-3).
# ---------------------------------------------------------------------------------------------

_HKDF_TC3_OKM = h(
    """
    8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d
    9d201395faa4b61a96c8
    """
)


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "expected"),
    [
        pytest.param(
            h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            h("000102030405060708090a0b0c"),
            h("f0f1f2f3f4f5f6f7f8f9"),
            h(
                """
                3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf
                34007208d5b887185865
                """
            ),
            id="A.1-basic",
        ),
        pytest.param(
            h(
                """
                000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
                202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
                404142434445464748494a4b4c4d4e4f
                """
            ),
            h(
                """
                606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f
                808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f
                a0a1a2a3a4a5a6a7a8a9aaabacadaeaf
                """
            ),
            h(
                """
                b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf
                d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef
                f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff
                """
            ),
            h(
                """
                b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c
                59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71
                cc30c58179ec3e87c14c01d5c1f3434f1d87
                """
            ),
            id="A.2-long-inputs",
        ),
        pytest.param(
            h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            b"",
            b"",
            _HKDF_TC3_OKM,
            id="A.3-empty-salt-and-info",
        ),
    ],
)
def test_hkdf_sha256_rfc5869(ikm: bytes, salt: bytes, info: bytes, expected: bytes) -> None:
    assert p.hkdf_sha256(ikm, salt=salt, info=info, length=len(expected)) == expected


def test_hkdf_sha256_absent_salt_is_hashlen_zeros() -> None:
    # RFC 5869 section 2.2: an absent salt is HashLen zero octets, so salt=None must reproduce
    # test case 3 (A.3), whose salt is the empty string.
    ikm = h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b")
    assert p.hkdf_sha256(ikm, salt=None, info=b"", length=42) == _HKDF_TC3_OKM
    assert p.hkdf_sha256(ikm, salt=bytes(32), info=b"", length=42) == _HKDF_TC3_OKM
