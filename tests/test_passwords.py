"""Argon2id password hashing (:mod:`secure_mw.crypto.passwords`).

The default hasher (t=3, m=64 MiB, p=4) is exercised once, through a module fixture; the
other tests use a cheap hasher (m=8 MiB) so the suite stays fast.
"""

from __future__ import annotations

import base64

import argon2
import pytest

from secure_mw.crypto import DEFAULT_HASHER, PasswordHasher
from secure_mw.crypto.passwords import MAX_PASSWORD_BYTES

PASSWORD = "correct horse battery staple"
DEFAULT_PREFIX = "$argon2id$v=19$m=65536,t=3,p=4$"


def b64_nopad(text: str) -> bytes:
    """PHC strings use standard base64 without padding."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@pytest.fixture(scope="module")
def default_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


@pytest.fixture(scope="module")
def cheap() -> PasswordHasher:
    return PasswordHasher(memory_cost=8192)


@pytest.fixture(scope="module")
def weak() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


@pytest.fixture(scope="module")
def cheap_hash(cheap: PasswordHasher) -> str:
    return cheap.hash(PASSWORD)


def test_default_phc_string(default_hash: str) -> None:
    assert default_hash.startswith(DEFAULT_PREFIX)
    parts = default_hash.split("$")
    assert parts[:4] == ["", "argon2id", "v=19", "m=65536,t=3,p=4"]
    assert len(parts) == 6
    salt, digest = parts[4], parts[5]
    assert "=" not in salt + digest
    assert len(b64_nopad(salt)) == 16
    assert len(b64_nopad(digest)) == 32


def test_default_verify_and_needs_rehash(default_hash: str) -> None:
    hasher = PasswordHasher()
    assert hasher.verify(default_hash, PASSWORD) is True
    assert hasher.verify(default_hash, PASSWORD + " ") is False
    assert hasher.verify(default_hash, PASSWORD.upper()) is False
    assert hasher.needs_rehash(default_hash) is False
    # the module's shared hasher uses the same defaults
    assert DEFAULT_HASHER.verify(default_hash, PASSWORD) is True
    assert DEFAULT_HASHER.needs_rehash(default_hash) is False


def test_hashes_are_salted(cheap: PasswordHasher, cheap_hash: str) -> None:
    again = cheap.hash(PASSWORD)
    assert again != cheap_hash
    assert again.split("$")[4] != cheap_hash.split("$")[4]
    assert cheap.verify(again, PASSWORD)
    assert cheap.verify(cheap_hash, PASSWORD)


def test_verify_true_false(cheap: PasswordHasher, cheap_hash: str) -> None:
    assert cheap_hash.startswith("$argon2id$v=19$m=8192,t=3,p=4$")
    assert cheap.verify(cheap_hash, PASSWORD) is True
    for wrong in ("", "correct horse battery stapl", "Correct horse battery staple",
                  PASSWORD + "\x00", "\x00" + PASSWORD):
        assert cheap.verify(cheap_hash, wrong) is False


def test_unicode_passwords(cheap: PasswordHasher) -> None:
    phc = cheap.hash("pässwörd 🔑")
    assert cheap.verify(phc, "pässwörd 🔑")
    # NFC vs NFD are different byte strings: no silent normalisation
    assert not cheap.verify(phc, "pa\u0308sswo\u0308rd 🔑")


def test_wrong_types_verify_false(cheap: PasswordHasher, cheap_hash: str) -> None:
    for phc, password in [
        (cheap_hash, None), (cheap_hash, PASSWORD.encode()), (cheap_hash, 123),
        (cheap_hash, [PASSWORD]), (None, PASSWORD), (cheap_hash.encode(), PASSWORD),
        (123, PASSWORD), ([cheap_hash], PASSWORD), (None, None),
    ]:
        assert cheap.verify(phc, password) is False  # type: ignore[arg-type]


def test_other_argon2_variants_are_refused(cheap: PasswordHasher) -> None:
    for variant in (argon2.Type.I, argon2.Type.D):
        other = argon2.PasswordHasher(memory_cost=8192, type=variant)
        phc = other.hash(PASSWORD)
        assert other.verify(phc, PASSWORD)  # a valid hash of the right password ...
        assert cheap.verify(phc, PASSWORD) is False  # ... that we refuse
        assert cheap.needs_rehash(phc) is True


def test_needs_rehash_after_a_parameter_change(weak: PasswordHasher, cheap: PasswordHasher,
                                               cheap_hash: str) -> None:
    weak_hash = weak.hash(PASSWORD)
    assert weak_hash.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert DEFAULT_HASHER.needs_rehash(weak_hash) is True
    assert cheap.needs_rehash(weak_hash) is True
    assert weak.needs_rehash(weak_hash) is False
    assert cheap.needs_rehash(cheap_hash) is False
    assert DEFAULT_HASHER.needs_rehash(cheap_hash) is True
    # a hash made with other parameters still verifies: that is how it gets upgraded
    assert cheap.verify(weak_hash, PASSWORD) is True
    assert weak.verify(cheap_hash, PASSWORD) is True
    assert cheap.verify(weak_hash, "wrong") is False
    # other hash or salt length
    assert cheap.needs_rehash(PasswordHasher(memory_cost=8192, hash_len=16).hash(PASSWORD))


def test_default_hash_verifies_with_a_cheap_hasher(cheap: PasswordHasher,
                                                   default_hash: str) -> None:
    """verify() takes the parameters from the PHC string, not from the hasher."""
    assert cheap.verify(default_hash, PASSWORD) is True
    assert cheap.needs_rehash(default_hash) is True


def test_garbage_phc(cheap: PasswordHasher, cheap_hash: str) -> None:
    salt_and_hash = cheap_hash.rsplit("$", 2)
    garbage = [
        "", "garbage", "$argon2id$", "$argon2id$garbage", "$argon2id$v=19$m=8192,t=3,p=4$",
        "$argon2id$v=19$m=8192,t=3,p=4$!!!!$!!!!",
        "$argon2id$v=19$m=8192,t=3,p=4$" + salt_and_hash[1],
        cheap_hash[:-10],
        cheap_hash + "$extra",
        cheap_hash.replace("v=19", "v=99"),
        cheap_hash.replace("m=8192", "m=x"),
        cheap_hash.replace("$argon2id$", "$argon2$"),
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
    ]
    for phc in garbage:
        assert cheap.verify(phc, PASSWORD) is False, phc
        assert cheap.needs_rehash(phc) is True, phc
    # right parameters, non-base64 salt of the right length: refused by verify (needs_rehash
    # only reads the parameters, so it need not notice)
    odd = "$argon2id$v=19$m=8192,t=3,p=4$" + "\u00e9" * 22 + "$" + "A" * 43
    assert cheap.verify(odd, PASSWORD) is False


def test_tampered_hash_does_not_verify(cheap: PasswordHasher, cheap_hash: str) -> None:
    head, digest = cheap_hash.rsplit("$", 1)
    raw = bytearray(b64_nopad(digest))
    raw[0] ^= 0x01
    tampered = head + "$" + base64.b64encode(bytes(raw)).decode().rstrip("=")
    assert tampered != cheap_hash
    assert cheap.verify(tampered, PASSWORD) is False
    assert cheap.needs_rehash(tampered) is False  # same parameters: a wrong hash, not old


def test_password_length_limit(cheap: PasswordHasher, cheap_hash: str) -> None:
    assert MAX_PASSWORD_BYTES == 1024
    at_limit = "a" * 1024
    assert cheap.verify(cheap.hash(at_limit), at_limit)
    multibyte = "é" * 512  # 1024 bytes in UTF-8
    assert cheap.verify(cheap.hash(multibyte), multibyte)
    for too_long in ("a" * 1025, "é" * 513, "🔑" * 257, "a" * 100_000):
        with pytest.raises(ValueError):
            cheap.hash(too_long)
        assert cheap.verify(cheap_hash, too_long) is False
    # a stored hash of an over-long password (made elsewhere) is refused at verify too
    long_hash = argon2.PasswordHasher(memory_cost=8192).hash("a" * 1025)
    assert cheap.verify(long_hash, "a" * 1025) is False


def test_hash_rejects_bad_input(cheap: PasswordHasher) -> None:
    for bad in ("", None, b"password", 123, ["pw"]):
        with pytest.raises(ValueError):
            cheap.hash(bad)  # type: ignore[arg-type]


def test_lone_surrogates_never_crash(cheap: PasswordHasher, cheap_hash: str) -> None:
    with pytest.raises(ValueError):
        cheap.hash("pass\ud800word")
    assert cheap.verify(cheap_hash, "pass\ud800word") is False
    assert cheap.verify(cheap_hash, "\udfff" * 2000) is False


@pytest.mark.parametrize("value", [None, 123])
def test_needs_rehash_of_a_non_string_is_true(cheap: PasswordHasher, value: object) -> None:
    assert cheap.needs_rehash(value) is True  # type: ignore[arg-type]
