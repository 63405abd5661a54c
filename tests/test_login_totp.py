"""TOTP second factor: RFC 6238 vectors, drift, code formats, replay (memory and a real
redis-server), sealed secrets, provisioning URIs, QR SVG and the secret stores. The clock is
injected everywhere: nothing sleeps."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import ConfigError, DecryptError, StoreUnavailable
from secure_mw.login import totp as totp_module
from secure_mw.login.totp import (
    TOTP,
    FileTOTPStore,
    RedisUsedCodes,
    SecretBox,
    TOTPStore,
    UsedCodes,
    acheck_code,
    check_code,
)
from tests.clock import Clock
from tests.servers import RedisServer, free_port

SVG_NS = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_010.0   # 10 s into a 30 s step
SECRET = base64.b32encode(b"0123456789abcdefghij").decode("ascii")


def b32(seed: bytes) -> str:
    return base64.b32encode(seed).decode("ascii")


SEEDS = {
    "SHA1": b32(b"12345678901234567890"),
    "SHA256": b32(b"12345678901234567890123456789012"),
    "SHA512": b32(b"1234567890123456789012345678901234567890123456789012345678901234"),
}

# RFC 6238 Appendix B: time, then the 8-digit code for SHA1, SHA256 and SHA512.
RFC6238_VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


# Unicode digits that str.isdigit() accepts but a code must not contain.
ARABIC_INDIC = {ord("0") + i: 0x0660 + i for i in range(10)}
FULLWIDTH = {ord("0") + i: 0xFF10 + i for i in range(10)}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def totp(clock: Clock) -> TOTP:
    return TOTP(issuer="Example", clock=clock)


def code_at(totp: TOTP, offset: int, secret: str = SECRET) -> str:
    """The code ``offset`` steps from the current one."""
    return totp.code(secret, totp.step() + offset)


# -- RFC 6238 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), RFC6238_VECTORS)
def test_rfc6238_appendix_b(at: int, sha1: str, sha256: str, sha512: str) -> None:
    for algorithm, expected in (("SHA1", sha1), ("SHA256", sha256), ("SHA512", sha512)):
        totp = TOTP(issuer="RFC", digits=8, algorithm=algorithm, clock=Clock(at))
        seed = SEEDS[algorithm]
        assert totp.code(seed) == expected
        assert totp.verify(seed, expected) == at // 30


def test_six_digit_code_is_the_last_six_digits() -> None:
    totp = TOTP(issuer="RFC", clock=Clock(59))
    assert totp.code(SEEDS["SHA1"]) == "287082"
    assert totp.verify(SEEDS["SHA1"], "287082") == 1


def test_algorithm_name_is_case_insensitive() -> None:
    totp = TOTP(issuer="RFC", digits=8, algorithm="sha256", clock=Clock(59))
    assert totp.algorithm == "SHA256"
    assert totp.code(SEEDS["SHA256"]) == "46119246"


def test_agrees_with_pyotp_totp(totp: TOTP) -> None:
    assert totp.code(SECRET) == pyotp.TOTP(SECRET).at(T0)


# -- drift window --------------------------------------------------------------------------------


def test_drift_of_one_step_accepted_two_refused(totp: TOTP) -> None:
    now = totp.step()
    assert totp.verify(SECRET, code_at(totp, 0)) == now
    assert totp.verify(SECRET, code_at(totp, -1)) == now - 1
    assert totp.verify(SECRET, code_at(totp, 1)) == now + 1
    assert totp.verify(SECRET, code_at(totp, -2)) is None
    assert totp.verify(SECRET, code_at(totp, 2)) is None


def test_window_is_configurable(clock: Clock) -> None:
    strict = TOTP(issuer="Example", window=0, clock=clock)
    wide = TOTP(issuer="Example", window=2, clock=clock)
    assert strict.verify(SECRET, code_at(strict, 0)) == strict.step()
    assert strict.verify(SECRET, code_at(strict, 1)) is None
    assert strict.verify(SECRET, code_at(strict, -1)) is None
    assert wide.verify(SECRET, code_at(wide, -2)) == wide.step() - 2
    assert wide.verify(SECRET, code_at(wide, 2)) == wide.step() + 2
    assert wide.verify(SECRET, code_at(wide, 3)) is None


def test_code_expires_as_the_clock_moves(totp: TOTP, clock: Clock) -> None:
    code = totp.code(SECRET)
    step = totp.step()
    clock.advance(30)
    assert totp.verify(SECRET, code) == step          # one step late: still accepted
    clock.advance(30)
    assert totp.verify(SECRET, code) is None          # two steps late: refused


def test_step_boundaries() -> None:
    clock = Clock(60.0)
    totp = TOTP(issuer="x", clock=clock)
    assert totp.step() == 2
    clock.now = 89.999
    assert totp.step() == 2
    clock.now = 90.0
    assert totp.step() == 3


def test_no_negative_steps_near_the_epoch() -> None:
    totp = TOTP(issuer="x", window=1, clock=Clock(5))
    assert totp.verify(SECRET, totp.code(SECRET, 0)) == 0
    assert totp.verify(SECRET, totp.code(SECRET, 1)) == 1


def test_custom_period_and_digits(clock: Clock) -> None:
    totp = TOTP(issuer="x", digits=7, period=60, clock=clock)
    code = totp.code(SECRET)
    assert len(code) == 7
    assert totp.verify(SECRET, code) == int(T0 // 60)


# -- code formats --------------------------------------------------------------------------------


def test_spaces_and_surrounding_whitespace_are_removed(totp: TOTP) -> None:
    code = totp.code(SECRET)
    step = totp.step()
    spellings = (f"{code[:3]} {code[3:]}", f"  {code}\n", f"\t{code[:2]} {code[2:4]} {code[4:]}")
    for spelled in spellings:
        assert totp.verify(SECRET, spelled) == step


@pytest.mark.parametrize("mangle", [
    lambda c: c[:5],                       # too short
    lambda c: c + "0",                     # too long
    lambda c: f"{c[:3]}-{c[3:]}",          # a hyphen
    lambda c: c[:5] + "x",                 # a letter
    lambda c: "",
    lambda c: " ",
    lambda c: c.translate(ARABIC_INDIC),
    lambda c: c.translate(FULLWIDTH),
    lambda c: f"{c[:3]}\u00a0{c[3:]}",     # no-break space
    lambda c: c + "\x00",
    lambda c: f"+{c[1:]}",
    lambda c: c * 20,
    lambda c: " " * 1000 + c,              # longer than any code text looked at
])
def test_malformed_codes_are_refused_without_exceptions(totp: TOTP, mangle: object) -> None:
    assert callable(mangle)
    assert totp.verify(SECRET, mangle(totp.code(SECRET))) is None


@pytest.mark.parametrize("code", [None, 123456, b"123456", ["123456"], 1.5])
def test_non_strings_are_refused(totp: TOTP, code: object) -> None:
    assert totp.verify(SECRET, code) is None  # type: ignore[arg-type]


def test_every_candidate_is_compared_with_compare_digest(
    totp: TOTP, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert totp.verify(SECRET, totp.code(SECRET)) == totp.step()
    # the current step matches first, and the two neighbours are still compared
    assert len(calls) == 3
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    calls.clear()
    assert totp.verify(SECRET, "000000" if totp.code(SECRET) != "000000" else "111111") in (
        None, totp.step() - 1, totp.step() + 1)
    assert len(calls) == 3


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_verify_never_raises_for_arbitrary_text(text: str) -> None:
    totp = TOTP(issuer="x", clock=Clock(T0))
    result = totp.verify(SECRET, text)
    assert result is None or abs(result - totp.step()) <= 1


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789 \t\n", min_size=6, max_size=12))
def test_check_code_never_raises_for_digit_soup(text: str) -> None:
    totp = TOTP(issuer="x", clock=Clock(T0))
    assert check_code(totp, UsedCodes(clock=Clock(T0)), "alice", SECRET, text) in (True, False)


# -- secrets and configuration -------------------------------------------------------------------


def test_new_secret_is_160_random_bits() -> None:
    made = {TOTP.new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert len(secret) == 32 and "=" not in secret
        assert len(base64.b32decode(secret)) == 20


def test_secret_spellings_are_accepted(totp: TOTP) -> None:
    code = totp.code(SECRET)
    padded = b32(b"0123456789abcdef")   # 16 bytes: padded base32
    assert "=" in padded
    assert totp.code(padded.rstrip("=")) == totp.code(padded)
    assert totp.code(SECRET.lower()) == code
    assert totp.code(" ".join(SECRET[i:i + 4] for i in range(0, 32, 4))) == code


@pytest.mark.parametrize("secret", ["", "not base32!", b32(b"short secret"), "A" * 7, 12345])
def test_bad_secrets_raise_value_error(totp: TOTP, secret: object) -> None:
    with pytest.raises(ValueError):
        totp.verify(secret, "123456")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        totp.provisioning_uri(secret, "alice")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [
    {"digits": 5}, {"digits": 9}, {"digits": True}, {"period": 0}, {"period": 30.0},
    {"window": -1}, {"window": 11}, {"algorithm": "MD5"}, {"algorithm": "sha3_256"},
    {"issuer": ""}, {"issuer": "  "},
])
def test_bad_configuration_is_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"issuer": "Example", **kwargs}
    with pytest.raises(ValueError):
        TOTP(**args)  # type: ignore[arg-type]


def test_repr_holds_no_secret(totp: TOTP) -> None:
    assert "Example" in repr(totp) and SECRET not in repr(totp)


# -- replay --------------------------------------------------------------------------------------


def test_replay_within_the_window_is_refused(totp: TOTP, clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    code = totp.code(SECRET)
    assert check_code(totp, used, "alice", SECRET, code)
    assert not check_code(totp, used, "alice", SECRET, code)
    assert not check_code(totp, used, "alice", SECRET, f"{code[:3]} {code[3:]}")
    clock.advance(30)                                    # still inside the window
    assert not check_code(totp, used, "alice", SECRET, code)
    assert check_code(totp, used, "alice", SECRET, totp.code(SECRET))   # the next step


def test_older_unused_code_is_refused_after_a_newer_one(totp: TOTP, clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    older = totp.code(SECRET)                            # seen, never used
    clock.advance(30)
    assert check_code(totp, used, "alice", SECRET, totp.code(SECRET))
    assert totp.verify(SECRET, older) is not None        # still inside the window...
    assert not check_code(totp, used, "alice", SECRET, older)   # ...but refused


def test_future_code_burns_every_earlier_step(totp: TOTP, clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    assert check_code(totp, used, "alice", SECRET, code_at(totp, 1))
    assert not check_code(totp, used, "alice", SECRET, code_at(totp, 0))
    assert not check_code(totp, used, "alice", SECRET, code_at(totp, -1))


def test_replay_is_per_user(totp: TOTP, clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    code = totp.code(SECRET)
    assert check_code(totp, used, "alice", SECRET, code)
    assert check_code(totp, used, "bob", SECRET, code)


def test_wrong_code_claims_nothing(totp: TOTP, clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    code = totp.code(SECRET)
    wrong = "000000" if code != "000000" else "111111"
    assert not check_code(totp, used, "alice", SECRET, wrong)
    assert len(used) == 0
    assert check_code(totp, used, "alice", SECRET, code)


def test_used_codes_are_forgotten_after_their_ttl(clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    assert used.claim("alice", 7, 90)
    assert not used.claim("alice", 7, 90)
    clock.advance(89.9)
    assert not used.claim("alice", 7, 90)
    clock.advance(0.1)
    assert used.claim("alice", 7, 90)
    assert len(used) == 1


def test_replay_ttl_outlives_the_window(totp: TOTP, clock: Clock) -> None:
    for offset in (-1, 0, 1):
        step = totp.step() + offset
        ttl = totp.replay_ttl(step)
        # the step is accepted until it leaves the window, (step + window + 1) * period
        assert clock() + ttl >= (step + totp.window + 1) * totp.period + totp.period


def test_used_codes_full_fails_closed(clock: Clock) -> None:
    used = UsedCodes(max_entries=2, clock=clock)
    assert used.claim("a", 1, 10) and used.claim("b", 1, 10)
    with pytest.raises(StoreUnavailable):
        used.claim("c", 1, 10)
    clock.advance(10)
    assert used.claim("c", 1, 10)                        # expired entries made room


@pytest.mark.parametrize(("user", "step", "ttl"), [
    (None, 1, 10), ("a", -1, 10), ("a", True, 10), ("a", 1.0, 10), ("a", 1, float("nan")),
])
def test_claim_arguments_are_checked(user: object, step: object, ttl: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        UsedCodes().claim(user, step, ttl)  # type: ignore[arg-type]


def test_async_check_code_in_memory(totp: TOTP, clock: Clock) -> None:
    used = UsedCodes(clock=clock)
    code = totp.code(SECRET)

    async def run() -> tuple[bool, bool]:
        return (await acheck_code(totp, used, "alice", SECRET, code),
                await acheck_code(totp, used, "alice", SECRET, code))

    assert asyncio.run(run()) == (True, False)
    assert UsedCodes.nonblocking is True


# -- replay in Redis -----------------------------------------------------------------------------


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(params=["redis", "sqlite"])
def redis_used(request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[tuple[RedisUsedCodes, RedisUsedCodes]]:
    """Two replay stores on one shared engine (two processes' clients): Redis or SQLite."""
    if request.param == "sqlite":
        from secure_mw._sqlite import Database
        from secure_mw.login.totp_sqlite import SqliteUsedCodes

        a, b = Database(tmp_path / "s.sqlite3"), Database(tmp_path / "s.sqlite3")
        a.check()
        yield SqliteUsedCodes(a), SqliteUsedCodes(b)  # type: ignore[misc]
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    first, second = RedisUsedCodes(server.url), RedisUsedCodes(server.url)
    yield first, second
    first.close()
    second.close()


def test_redis_replay_refused_across_two_objects(
    totp: TOTP, clock: Clock, redis_used: tuple[RedisUsedCodes, RedisUsedCodes],
) -> None:
    first, second = redis_used
    code = totp.code(SECRET)
    assert check_code(totp, first, "alice", SECRET, code)
    assert not check_code(totp, second, "alice", SECRET, code)
    assert not check_code(totp, first, "alice", SECRET, code)
    clock.advance(30)
    assert not check_code(totp, second, "alice", SECRET, code)
    assert check_code(totp, second, "alice", SECRET, totp.code(SECRET))
    assert check_code(totp, first, "bob", SECRET, totp.code(SECRET))


def test_redis_older_code_refused_after_newer(
    totp: TOTP, clock: Clock, redis_used: tuple[RedisUsedCodes, RedisUsedCodes],
) -> None:
    first, second = redis_used
    older = totp.code(SECRET)
    clock.advance(30)
    assert check_code(totp, first, "alice", SECRET, totp.code(SECRET))
    assert not check_code(totp, second, "alice", SECRET, older)


def test_redis_keys_hide_the_user_and_expire(totp: TOTP, raw: redis.Redis,
                                             redis_server: RedisServer) -> None:
    first = RedisUsedCodes(redis_server.url)
    step = totp.step()
    assert first.claim("alice@example.org", step, 95.5)
    keys = [k.decode() for k in cast("list[bytes]", raw.keys("*"))]
    assert keys == [first.redis_key("alice@example.org", step)]
    assert keys[0].startswith("secure_mw:totp:") and keys[0].endswith(f":{step}")
    assert "alice" not in keys[0]
    assert 0 < raw.pttl(keys[0]) <= 95_500


def test_redis_claim_is_atomic_under_contention(
    redis_server: RedisServer, redis_used: tuple[RedisUsedCodes, RedisUsedCodes],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    first, second = redis_used
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (first, second)[i % 2].claim("alice", 42, 60),
                                range(32)))
    assert results.count(True) == 1


def test_redis_async_claims(
    totp: TOTP, redis_used: tuple[RedisUsedCodes, RedisUsedCodes],
) -> None:
    first, second = redis_used
    code = totp.code(SECRET)

    async def run() -> tuple[bool, bool, bool]:
        try:
            return (await acheck_code(totp, first, "alice", SECRET, code),
                    await acheck_code(totp, second, "alice", SECRET, code),
                    check_code(totp, second, "alice", SECRET, code))
        finally:
            for used in (first, second):
                if hasattr(used, "aclose"):
                    await used.aclose()

    assert asyncio.run(run()) == (True, False, False)


def test_sqlite_a_code_used_in_another_process_is_refused(totp: TOTP,
                                                          tmp_path: Path) -> None:
    import subprocess
    import sys

    from secure_mw._sqlite import Database
    from secure_mw.login.totp_sqlite import SqliteUsedCodes

    path = tmp_path / "s.sqlite3"
    step = totp.step()
    child = subprocess.run([sys.executable, "-c", (
        "import sys; from secure_mw._sqlite import database; "
        "from secure_mw.login.totp_sqlite import SqliteUsedCodes; "
        f"print(SqliteUsedCodes(database(sys.argv[1])).claim('alice', {step}, 60))"),
        str(path)], capture_output=True, text=True, timeout=60, check=True)
    assert child.stdout.strip() == "True"
    db = Database(path)
    assert SqliteUsedCodes(db).claim("alice", step, 60) is False
    assert SqliteUsedCodes(db).claim("bob", step, 60) is True
    assert "alice" not in db.read("SELECT group_concat(key) FROM marks")[0][0]


def test_redis_unavailable_fails_closed(totp: TOTP) -> None:
    used = RedisUsedCodes(f"redis://:pw-secret@127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            check_code(totp, used, "alice", SECRET, totp.code(SECRET))
        assert "pw-secret" not in str(caught.value)
        assert "127.0.0.1" in str(caught.value)

        async def run() -> None:
            try:
                await used.aclaim("alice", 1, 10)
            finally:
                await used.aclose()

        with pytest.raises(StoreUnavailable):
            asyncio.run(run())
    finally:
        used.close()


# -- SecretBox -----------------------------------------------------------------------------------


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(KeyRing.generate())


def test_secret_box_round_trip(box: SecretBox) -> None:
    secret = TOTP.new_secret()
    token = box.seal("alice", secret)
    assert secret not in token
    assert box.open("alice", token) == secret
    assert box.seal("alice", secret) != token            # a fresh nonce each time


def test_secret_box_normalizes_the_secret(box: SecretBox) -> None:
    assert box.open("alice", box.seal("alice", SECRET.lower())) == SECRET


def test_secret_box_tampered_token(box: SecretBox) -> None:
    token = box.seal("alice", SECRET)
    for i in (0, 5, len(token) // 2, len(token) - 2):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
        with pytest.raises(DecryptError):
            box.open("alice", changed)
    for bad in ("", "!!!", token[:-4], token + "AAAA"):
        with pytest.raises(DecryptError):
            box.open("alice", bad)


def test_secret_box_moved_to_another_user(box: SecretBox) -> None:
    token = box.seal("alice", SECRET)
    for other in ("bob", "Alice", "alice ", "alice\x00"):
        with pytest.raises(DecryptError):
            box.open(other, token)


def test_secret_box_other_key_ring(box: SecretBox) -> None:
    token = box.seal("alice", SECRET)
    with pytest.raises(DecryptError):
        SecretBox(KeyRing.generate()).open("alice", token)


def test_secret_box_refuses_a_non_secret_plaintext() -> None:
    ring = KeyRing.generate()
    box = SecretBox(ring)
    # the right key and associated data, but not a TOTP secret inside
    token = ring.encrypt(b"not a secret", aad=totp_module._aad("alice"))
    with pytest.raises(DecryptError):
        box.open("alice", token)
    with pytest.raises(ValueError):
        box.seal("alice", "short")


# -- provisioning URI and QR ---------------------------------------------------------------------


@pytest.mark.parametrize(("issuer", "account"), [
    ("Example", "alice@example.org"),
    ("ACME Corp", "alice smith"),
    ("Acme: Portal", "user:name"),
    ("Zürich Bank", "jörg@example.ch"),
    ("R&D?#/%", "a+b=c&d"),
])
def test_provisioning_uri_fields(issuer: str, account: str, clock: Clock) -> None:
    totp = TOTP(issuer=issuer, clock=clock)
    uri = totp.provisioning_uri(SECRET, account)
    assert uri.isascii() and " " not in uri and "+" not in uri
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    label = parts.path.lstrip("/")
    assert label.count(":") == 1                          # only the separator is a raw colon
    raw_issuer, raw_account = label.split(":")
    assert unquote(raw_issuer) == issuer and unquote(raw_account) == account
    query = parse_qs(parts.query, strict_parsing=True)
    assert query == {"secret": [SECRET], "issuer": [issuer], "algorithm": ["SHA1"],
                     "digits": ["6"], "period": ["30"]}
    parsed = pyotp.parse_uri(uri)                         # an independent reader agrees
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name) == (SECRET, issuer, account)
    assert parsed.at(T0) == totp.code(SECRET)


def test_provisioning_uri_carries_non_default_parameters(clock: Clock) -> None:
    totp = TOTP(issuer="x", digits=8, period=60, algorithm="sha512", clock=clock)
    query = parse_qs(urlsplit(totp.provisioning_uri(SEEDS["SHA512"], "a")).query)
    assert (query["algorithm"], query["digits"], query["period"]) == (["SHA512"], ["8"], ["60"])
    parsed = pyotp.parse_uri(totp.provisioning_uri(SEEDS["SHA512"], "a"))
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.at(T0) == totp.code(SEEDS["SHA512"])


def test_provisioning_uri_normalizes_the_secret(totp: TOTP) -> None:
    query = parse_qs(urlsplit(totp.provisioning_uri(SECRET.lower(), "a")).query)
    assert query["secret"] == [SECRET]
    with pytest.raises(ValueError):
        totp.provisioning_uri(SECRET, "")


def _all_attributes(root: ET.Element) -> Iterator[tuple[str, str]]:
    for element in root.iter():
        yield from element.attrib.items()


@pytest.mark.parametrize("issuer", ["Example", "Zürich Bank",
                                    "<script>alert(1)</script> & \"co\""])
def test_qr_svg_is_well_formed_and_csp_friendly(issuer: str, clock: Clock) -> None:
    totp = TOTP(issuer=issuer, clock=clock)
    svg = totp.qr_svg(SECRET, "alice@example.org")
    assert svg.startswith("<svg")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    tags = {element.tag.removeprefix(SVG_NS) for element in root.iter()}
    assert tags <= {"svg", "title", "g", "path"}
    assert "script" not in tags and "style" not in tags and "image" not in tags
    title = root.find(f"{SVG_NS}title")
    assert title is not None and title.text == f"{issuer} two-step login setup"
    for name, value in _all_attributes(root):
        assert name not in ("style", "href") and not name.startswith("on")
        assert "{" not in name                          # no xlink: or other namespaced attribute
        assert "javascript:" not in value and "url(" not in value
    assert "<script" not in svg.lower()


def test_qr_svg_scale(totp: TOTP) -> None:
    small = ET.fromstring(totp.qr_svg(SECRET, "a", scale=2))
    large = ET.fromstring(totp.qr_svg(SECRET, "a", scale=8))
    assert int(large.attrib["width"]) == 4 * int(small.attrib["width"])
    with pytest.raises(ValueError):
        totp.qr_svg(SECRET, "a", scale=0)


# -- secret stores -------------------------------------------------------------------------------


def test_memory_store(box: SecretBox) -> None:
    store = TOTPStore()
    assert store.nonblocking is True
    assert store.get("alice") is None
    token = box.seal("alice", SECRET)
    store.set("alice", token)
    assert store.get("alice") == token and len(store) == 1
    assert store.delete("alice") is True
    assert store.delete("alice") is False
    assert store.get("alice") is None
    with pytest.raises(TypeError):
        store.set("alice", None)  # type: ignore[arg-type]

    async def run() -> str | None:
        await store.aset("bob", token)
        found = await store.aget("bob")
        await store.adelete("bob")
        return found

    assert asyncio.run(run()) == token


def test_file_store_round_trip_and_mode(tmp_path: Path, box: SecretBox) -> None:
    path = tmp_path / "totp.json"
    store = FileTOTPStore(path)
    assert not path.exists() and store.get("alice") is None
    token = box.seal("alice", SECRET)
    store.set("alice", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"alice": token}
    assert SECRET not in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["totp.json", "totp.json.lock"]
    assert FileTOTPStore(path).get("alice") == token
    assert box.open("alice", FileTOTPStore(path).get("alice") or "") == SECRET
    assert store.delete("alice") is True and store.delete("alice") is False
    assert json.loads(path.read_text()) == {}


def test_file_store_sees_changes_by_another_instance(tmp_path: Path) -> None:
    path = tmp_path / "totp.json"
    first, second = FileTOTPStore(path), FileTOTPStore(path)
    first.set("alice", "sealed-a")
    assert second.get("alice") == "sealed-a"
    second.set("bob", "sealed-b")                          # keeps alice: read before write
    assert first.get("bob") == "sealed-b" and first.get("alice") == "sealed-a"
    first.delete("alice")
    assert second.get("alice") is None and second.get("bob") == "sealed-b"


def test_file_store_refuses_a_readable_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "totp.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="0644"):
        FileTOTPStore(path)


@pytest.mark.parametrize("content", ["not json", "[]", '{"alice": 1}', '{"a": "x", "a": "y"}'])
def test_file_store_refuses_bad_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / "totp.json"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError):
        FileTOTPStore(path)


def _replace_file(path: Path, content: str) -> None:
    tmp = path.with_name("replacement")
    tmp.write_text(content)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def test_file_store_fails_closed_at_run_time(tmp_path: Path) -> None:
    path = tmp_path / "totp.json"
    store = FileTOTPStore(path)
    store.set("alice", "sealed-a")
    _replace_file(path, "{broken")
    with pytest.raises(StoreUnavailable):
        store.get("alice")
    with pytest.raises(StoreUnavailable):
        store.set("bob", "sealed-b")
    _replace_file(path, '{"alice": "sealed-a2"}')
    assert store.get("alice") == "sealed-a2"
    path.unlink()
    with pytest.raises(StoreUnavailable):                 # vanished: not "not enrolled"
        store.get("alice")


def test_used_codes_follow_the_session_store_and_its_prefix(redis_server: RedisServer,
                                                           totp: TOTP, clock: Clock) -> None:
    """Two apps on one Redis, with their own prefixes: a code used on one is not used up on
    the other; within one app, every process refuses it."""
    from secure_mw.login.totp import UsedCodes, used_codes_from_settings
    from secure_mw.settings import Settings

    def app(prefix: str) -> Settings:
        return Settings.from_mapping({
            "keys": {"encryption_keys": [KeyRing.new_key_text()]},
            "session": {"store": "redis", "redis_url": redis_server.url,
                        "redis_key_prefix": prefix}}, environ={})

    one, same, other = (used_codes_from_settings(app(p)) for p in ("appA:", "appA:", "appB:"))
    assert isinstance(one, RedisUsedCodes) and isinstance(other, RedisUsedCodes)
    secret = TOTP.new_secret()
    code = totp.code(secret)
    assert check_code(totp, one, "alice", secret, code)
    assert not check_code(totp, same, "alice", secret, code)    # another process, same app
    assert check_code(totp, other, "alice", secret, code)       # another app
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert all(k.startswith(("appA:totp:", "appB:totp:")) for k in raw.keys("*"))
    finally:
        raw.close()
    assert isinstance(used_codes_from_settings(Settings()), UsedCodes)
    # With cookie sessions, a Redis URL is enough: the workers share the used codes too.
    for n, sections in enumerate(({"session": {"store": "cookie",
                                               "redis_url": redis_server.url}},
                                  {"rate_limits": {"redis_url": redis_server.url}})):
        settings = Settings.from_mapping({"keys": {"encryption_keys": [
            KeyRing.new_key_text()]}, **sections}, environ={})
        worker, sibling = used_codes_from_settings(settings), used_codes_from_settings(settings)
        assert isinstance(worker, RedisUsedCodes), sections
        user = f"bob{n}"
        assert check_code(totp, worker, user, secret, code)
        assert not check_code(totp, sibling, user, secret, code)
