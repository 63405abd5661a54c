"""Behaviour of the AEAD envelope and the key ring (:mod:`secure_mw.crypto`).

The envelope's promise is that every way a ciphertext can be wrong — a changed byte or
character, a wrong key, wrong associated data, truncation, oversize, non-canonical or
non-base64 text, a value of the wrong type — raises :class:`DecryptError` and nothing else.
The layout checks decrypt envelopes independently with libsodium and ``cryptography``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium

from secure_mw.crypto import PBKDF2_ITERATIONS, KeyRing, b64decode, b64encode, derive_master_key
from secure_mw.crypto import envelope as envelope_mod
from secure_mw.crypto import keyring as keyring_mod
from secure_mw.crypto.envelope import DEFAULT_MAX_TOKEN, SymmetricKey, XaesKdf
from secure_mw.errors import ConfigError, DecryptError, KeyNotFound

XCHACHA = "xchacha20-poly1305"
AESGCM_ALG = "aes-256-gcm"
ALGS = [XCHACHA, AESGCM_ALG]
ALG_BYTE = {XCHACHA: 0x01, AESGCM_ALG: 0x03}
#: algorithm byte + key id + nonce + tag (XAES-256-GCM's nonce is 24 bytes too)
OVERHEAD = {XCHACHA: 1 + 4 + 24 + 16, AESGCM_ALG: 1 + 4 + 24 + 16}
HEADER = {XCHACHA: 1 + 4 + 24, AESGCM_ALG: 1 + 4 + 24}
GCM_INFO = b"secure_mw/v1/aes-256-gcm entry key"
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
AAD = b"cookie:secure_mw_session"
FUZZ = settings(max_examples=300, deadline=None)


def kid_of(key: bytes) -> bytes:
    return hmac.digest(key, b"secure_mw/v1/key id", hashlib.sha256)[:4]


FUZZ_KEY = os.urandom(32)
FUZZ_KID = kid_of(FUZZ_KEY)
FUZZ_RING = KeyRing([FUZZ_KEY])
FUZZ_RING_GCM = KeyRing([FUZZ_KEY], algorithm=AESGCM_ALG)


def not_rejected(call: Callable[[], object]) -> bool:
    """True when ``call`` returns normally; False when it raises DecryptError.

    Any other exception propagates, so the test errors out and names it."""
    try:
        call()
    except DecryptError:
        return False
    return True


def write_mode(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


@pytest.fixture(params=ALGS)
def alg(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def ring(alg: str, key: bytes) -> KeyRing:
    return KeyRing([key], algorithm=alg)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 200, 4096, 1 << 20])
def test_binary_round_trip(ring: KeyRing, size: int) -> None:
    data = os.urandom(size)
    blob = ring.encrypt_bytes(data, AAD)
    out = ring.decrypt_bytes(blob, AAD)
    assert out == data
    assert type(out) is bytes
    if size >= 16:
        assert data not in blob


@pytest.mark.parametrize("size", [0, 1, 2, 3, 200, 4096, 512 * 1024])
def test_text_round_trip(ring: KeyRing, alg: str, size: int) -> None:
    data = os.urandom(size)
    token = ring.encrypt(data, AAD)
    assert isinstance(token, str)
    assert set(token) <= set(B64URL), "text form is unpadded base64url"
    blob_len = size + OVERHEAD[alg]
    assert len(token) == (4 * blob_len + 2) // 3
    assert ring.decrypt(token, AAD) == data
    # the text decoder also takes bytes
    assert ring.decrypt(token.encode("ascii"), AAD) == data
    assert ring.decrypt(bytearray(token.encode("ascii")), AAD) == data


def test_default_aad_is_empty_and_distinct_from_any_other(ring: KeyRing) -> None:
    token = ring.encrypt(b"data")
    assert ring.decrypt(token) == b"data"
    assert ring.decrypt(token, b"") == b"data"
    with pytest.raises(DecryptError):
        ring.decrypt(token, b"\x00")


def test_generate_gives_a_working_ring_per_algorithm(alg: str) -> None:
    a, b = KeyRing.generate(algorithm=alg), KeyRing.generate(algorithm=alg)
    assert a.key_ids != b.key_ids
    assert a.encrypt_bytes(b"x")[0] == ALG_BYTE[alg]
    assert a.decrypt(a.encrypt(b"x", AAD), AAD) == b"x"
    with pytest.raises(KeyNotFound):
        b.decrypt(a.encrypt(b"x", AAD), AAD)


# -- layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 100])
def test_envelope_overhead_and_header(alg: str, key: bytes, size: int) -> None:
    ring = KeyRing([key], algorithm=alg)
    blob = ring.encrypt_bytes(os.urandom(size), AAD)
    assert len(blob) == size + OVERHEAD[alg]
    assert OVERHEAD == {XCHACHA: 45, AESGCM_ALG: 45}
    assert blob[0] == ALG_BYTE[alg]
    assert blob[1:5] == kid_of(key)
    assert ring.key_ids == (kid_of(key).hex(),)


def test_xchacha_layout_decrypts_with_libsodium(key: bytes) -> None:
    ring = KeyRing([key], algorithm=XCHACHA)
    data = os.urandom(100)
    blob = ring.encrypt_bytes(data, AAD)
    header = blob[:29]
    out = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(blob[29:], header + AAD,
                                                            blob[5:29], key)
    assert out == data


def xaes_subkey(key: bytes, n1: bytes) -> bytes:
    """XAES-256-GCM's derived key computed independently of the envelope: the NIST SP
    800-108r1 counter KDF with the library's AES-256-CMAC (label "X", context N1)."""
    out = b""
    for counter in (1, 2):
        mac = CMAC(algorithms.AES(key))
        mac.update(counter.to_bytes(2, "big") + b"X\x00" + n1)
        out += mac.finalize()
    return out


def test_xaes_layout_decrypts_with_an_independent_cmac_kdf(key: bytes) -> None:
    ring = KeyRing([key], algorithm=AESGCM_ALG)
    data = os.urandom(100)
    blob = ring.encrypt_bytes(data, AAD)
    header, n1, n2, body = blob[:29], blob[5:17], blob[17:29], blob[29:]
    # the master key itself does not decrypt the body ...
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(n2, body, header + AAD)
    # ... the key derived from the master key and the first half of the nonce does
    assert AESGCM(xaes_subkey(key, n1)).decrypt(n2, body, header + AAD) == data
    assert XaesKdf(key).key(n1) == xaes_subkey(key, n1)


def test_xaes_one_derived_key_per_batch_with_random_gcm_nonces(
    key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sealing key keeps one N1 (one derived key) for XAES_BATCH entries, each with a
    random N2, then draws a new N1: no derived key sees more than XAES_BATCH nonces."""
    monkeypatch.setattr(envelope_mod, "XAES_BATCH", 4)
    ring = KeyRing([key], algorithm=AESGCM_ALG)
    blobs = [ring.encrypt_bytes(b"same", AAD) for _ in range(12)]
    n1s = [b[5:17] for b in blobs]
    assert [n1s.count(n) for n in dict.fromkeys(n1s)] == [4, 4, 4]
    assert len(set(n1s)) == 3
    assert len({b[17:29] for b in blobs}) == 12
    # every entry still opens, in a ring that has never seen its N1 too
    cold = KeyRing([key], algorithm=AESGCM_ALG)
    assert all(cold.decrypt_bytes(b, AAD) == b"same" for b in blobs)
    assert all(ring.decrypt_bytes(b, AAD) == b"same" for b in blobs)


def test_xaes_open_cache_is_bounded_and_holds_only_authentic_entries(key: bytes) -> None:
    ring = KeyRing([key], algorithm=AESGCM_ALG)
    cache = ring._xaes._cache  # type: ignore[union-attr]
    other = SymmetricKey(key)
    forged = 0
    for _ in range(3 * envelope_mod._XAES_CACHE):
        blob = bytearray(other.seal(b"x", AAD, envelope_mod.ALG_XAES256GCM))
        other._xaes._new_epoch()  # type: ignore[union-attr]
        assert ring.decrypt_bytes(bytes(blob), AAD) == b"x"
        blob[5] ^= 1  # another N1: a derived key no one sealed with
        with pytest.raises(DecryptError):
            ring.decrypt_bytes(bytes(blob), AAD)
        forged += bytes(blob[:17]) in cache
    assert len(cache) <= envelope_mod._XAES_CACHE
    assert forged == 0


def test_xaes_from_many_threads_across_batches(
    key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads seal and open at once while batches turn over and the cache evicts."""
    monkeypatch.setattr(envelope_mod, "XAES_BATCH", 3)
    ring = KeyRing([key], algorithm=AESGCM_ALG)
    cold = KeyRing([key], algorithm=AESGCM_ALG)

    def work(n: int) -> list[bytes]:
        blobs = [ring.encrypt_bytes(b"%d-%d" % (n, i), AAD) for i in range(400)]
        assert [ring.decrypt_bytes(b, AAD) for b in blobs] == [b"%d-%d" % (n, i)
                                                              for i in range(400)]
        assert [cold.decrypt_bytes(b, AAD) for b in blobs[::7]] == [b"%d-%d" % (n, i)
                                                                   for i in range(0, 400, 7)]
        return blobs

    with ThreadPoolExecutor(max_workers=8) as pool:
        blobs = [b for part in pool.map(work, range(8)) for b in part]
    assert len({b[5:29] for b in blobs}) == len(blobs) == 3200
    n1s = [b[5:17] for b in blobs]
    assert max(n1s.count(n) for n in set(n1s)) <= 3 + 8  # a batch, plus racing threads


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_xaes_forked_process_draws_its_own_batch(key: bytes) -> None:
    ring = KeyRing([key], algorithm=AESGCM_ALG)
    parent_n1 = ring.encrypt_bytes(b"x", AAD)[5:17]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the N1 it seals with, then leave at once
        try:
            os.write(write_end, ring.encrypt_bytes(b"x", AAD)[5:17])
        finally:
            os._exit(0)
    os.close(write_end)
    child_n1 = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_n1) == 12
    assert child_n1 != parent_n1
    assert ring.encrypt_bytes(b"x", AAD)[5:17] == parent_n1  # the parent's batch goes on


def test_legacy_aes_gcm_entry_key_is_hkdf_of_master_and_salt(key: bytes) -> None:
    sym = SymmetricKey(key)
    data = os.urandom(100)
    blob = sym.seal(data, AAD, envelope_mod.ALG_AES256GCM)
    assert blob[0] == 0x02 and len(blob) == 100 + 49
    header, salt, nonce, body = blob[:33], blob[5:21], blob[21:33], blob[33:]
    # the master key itself does not decrypt the body ...
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(nonce, body, header + AAD)
    # ... the per-entry key HKDF-SHA256(master, salt, info) does
    entry = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=GCM_INFO).derive(key)
    assert entry != key
    assert AESGCM(entry).decrypt(nonce, body, header + AAD) == data
    assert KeyRing([key], algorithm=AESGCM_ALG).decrypt_bytes(blob, AAD) == data


#: 0x02 envelopes written by the code before XAES-256-GCM (secure_mw at d35b4c9), under
#: the key bytes(range(32)): (aad, plaintext, envelope hex or text token).
LEGACY_KEY = bytes(range(32))
LEGACY_0X02 = [
    (b"", b"", "02a0f08ed2453b1927b388b7afa74466ef0c2f0845d776c2e2b62dc8890bc85ffe8f94cfc832"
               "7b80c238167e19de63fe95"),
    (b"cookie:secure_mw_session", b'session {"uid": 7}',
     "02a0f08ed2c85fcc6cf912608ed17049b3054e7ae41d23fbc5e43f96abcbf0c11882f39afbcfa326bd70"
     "8f09139225bd7c5ea6f43cfde1a8c38072012ff540d2ca3b91"),
]
LEGACY_0X02_TEXT = (b"totp:alice", b"totp secret",
                    "AqDwjtJE8_kCxDsT84Xnn85mM3HtXfpHqA2Hw86ebp3ki5iv_bM19DT6UFkN99qz_CcY8it_Z8e8y9Mu")


@pytest.mark.parametrize("alg", ALGS)
def test_envelopes_written_before_xaes_still_open(alg: str) -> None:
    ring = KeyRing([LEGACY_KEY], algorithm=alg)
    for aad, plain, hexed in LEGACY_0X02:
        blob = bytes.fromhex(hexed)
        assert ring.decrypt_bytes(blob, aad) == plain
        assert ring.needs_reencrypt_bytes(blob)
        with pytest.raises(DecryptError):
            ring.decrypt_bytes(blob, aad + b"!")
        for cut in (1, 16, len(blob) - 33):
            with pytest.raises(DecryptError):
                ring.decrypt_bytes(blob[:-cut], aad)
        for i in (0, 5, 21, 33, len(blob) - 1):
            bad = bytearray(blob)
            bad[i] ^= 0x01
            with pytest.raises(DecryptError):
                ring.decrypt_bytes(bytes(bad), aad)
        with pytest.raises(KeyNotFound):
            KeyRing.generate(algorithm=alg).decrypt_bytes(blob, aad)
        other = os.urandom(32)  # another key under this key's id: found, must not open
        with pytest.raises(DecryptError):
            SymmetricKey(other).open(blob, aad)
    aad, plain, token = LEGACY_0X02_TEXT
    assert ring.decrypt(token, aad) == plain
    assert ring.needs_reencrypt(token)
    moved = ring.reencrypt(token, aad)
    assert b64decode(moved)[0] == ALG_BYTE[alg]
    assert not ring.needs_reencrypt(moved)
    assert ring.decrypt(moved, aad) == plain


def test_same_plaintext_encrypts_differently(ring: KeyRing, alg: str) -> None:
    blobs = [ring.encrypt_bytes(b"same data", AAD) for _ in range(32)]
    assert len(set(blobs)) == 32
    assert len({b[5 : HEADER[alg]] for b in blobs}) == 32, "nonce (and salt) are random"
    assert ring.encrypt(b"same data", AAD) != ring.encrypt(b"same data", AAD)


# -- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 33])
def test_every_changed_byte_is_rejected(ring: KeyRing, size: int) -> None:
    blob = ring.encrypt_bytes(os.urandom(size), AAD)
    accepted = []
    for i in range(len(blob)):
        for mask in (0x01, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            if not_rejected(lambda b=bytes(bad): ring.decrypt_bytes(b, AAD)):
                accepted.append((i, mask))
    assert accepted == []
    assert ring.decrypt_bytes(blob, AAD) is not None


@pytest.mark.parametrize("size", [0, 1, 2, 40])  # the three base64 tail lengths, and more
def test_every_changed_character_is_rejected(ring: KeyRing, size: int) -> None:
    token = ring.encrypt(os.urandom(size), AAD)
    accepted = []
    for i, original in enumerate(token):
        for c in B64URL:
            if c == original:
                continue
            bad = token[:i] + c + token[i + 1 :]
            if not_rejected(lambda t=bad: ring.decrypt(t, AAD)):
                accepted.append((i, c))
    assert accepted == []


def test_non_canonical_trailing_bits_are_refused() -> None:
    assert b64encode(b"\x00") == "AA"
    assert base64.urlsafe_b64decode("AB==") == b"\x00"  # a lax decoder accepts it
    for text in ("AB", "AP", "AAB", "AAD"):
        with pytest.raises(DecryptError):
            b64decode(text)
    assert b64decode("AAA") == b"\x00\x00"


@given(st.binary(max_size=64), st.data())
@FUZZ
def test_b64_changed_character_never_decodes_to_the_same_bytes(data: bytes,
                                                               draw: st.DataObject) -> None:
    text = b64encode(data)
    assert text == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    assert b64decode(text) == data
    if not text:
        return
    i = draw.draw(st.integers(0, len(text) - 1))
    c = draw.draw(st.sampled_from(B64URL).filter(lambda ch: ch != text[i]))
    try:
        out = b64decode(text[:i] + c + text[i + 1 :])
    except DecryptError:
        return
    assert out != data


def test_algorithm_byte_is_authenticated(key: bytes) -> None:
    data = os.urandom(64)
    for alg in ALGS:
        blob = KeyRing([key], algorithm=alg).encrypt_bytes(data, AAD)
        for other in (0x00, 0x01, 0x02, 0x03, 0x80, 0xFF):
            if other == blob[0]:
                continue
            bad = bytes([other]) + blob[1:]
            for reader_alg in ALGS:
                reader = KeyRing([key], algorithm=reader_alg)
                with pytest.raises(DecryptError):
                    reader.decrypt_bytes(bad, AAD)
                with pytest.raises(DecryptError):
                    reader.decrypt(b64encode(bad), AAD)


def test_key_id_is_authenticated(alg: str) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    ring = KeyRing([k1, k2], algorithm=alg)
    blob = ring.encrypt_bytes(b"secret", AAD)
    assert blob[1:5] == kid_of(k1)
    # point the header at the other key in the ring: found, but it must not open
    swapped = blob[:1] + kid_of(k2) + blob[5:]
    with pytest.raises(DecryptError):
        ring.decrypt_bytes(swapped, AAD)
    # and a ring holding k1 under the same id does not accept a different id either
    with pytest.raises(KeyNotFound):
        KeyRing([k1], algorithm=alg).decrypt_bytes(swapped, AAD)


def test_wrong_key_is_rejected(ring: KeyRing, alg: str) -> None:
    other = KeyRing.generate(algorithm=alg)
    token = ring.encrypt(b"data", AAD)
    with pytest.raises(KeyNotFound):
        other.decrypt(token, AAD)
    with pytest.raises(DecryptError):  # KeyNotFound is a DecryptError
        other.decrypt_bytes(ring.encrypt_bytes(b"data", AAD), AAD)
    assert issubclass(KeyNotFound, DecryptError)


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        (b"cookie:a", b"cookie:b"),
        (b"cookie:a", b"cookie:ab"),
        (b"cookie:a", b"cookie:"),
        (b"", b"x"),
        (b"store:session:1234", b"store:session:1235"),
    ],
)
def test_wrong_associated_data_is_rejected(ring: KeyRing, good: bytes, bad: bytes) -> None:
    token = ring.encrypt(b"data", good)
    blob = ring.encrypt_bytes(b"data", good)
    assert ring.decrypt(token, good) == b"data"
    with pytest.raises(DecryptError):
        ring.decrypt(token, bad)
    with pytest.raises(DecryptError):
        ring.decrypt_bytes(blob, bad)


def test_aad_must_be_bytes(ring: KeyRing) -> None:
    token = ring.encrypt(b"data", AAD)
    with pytest.raises(TypeError):
        ring.decrypt(token, AAD.decode())  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 20])
def test_truncation_at_every_length_is_rejected(ring: KeyRing, size: int) -> None:
    data = os.urandom(size)
    blob = ring.encrypt_bytes(data, AAD)
    token = ring.encrypt(data, AAD)
    assert [n for n in range(len(blob))
            if not_rejected(lambda n=n: ring.decrypt_bytes(blob[:n], AAD))] == []
    assert [n for n in range(len(token))
            if not_rejected(lambda n=n: ring.decrypt(token[:n], AAD))] == []
    # extension is refused too
    with pytest.raises(DecryptError):
        ring.decrypt_bytes(blob + b"\x00", AAD)
    with pytest.raises(DecryptError):
        ring.decrypt(token + "A", AAD)
    with pytest.raises(DecryptError):
        ring.decrypt(token + "AAAA", AAD)


# -- size limit ----------------------------------------------------------------------------


def test_oversize_token_is_refused_before_decoding(alg: str, key: bytes) -> None:
    ring = KeyRing([key], algorithm=alg, max_token=100)
    small = ring.encrypt(b"x" * 10, AAD)
    big = ring.encrypt(b"x" * 100, AAD)
    assert len(small) <= 100 < len(big)
    assert ring.decrypt(small, AAD) == b"x" * 10
    for token in (big, big.encode("ascii")):
        with pytest.raises(DecryptError) as err:
            ring.decrypt(token, AAD)
        assert err.value.reason == "token too long"
    with pytest.raises(DecryptError):
        ring.needs_reencrypt(big)
    # the length is checked before anything is decoded: garbage of that size says so too
    with pytest.raises(DecryptError) as err:
        ring.decrypt("!" * 101, AAD)
    assert err.value.reason == "token too long"
    with pytest.raises(DecryptError) as err:
        ring.decrypt("é" * 101, AAD)
    assert err.value.reason == "token too long"


def test_token_of_exactly_max_token_is_accepted(key: bytes) -> None:
    token = KeyRing([key]).encrypt(b"payload", AAD)
    assert KeyRing([key], max_token=len(token)).decrypt(token, AAD) == b"payload"
    with pytest.raises(DecryptError):
        KeyRing([key], max_token=len(token) - 1).decrypt(token, AAD)


def test_default_max_token(ring: KeyRing) -> None:
    with pytest.raises(DecryptError) as err:
        ring.decrypt("A" * (DEFAULT_MAX_TOKEN + 1), AAD)
    assert err.value.reason == "token too long"


# -- malformed input -----------------------------------------------------------------------


def _token_with_dash_and_underscore(ring: KeyRing) -> str:
    for _ in range(1000):
        token = ring.encrypt(b"payload", AAD)
        if "-" in token and "_" in token:
            return token
    raise AssertionError("no token with both '-' and '_' in 1000 tries")


def test_malformed_text_is_rejected(ring: KeyRing) -> None:
    token = _token_with_dash_and_underscore(ring)
    blob = b64decode(token)
    assert ring.decrypt(token, AAD) == b"payload"
    padded = base64.urlsafe_b64encode(blob).decode("ascii")
    assert padded.endswith("="), "payload chosen so the padded form has padding"
    standard = base64.b64encode(blob).decode("ascii").rstrip("=")
    assert ("+" in standard) and ("/" in standard)
    bad_texts: list[object] = [
        "", "A", "not base64 at all!", "====", padded, token + "=", token + "==",
        standard, token.replace("-", "+"), token.replace("_", "/"),
        " " + token, token + " ", token + "\n", token[:10] + " " + token[10:],
        token[:10] + "\t" + token[10:], token[:-1] + "é", token[:-1] + "\u0660",
        "\uff54\uff4f\uff4b\uff45\uff4e", token[:5] + "\x00" + token[6:], "\ud800" + token,
        b"\xff" * 64, token.encode("ascii") + b"\xff", padded.encode("ascii"),
        None, 0, 1, 1.5, True, [], [token], (token,), {"t": token}, {token}, object(),
    ]
    for bad in bad_texts:
        with pytest.raises(DecryptError):
            ring.decrypt(bad, AAD)  # type: ignore[arg-type]
        # needs_reencrypt does not authenticate; it may say True, never False or crash
        with contextlib.suppress(DecryptError):
            assert ring.needs_reencrypt(bad) is True  # type: ignore[arg-type]


def test_malformed_binary_is_rejected(ring: KeyRing) -> None:
    blob = ring.encrypt_bytes(b"payload", AAD)
    for bad in (None, 0, [], "text", blob.decode("latin-1"), bytearray(blob), memoryview(blob),
                b"", b"\x01", b"\x01\x00\x00\x00", b"\x00" * 100):
        with pytest.raises(DecryptError):
            ring.decrypt_bytes(bad, AAD)  # type: ignore[arg-type]


@given(st.text(max_size=300))
@FUZZ
def test_fuzz_decrypt_text(text: str) -> None:
    with pytest.raises(DecryptError):
        FUZZ_RING.decrypt(text, AAD)
    with contextlib.suppress(DecryptError):
        assert FUZZ_RING.needs_reencrypt(text) is True


@given(st.text(alphabet=B64URL, max_size=300))
@FUZZ
def test_fuzz_decrypt_base64url_text(text: str) -> None:
    with pytest.raises(DecryptError):
        FUZZ_RING.decrypt(text, AAD)


@given(st.binary(max_size=300))
@FUZZ
def test_fuzz_decrypt_binary(blob: bytes) -> None:
    with pytest.raises(DecryptError):
        FUZZ_RING.decrypt_bytes(blob, AAD)
    with pytest.raises(DecryptError):
        FUZZ_RING.decrypt(blob, AAD)  # the text decoder on arbitrary bytes


@given(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0xFF]), st.binary(max_size=200))
@FUZZ
def test_fuzz_envelopes_with_a_known_key_id(alg_byte: int, rest: bytes) -> None:
    """Past the key-id lookup, into the AEAD code of both algorithms."""
    for ring in (FUZZ_RING, FUZZ_RING_GCM):
        blob = bytes([alg_byte]) + FUZZ_KID + rest
        with pytest.raises(DecryptError):
            ring.decrypt_bytes(blob, AAD)
        with pytest.raises(DecryptError):
            ring.decrypt(b64encode(blob), AAD)


@given(st.one_of(st.none(), st.integers(), st.floats(), st.booleans(),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(), st.text()),
                 st.text(), st.binary()))
@FUZZ
def test_fuzz_decrypt_any_value(value: object) -> None:
    with pytest.raises(DecryptError):
        FUZZ_RING.decrypt(value, AAD)  # type: ignore[arg-type]
    with pytest.raises(DecryptError):
        FUZZ_RING.decrypt_bytes(value, AAD)  # type: ignore[arg-type]


def test_error_messages_never_contain_the_token(ring: KeyRing) -> None:
    token = ring.encrypt(b"payload", AAD)
    for bad, aad in ((token, b"other"), (token[:-2] + "AA", AAD), (token + "!", AAD)):
        with pytest.raises(DecryptError) as err:
            ring.decrypt(bad, aad)
        assert token[:16] not in str(err.value)
        assert token[:16] not in repr(err.value)


# -- rotation ------------------------------------------------------------------------------


def test_rotation(alg: str) -> None:
    old, new = os.urandom(32), os.urandom(32)
    r_old = KeyRing([old], algorithm=alg)
    r_both = KeyRing([new, old], algorithm=alg)
    r_new = KeyRing([new], algorithm=alg)
    assert r_both.key_ids == (kid_of(new).hex(), kid_of(old).hex())

    t_old = r_old.encrypt(b"data", AAD)
    assert r_both.decrypt(t_old, AAD) == b"data"
    assert r_both.needs_reencrypt(t_old)
    assert not r_old.needs_reencrypt(t_old)
    with pytest.raises(KeyNotFound):
        r_new.decrypt(t_old, AAD)

    t_new = r_both.reencrypt(t_old, AAD)
    assert b64decode(t_new)[1:5] == kid_of(new)
    assert not r_both.needs_reencrypt(t_new)
    assert r_new.decrypt(t_new, AAD) == b"data"
    assert r_both.decrypt(t_new, AAD) == b"data"
    with pytest.raises(KeyNotFound):
        r_old.decrypt(t_new, AAD)

    # the first key encrypts
    assert r_both.encrypt_bytes(b"x")[1:5] == kid_of(new)
    assert not r_both.needs_reencrypt(r_both.encrypt(b"x"))
    # bytes tokens are accepted too
    assert r_both.needs_reencrypt(t_old.encode("ascii"))
    assert r_new.decrypt(r_both.reencrypt(t_old.encode("ascii"), AAD), AAD) == b"data"


def test_reencrypt_refuses_a_bad_token(ring: KeyRing) -> None:
    token = ring.encrypt(b"data", AAD)
    with pytest.raises(DecryptError):
        ring.reencrypt(token, b"other purpose")
    with pytest.raises(DecryptError):
        ring.reencrypt(token[:-1], AAD)


def test_algorithm_change_needs_reencrypt(key: bytes) -> None:
    r_x = KeyRing([key], algorithm=XCHACHA)
    r_g = KeyRing([key], algorithm=AESGCM_ALG)
    t_x = r_x.encrypt(b"data", AAD)
    assert r_g.decrypt(t_x, AAD) == b"data"  # the envelope names its algorithm
    assert r_g.needs_reencrypt(t_x)
    t_g = r_g.reencrypt(t_x, AAD)
    assert b64decode(t_g)[0] == 0x03
    assert not r_g.needs_reencrypt(t_g)
    assert r_x.needs_reencrypt(t_g)


def test_ring_construction_errors(key: bytes) -> None:
    with pytest.raises(ValueError, match="share key id"):
        KeyRing([key, key])
    with pytest.raises(ValueError, match="share key id"):
        KeyRing([os.urandom(32), key, SymmetricKey(key)])
    with pytest.raises(ValueError):
        KeyRing.from_strings([b64encode(key), b64encode(key)])
    with pytest.raises(ValueError):
        KeyRing([])
    with pytest.raises(ValueError):
        KeyRing([key], algorithm="aes-128-cbc")
    for bad_key in (b"", key[:31], key + b"\x00", key.hex()):
        with pytest.raises(ValueError):
            KeyRing([bad_key])  # type: ignore[list-item]


def test_repr_never_shows_key_material() -> None:
    keys = [os.urandom(32), os.urandom(32)]
    ring = KeyRing(keys, algorithm=AESGCM_ALG)
    shown = [repr(ring), str(ring), repr(SymmetricKey(keys[0])), str(SymmetricKey(keys[1]))]
    for k in keys:
        forms = [k.hex(), k.hex().upper(), b64encode(k), base64.b64encode(k).decode(), repr(k),
                 b64encode(k)[:12], k.hex()[8:24]]
        for text in shown:
            for form in forms:
                assert form not in text
    assert kid_of(keys[0]).hex() in repr(ring)
    assert "aes-256-gcm" in repr(ring)


# -- key files and key text ----------------------------------------------------------------


def test_new_key_text_round_trip() -> None:
    texts = {KeyRing.new_key_text() for _ in range(8)}
    assert len(texts) == 8
    for text in texts:
        assert len(text) == 43
        assert set(text) <= set(B64URL)
        raw = b64decode(text)
        assert len(raw) == 32
        ring = KeyRing.from_strings([text])
        assert ring.key_ids == (kid_of(raw).hex(),)
        assert KeyRing([raw]).decrypt(ring.encrypt(b"data", AAD), AAD) == b"data"


def test_key_file(tmp_path: Path, alg: str) -> None:
    k1, k2 = KeyRing.new_key_text(), KeyRing.new_key_text()
    path = write_mode(
        tmp_path / "keys",
        f"# secure_mw encryption keys, newest first\n\n   {k1}   \n\t\n  # retired\n{k2}\n\n",
        0o600,
    )
    ring = KeyRing.from_file(path, algorithm=alg)
    assert ring.key_ids == KeyRing.from_strings([k1, k2]).key_ids
    assert ring.encrypt_bytes(b"")[0] == ALG_BYTE[alg]
    old = KeyRing([b64decode(k2)], algorithm=alg).encrypt(b"data", AAD)
    assert ring.decrypt(old, AAD) == b"data"
    assert ring.needs_reencrypt(old)
    assert KeyRing.from_file(str(path)).key_ids == ring.key_ids  # str path too
    # owner-read-only is fine as well
    path.chmod(0o400)
    assert KeyRing.from_file(path).key_ids == ring.key_ids


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602])
def test_key_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_mode(tmp_path / "keys", KeyRing.new_key_text() + "\n", mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    with pytest.raises(ConfigError) as err:
        KeyRing.from_file(path)
    assert str(path) in str(err.value)
    assert f"{mode:04o}" in str(err.value)


def test_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "no-such-keys"
    with pytest.raises(ConfigError) as err:
        KeyRing.from_file(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "bad",
    ["not-a-key", "A" * 42, "A" * 44, b64encode(os.urandom(31)), b64encode(os.urandom(33)),
     base64.urlsafe_b64encode(os.urandom(32)).decode(),  # padded
     base64.b64encode(b"\xfb" * 32).decode().rstrip("="),  # '+' and '/'
     "ключ"],
)
def test_key_file_with_a_malformed_line(tmp_path: Path, bad: str) -> None:
    good = KeyRing.new_key_text()
    path = tmp_path / "keys"
    path.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        KeyRing.from_file(path)
    message = str(err.value)
    assert str(path) in message
    assert "line" in message
    assert bad not in message, "the bad line may be a secret: never echo it"
    assert good not in message


def test_key_file_error_names_the_file_line_number(tmp_path: Path) -> None:
    path = write_mode(
        tmp_path / "keys",
        f"# comment\n\n{KeyRing.new_key_text()}\n# retired\nnot-a-key\n",
        0o600,
    )
    with pytest.raises(ConfigError) as err:
        KeyRing.from_file(path)
    message = str(err.value).replace(str(path), "<path>")
    assert re.search(r"line\W{0,2}5\b", message), message


def test_key_file_without_keys(tmp_path: Path) -> None:
    path = write_mode(tmp_path / "keys", "# nothing here yet\n\n", 0o600)
    with pytest.raises(ConfigError):
        KeyRing.from_file(path)


def test_from_strings_names_the_setting() -> None:
    with pytest.raises(ConfigError) as err:
        KeyRing.from_strings([KeyRing.new_key_text(), "nope"])
    assert err.value.problems[0].path == "keys.encryption_keys[1]"
    with pytest.raises(ConfigError):
        KeyRing.from_strings([])


# -- passphrase ----------------------------------------------------------------------------

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def salt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("salts")


@pytest.fixture(scope="module")
def pbkdf2_ring(salt_dir: Path) -> tuple[KeyRing, Path]:
    """One PBKDF2 derivation (600,000 iterations) shared by the tests below."""
    salt_file = salt_dir / "conf" / "salt"
    assert not salt_file.exists()
    return KeyRing.from_passphrase(PASSPHRASE, salt_file), salt_file


def test_from_passphrase_creates_a_private_salt_file(pbkdf2_ring: tuple[KeyRing, Path]) -> None:
    _, salt_file = pbkdf2_ring
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    text = salt_file.read_text(encoding="ascii")
    assert re.fullmatch(r"[0-9a-f]{32}\n", text)


def test_same_passphrase_and_salt_give_the_same_key(pbkdf2_ring: tuple[KeyRing, Path]) -> None:
    ring, salt_file = pbkdf2_ring
    before = salt_file.read_bytes()
    again = KeyRing.from_passphrase(PASSPHRASE, salt_file)
    assert salt_file.read_bytes() == before, "an existing salt file is reused, not replaced"
    assert again.decrypt(ring.encrypt(b"data", AAD), AAD) == b"data"
    assert ring.decrypt(again.encrypt(b"data", AAD), AAD) == b"data"
    # bytes passphrase, other algorithm: same master key
    gcm = KeyRing.from_passphrase(PASSPHRASE.encode(), salt_file, algorithm=AESGCM_ALG)
    assert gcm.key_ids == ring.key_ids
    assert ring.decrypt(gcm.encrypt(b"data", AAD), AAD) == b"data"


def test_passphrase_key_is_pbkdf2_sha256_600k(pbkdf2_ring: tuple[KeyRing, Path]) -> None:
    ring, salt_file = pbkdf2_ring
    salt = bytes.fromhex(salt_file.read_text(encoding="ascii"))
    assert PBKDF2_ITERATIONS == 600_000
    expected = hashlib.pbkdf2_hmac("sha256", PASSPHRASE.encode(), salt, 600_000, 32)
    assert KeyRing([expected]).decrypt(ring.encrypt(b"data", AAD), AAD) == b"data"


def test_other_salt_or_passphrase_cannot_decrypt(pbkdf2_ring: tuple[KeyRing, Path],
                                                 tmp_path: Path) -> None:
    ring, salt_file = pbkdf2_ring
    token = ring.encrypt(b"data", AAD)
    other_salt = KeyRing.from_passphrase(PASSPHRASE, tmp_path / "salt")
    assert other_salt.key_ids != ring.key_ids
    with pytest.raises(KeyNotFound):
        other_salt.decrypt(token, AAD)
    other_pass = KeyRing.from_passphrase(PASSPHRASE + "!", salt_file)
    with pytest.raises(KeyNotFound):
        other_pass.decrypt(token, AAD)


def test_derivation_runs_once_per_process(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = keyring_mod.pbkdf2_sha256
    calls: list[bytes] = []

    def counting(password: bytes, salt: bytes, iterations: int, length: int = 32) -> bytes:
        calls.append(salt)
        return real(password, salt, iterations, length)

    monkeypatch.setattr(keyring_mod, "pbkdf2_sha256", counting)
    salt_file = tmp_path / "salt"
    first = KeyRing.from_passphrase("once only", salt_file)
    second = KeyRing.from_passphrase("once only", salt_file)
    salt = bytes.fromhex(salt_file.read_text(encoding="ascii"))
    master = derive_master_key("once only", salt)
    assert derive_master_key(b"once only", salt) == master
    assert len(calls) == 1
    assert first.key_ids == second.key_ids == KeyRing([master]).key_ids
    # the cache holds a digest of the passphrase, never the passphrase itself
    entries = [k for k in keyring_mod._derived if k[1] == salt]
    assert entries == [(hashlib.sha256(b"once only").digest(), salt, "pbkdf2")]


def test_scrypt_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = keyring_mod.scrypt
    calls = []

    def counting(password: bytes, salt: bytes) -> bytes:
        calls.append(salt)
        return real(password, salt)

    monkeypatch.setattr(keyring_mod, "scrypt", counting)
    salt_file = tmp_path / "salt"
    ring = KeyRing.from_passphrase(PASSPHRASE, salt_file, kdf="scrypt")
    again = KeyRing.from_passphrase(PASSPHRASE, salt_file, kdf="scrypt")
    assert len(calls) == 1
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    assert again.decrypt(ring.encrypt(b"data", AAD), AAD) == b"data"
    salt = bytes.fromhex(salt_file.read_text(encoding="ascii"))
    expected = hashlib.scrypt(PASSPHRASE.encode(), salt=salt, n=2**17, r=8, p=1, dklen=32,
                              maxmem=256 * 1024 * 1024)
    assert ring.key_ids == KeyRing([expected]).key_ids
    assert (hashlib.sha256(PASSPHRASE.encode()).digest(), salt, "scrypt") in keyring_mod._derived


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604])
def test_salt_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_mode(tmp_path / "salt", os.urandom(16).hex() + "\n", mode)
    with pytest.raises(ConfigError) as err:
        KeyRing.from_passphrase(PASSPHRASE, path)
    assert str(path) in str(err.value)
    assert f"{mode:04o}" in str(err.value)


@pytest.mark.parametrize("content", ["not hex\n", os.urandom(8).hex() + "\n", "", "é"])
def test_bad_salt_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "salt"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        KeyRing.from_passphrase(PASSPHRASE, path)


def test_passphrase_argument_errors() -> None:
    with pytest.raises(ConfigError):
        derive_master_key("", os.urandom(16))
    with pytest.raises(ConfigError):
        derive_master_key(b"", os.urandom(16))
    with pytest.raises(ConfigError):
        derive_master_key(PASSPHRASE, os.urandom(15))
    with pytest.raises(ValueError):
        derive_master_key(PASSPHRASE, os.urandom(16), kdf="md5")  # type: ignore[arg-type]


# -- a real Redis store --------------------------------------------------------------------


def test_values_in_redis_are_bound_to_their_key(redis_server: object) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_server.url)  # type: ignore[attr-defined]
    ring = KeyRing.generate()
    value = b'{"user": "alice", "groups": ["admins"]}'
    key_a, key_b, key_c = "secure_mw:session:aaaa", "secure_mw:session:bbbb", "secure_mw:x"
    try:
        client.set(key_a, ring.encrypt_bytes(value, aad=key_a.encode()))
        stored = client.get(key_a)
        assert isinstance(stored, bytes)
        assert b"alice" not in stored
        assert ring.decrypt_bytes(stored, aad=key_a.encode()) == value

        # an attacker with write access copies alice's entry under another key
        client.set(key_b, stored)
        moved = client.get(key_b)
        assert moved == stored
        with pytest.raises(DecryptError):
            ring.decrypt_bytes(moved, aad=key_b.encode())

        # the text form survives Redis too, and is bound the same way
        client.set(key_c, ring.encrypt(value, aad=key_c.encode()))
        client.rename(key_c, key_b)
        text = client.get(key_b)
        with pytest.raises(DecryptError):
            ring.decrypt(text, aad=key_b.encode())
        assert ring.decrypt(text, aad=key_c.encode()) == value
    finally:
        client.delete(key_a, key_b, key_c)
        client.close()


def test_aes_entry_key_is_rfc5869_hkdf() -> None:
    """The stdlib-HMAC HKDF in the envelope equals the library HKDF of the KAT tests."""
    from secure_mw.crypto.envelope import _GCM_INFO, SymmetricKey
    from secure_mw.crypto.primitives import hkdf_sha256

    key = SymmetricKey(os.urandom(32))
    for _ in range(5):
        salt = os.urandom(16)
        assert key._entry_key(salt) == hkdf_sha256(key.secret, salt=salt, info=_GCM_INFO)


def test_duplicate_key_in_a_key_file_names_the_line(tmp_path: Path) -> None:
    key = KeyRing.new_key_text()
    path = write_mode(tmp_path / "keys", f"{key}\n# again\n{key}\n", 0o600)
    with pytest.raises(ConfigError) as err:
        KeyRing.from_file(path)
    assert "line 3" in str(err.value) and key not in str(err.value)


def test_concurrent_first_start_agrees_on_one_salt(tmp_path: Path) -> None:
    """Workers starting together must derive the same master key (one salt file wins)."""
    import threading

    from secure_mw.crypto.keyring import _load_or_create_salt

    for attempt in range(20):
        path = tmp_path / f"salt{attempt}"
        results: list[bytes] = []
        barrier = threading.Barrier(8)

        def worker(p: Path = path, b: threading.Barrier = barrier,
                   out: list[bytes] = results) -> None:
            b.wait()
            out.append(_load_or_create_salt(p))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(results)) == 1, attempt


# -- derived secrets ---------------------------------------------------------------------------


def test_derive_is_hkdf_sha256_under_the_purpose_label() -> None:
    first, second = bytes(range(32)), bytes(range(32, 64))
    ring = KeyRing([first, second])
    derived = ring.derive("assertion signing key ES256", 48)
    expected = tuple(
        HKDF(algorithm=hashes.SHA256(), length=48, salt=None,
             info=b"secure_mw/v1/derive\x00assertion signing key ES256").derive(secret)
        for secret in (first, second))
    assert derived == expected                       # the encrypting key's first
    assert KeyRing([first, second]).derive("assertion signing key ES256", 48) == derived
    assert ring.derive("another purpose", 48) != derived
    assert first not in derived[0] and len(ring.derive("x")[0]) == 32


@pytest.mark.parametrize(("purpose", "length"), [("", 32), ("x", 8), ("x", 10_000)])
def test_derive_refuses_odd_arguments(purpose: str, length: int) -> None:
    with pytest.raises(ValueError):
        KeyRing.generate().derive(purpose, length)
