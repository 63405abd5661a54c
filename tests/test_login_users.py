"""The built-in login's users file (:mod:`secure_mw.login.users`).

Hashes use cheap Argon2id parameters (t=1, m=8 MiB, p=1) so the suite stays fast; time
moves only through an injected clock (never sleep).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_mw.crypto import PasswordHasher
from secure_mw.errors import ConfigError
from secure_mw.login import (
    UnknownUserError,
    User,
    UserExistsError,
    UsersFile,
    UsersFileError,
    normalize_username,
)
from secure_mw.login.policy import PasswordPolicy, PasswordPolicyError
from secure_mw.login.users import MAX_USERNAME, _dump, _parse
from tests.clock import Clock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOGGER = "tests.login_users"


class CountingHasher(PasswordHasher):
    """A cheap hasher that counts how often it hashes and verifies."""

    def __init__(self, **params: int) -> None:
        super().__init__(**({"time_cost": 1, "memory_cost": 8 * 1024, "parallelism": 1}
                            | params))
        self.hashed = 0
        self.verified: list[str] = []

    def hash(self, password: str) -> str:
        self.hashed += 1
        return super().hash(password)

    def verify(self, phc: str, password: str) -> bool:
        self.verified.append(phc)
        return super().verify(phc, password)


CHEAP = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
ALICE_HASH = CHEAP.hash("alice-password")
BOB_HASH = CHEAP.hash("bob-password")


def users_toml(*, alice: str = ALICE_HASH, bob_disabled: bool = False, extra: str = "") -> str:
    return (
        "# hand-written\n"
        "[users.alice]\n"
        'display_name = "Alice Example"\n'
        'email = "alice@example.com"\n'
        'groups = ["admins", "staff"]\n'
        f'password = "{alice}"\n'
        "disabled = false\n"
        "\n"
        "[users.bob]\n"
        f'password = "{BOB_HASH}"\n'
        f"disabled = {'true' if bob_disabled else 'false'}\n" + extra
    )


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def bump_mtime(path: Path, seconds: int = 10) -> None:
    st_ = path.stat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    return write(tmp_path / "users.toml", users_toml())


def open_users(path: Path, hasher: PasswordHasher, clock: Clock | None = None) -> UsersFile:
    return UsersFile(path, hasher=hasher, clock=clock or Clock(1000.0), check_interval=2.0,
                     logger=logging.getLogger(LOGGER))


# -- loading ------------------------------------------------------------------------------


def test_load_reads_every_field_and_defaults(users_path: Path, hasher: CountingHasher) -> None:
    users = open_users(users_path, hasher)
    alice = users.get("alice")
    assert alice == User("alice", "Alice Example", "alice@example.com", ("admins", "staff"),
                         ALICE_HASH, False)
    bob = users.get("bob")
    assert bob == User("bob", "", "", (), BOB_HASH, False)
    assert [u.username for u in users.users()] == ["alice", "bob"]
    assert users.get("carol") is None
    assert ALICE_HASH not in repr(alice) and "password_hash" not in repr(alice)


def test_usernames_are_normalized(users_path: Path, hasher: CountingHasher) -> None:
    users = open_users(users_path, hasher)
    for spelling in ("ALICE", " alice ", "Alice\t", "\uff41\uff4c\uff49\uff43\uff45"):
        found = users.get(spelling)
        assert found is not None and found.username == "alice", spelling
    assert users.get("a" * 10_000) is None
    assert users.get(42) is None  # type: ignore[arg-type]


def test_one_normalization_for_the_file_and_the_regulation() -> None:
    from secure_mw.guards import layers, regulation
    from secure_mw.login import users

    assert users.normalize_username is regulation.normalize_username \
        is layers.normalize_username
    assert normalize_username("STRASSE") == normalize_username("stra\u00dfe")


def test_missing_file_is_an_empty_database_until_created(
    tmp_path: Path, hasher: CountingHasher, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.toml"
    with caplog.at_level(logging.INFO, LOGGER):
        users = open_users(path, hasher, clock)
    assert users.users() == [] and users.get("alice") is None
    assert any(r.levelno == logging.WARNING and "does not exist" in r.getMessage()
               and str(path) in r.getMessage() for r in caplog.records)
    write(path, users_toml())
    assert users.get("alice") is None  # not looked at before check_interval
    clock.advance(2.0)
    assert users.get("alice") is not None


def test_reload_on_change_is_paced_by_the_clock(
    users_path: Path, hasher: CountingHasher, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    users = open_users(users_path, hasher, clock)
    before = users_path.stat()
    # Rewrite in place with the same size and inode, then restore the old mtime: the ctime
    # still moves (it cannot be set back), so the new content is seen — once check_interval
    # has passed.
    text = users_toml().replace("Alice Example", "Alice Changed")
    assert len(text) == len(users_toml())
    with open(users_path, "r+", encoding="utf-8") as fh:
        fh.write(text)
    os.utime(users_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    clock.advance(1.9)
    assert users.get("alice").display_name == "Alice Example"  # type: ignore[union-attr]
    clock.advance(0.1)
    with caplog.at_level(logging.INFO, LOGGER):
        assert users.get("alice").display_name == "Alice Changed"  # type: ignore[union-attr]
    assert any("reloaded" in r.getMessage() for r in caplog.records)
    # an atomic replace (new inode) is seen too
    replacement = users_path.with_name("new.toml")
    write(replacement, users_toml(bob_disabled=True))
    os.replace(replacement, users_path)
    clock.advance(2)
    assert [u.disabled for u in users.users()] == [False, True]


def test_broken_new_version_keeps_the_last_good_one(
    users_path: Path, hasher: CountingHasher, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    users = open_users(users_path, hasher, clock)
    bcrypt = "$2b$12$" + "x" * 53
    write(users_path, users_toml(alice=bcrypt))
    bump_mtime(users_path)
    clock.advance(2)
    with caplog.at_level(logging.INFO, LOGGER):
        alice = users.get("alice")
        clock.advance(2)
        users.get("alice")  # same broken version: not parsed or logged again
    assert alice is not None and alice.password_hash == ALICE_HASH
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "users.alice.password" in warnings[0] and "last good" in warnings[0]
    assert str(users_path) in warnings[0]
    assert bcrypt not in warnings[0] and "x" * 20 not in warnings[0]
    # a TOML syntax error names its line
    caplog.clear()
    write(users_path, users_toml() + "[users.carol\n")
    bump_mtime(users_path, 20)
    clock.advance(2)
    with caplog.at_level(logging.WARNING, LOGGER):
        assert users.get("alice") is not None and users.get("carol") is None
    assert any("line 12" in r.getMessage() for r in caplog.records)
    # a fixed file is picked up again
    write(users_path, users_toml(extra='\n[users.carol]\npassword = "' + BOB_HASH + '"\n'))
    bump_mtime(users_path, 30)
    clock.advance(2)
    assert users.get("carol") is not None


def test_a_file_that_disappears_keeps_the_last_good_version(
    users_path: Path, hasher: CountingHasher, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    users = open_users(users_path, hasher, clock)
    users_path.unlink()
    clock.advance(2)
    with caplog.at_level(logging.WARNING, LOGGER):
        assert users.get("alice") is not None
    assert any("disappeared" in r.getMessage() for r in caplog.records)


BAD_FILES = [
    ('[users.alice]\npassword = "H"\nshell = "/bin/sh"\n', "users.alice.shell", "unknown key"),
    ('[users.alice]\npassword = "H"\ngroups = "admins"\n', "users.alice.groups", "array"),
    ('[users.alice]\npassword = "H"\ngroups = ["a", 3]\n', "users.alice.groups[1]", "string"),
    ('[users.alice]\npassword = "H"\ngroups = ["a,b"]\n', "users.alice.groups[0]", "comma"),
    ('[users.alice]\npassword = "H"\ndisabled = "no"\n', "users.alice.disabled", "true or false"),
    ('[users.alice]\npassword = "H"\nemail = "alice"\n', "users.alice.email", "e-mail"),
    ('[users.alice]\npassword = "H"\ndisplay_name = "A\\u202eB"\n', "users.alice.display_name",
     "bidirectional"),
    ('[users.alice]\ndisplay_name = "A"\n', "users.alice.password", "required"),
    ('[users.alice]\npassword = 5\n', "users.alice.password", "not an integer"),
    ('[users.alice]\npassword = "$2b$12$abcdefghijklmnopqrstuv"\n', "users.alice.password",
     "$2b$"),
    ('[users.alice]\npassword = "$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ'
     '$aGFzaGhhc2hoYXNoaGFzaA"\n', "users.alice.password", "$argon2i$"),
    ('[users.alice]\npassword = "hunter2"\n', "users.alice.password", "Argon2id"),
    ('[users."al\\u0000ice"]\npassword = "H"\n', 'users."al\\u0000ice"', "control"),
    ('[users."al\\u200bice"]\npassword = "H"\n', 'users."al\\u200bice"', "invisible"),
    ('[users." alice"]\npassword = "H"\n', 'users." alice"', "white space"),
    (f'[users.{"a" * (MAX_USERNAME + 1)}]\npassword = "H"\n', 'users."aaaa', "at most 128"),
    ('[users.alice]\npassword = "H"\n[users.ALICE]\npassword = "H"\n', "users.ALICE",
     "same user as users.alice"),
    ('[users.alice]\npassword = "H"\n[users."\\uff41lice"]\npassword = "H"\n',
     'users."\uff41lice"', "same user"),
    ('[users]\nalice = "H"\n', "users.alice", "must be a table"),
    ('users = 3\n', "users", "table"),
    ('[user.alice]\npassword = "H"\n', "user", "unknown key"),
]


@pytest.mark.parametrize(("text", "where", "words"), BAD_FILES)
def test_invalid_file_at_start_names_the_user_and_key(
    tmp_path: Path, hasher: CountingHasher, text: str, where: str, words: str
) -> None:
    path = write(tmp_path / "users.toml", text.replace('"H"', f'"{ALICE_HASH}"'))
    with pytest.raises(UsersFileError) as caught:
        open_users(path, hasher)
    assert isinstance(caught.value, ConfigError)
    assert any(p.path.startswith(where) and words in p.message
               for p in caught.value.problems), caught.value.problems
    message = str(caught.value)
    assert str(path) in message
    assert ALICE_HASH not in message and "hunter2" not in message
    assert "c2FsdHNhbHQ" not in message and "abcdefghijklmnop" not in message


def test_every_problem_is_reported_at_once(tmp_path: Path, hasher: CountingHasher) -> None:
    path = write(tmp_path / "users.toml",
                 '[users.alice]\nemail = "x"\n[users.bob]\npassword = "y"\ncolor = 1\n')
    with pytest.raises(UsersFileError) as caught:
        open_users(path, hasher)
    assert {p.path for p in caught.value.problems} == {
        "users.alice.email", "users.alice.password", "users.bob.password", "users.bob.color"}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_file_readable_by_others_is_refused(
    tmp_path: Path, hasher: CountingHasher, mode: int
) -> None:
    path = write(tmp_path / "users.toml", users_toml(), mode=mode)
    with pytest.raises(UsersFileError) as caught:
        open_users(path, hasher)
    assert str(path) in str(caught.value) and f"{mode:04o}" in str(caught.value)


def test_not_utf8_is_refused(tmp_path: Path, hasher: CountingHasher) -> None:
    path = tmp_path / "users.toml"
    path.write_bytes(b"[users.\xff]\n")
    path.chmod(0o600)
    with pytest.raises(UsersFileError, match="UTF-8"):
        open_users(path, hasher)


# -- verify -------------------------------------------------------------------------------


def test_verify_spends_exactly_one_argon2_verification_on_every_path(
    tmp_path: Path, hasher: CountingHasher
) -> None:
    users = open_users(write(tmp_path / "users.toml", users_toml(bob_disabled=True)), hasher)

    def attempt(name: str, password: str) -> tuple[User | None, list[str]]:
        hasher.verified.clear()
        return users.verify(name, password), list(hasher.verified)

    user, spent = attempt("Alice", "alice-password")
    assert user is not None and user.username == "alice" and spent == [ALICE_HASH]
    user, spent = attempt("alice", "wrong")
    assert user is None and spent == [ALICE_HASH]
    user, spent = attempt("bob", "bob-password")  # disabled: right password, still refused
    assert user is None and spent == [BOB_HASH]
    assert hasher.hashed == 0
    user, spent = attempt("mallory", "alice-password")
    assert user is None and len(spent) == 1 and spent[0] not in (ALICE_HASH, BOB_HASH)
    assert spent[0].startswith("$argon2id$v=19$m=8192,t=1,p=1$")  # this hasher's parameters
    dummy = spent[0]
    user, spent = attempt("x" * 10_000, "")
    assert user is None and spent == [dummy]  # the same dummy, made once
    assert hasher.hashed == 1


def test_needs_rehash_and_rehash_on_login(tmp_path: Path) -> None:
    stronger = CountingHasher(time_cost=2)
    users = open_users(write(tmp_path / "users.toml", users_toml()), stronger)
    alice = users.verify("alice", "alice-password")
    assert alice is not None and users.needs_rehash(alice)  # made with t=1
    upgraded = stronger.hash("alice-password")
    assert users.set_hash("alice", upgraded, expected=alice.password_hash) is True
    alice = users.verify("alice", "alice-password")
    assert alice is not None and not users.needs_rehash(alice)
    # a password changed meanwhile is not overwritten by a late rehash of the old one
    users.set_password("alice", "changed-by-admin")
    version = users.path.stat()
    assert users.set_hash("alice", stronger.hash("alice-password"), expected=upgraded) is False
    assert users.path.stat().st_ino == version.st_ino  # nothing written
    assert users.verify("alice", "changed-by-admin") is not None
    with pytest.raises(ValueError, match="Argon2id"):
        users.set_hash("alice", "$2b$12$" + "x" * 53)


# -- writing ------------------------------------------------------------------------------


def test_writes_are_atomic_0600_and_keep_other_users(
    users_path: Path, hasher: CountingHasher
) -> None:
    users = open_users(users_path, hasher)
    inode = users_path.stat().st_ino
    carol = users.add("carol", password="velvet harbor 22", display_name="Carol \u00c7",
                      email="carol@example.com", groups=["staff"])
    assert carol == users.get("CAROL")
    assert users_path.stat().st_ino != inode  # replaced, not rewritten in place
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600
    users.set_password("alice", "new harbour lamp 5")
    users.set_disabled("bob", True)
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in users_path.parent.iterdir()) == ["users.toml",
                                                                    "users.toml.lock"]
    data = tomllib.loads(users_path.read_text(encoding="utf-8"))
    assert list(data["users"]) == ["alice", "bob", "carol"]
    assert data["users"]["alice"]["groups"] == ["admins", "staff"]
    assert data["users"]["bob"] == {"display_name": "", "email": "", "groups": [],
                                    "password": BOB_HASH, "disabled": True}
    # a fresh reader sees what the writer saw
    again = open_users(users_path, hasher)
    assert again.users() == users.users()
    assert again.verify("alice", "new harbour lamp 5") is not None
    assert again.verify("alice", "alice-password") is None
    assert again.verify("carol", "velvet harbor 22") is not None
    assert again.verify("bob", "bob-password") is None
    users.set_disabled("BOB", False)
    assert again.get("bob").disabled is True  # type: ignore[union-attr]  # get() is paced
    assert again.verify("bob", "bob-password") is not None   # a login looks now


def test_a_writer_starts_from_the_file_not_from_its_memory(
    users_path: Path, hasher: CountingHasher
) -> None:
    first, second = open_users(users_path, hasher), open_users(users_path, hasher)
    first.add("carol", password="plum orchard 41")
    second.add("dave", password="plum orchard 42")  # second has not reloaded: carol must survive
    assert [u.username for u in open_users(users_path, hasher).users()] == [
        "alice", "bob", "carol", "dave"]
    with pytest.raises(UserExistsError, match="carol"):
        second.add("Carol", password="plum orchard 43")
    # a writer looks at the file, not at a copy that is still within check_interval
    third = open_users(users_path, hasher)
    first.add("erin", password="plum orchard 44")
    third.set_password("erin", "plum orchard 45")
    assert open_users(users_path, hasher).verify("erin", "plum orchard 45") is not None


def test_add_creates_a_0600_file(tmp_path: Path, hasher: CountingHasher) -> None:
    path = tmp_path / "state" / "users.toml"
    old_umask = os.umask(0o022)
    try:
        users = open_users(path, hasher)
        users.add("alice", password="plum orchard 46")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("users.toml.lock").stat().st_mode) == 0o600
    assert [u.username for u in open_users(path, hasher).users()] == ["alice"]


def test_writer_errors(users_path: Path, hasher: CountingHasher, clock: Clock) -> None:
    users = open_users(users_path, hasher, clock)
    before = users_path.read_bytes()
    with pytest.raises(UserExistsError, match="alice"):
        users.add("ALICE", password="x")
    with pytest.raises(ValueError, match="white space"):
        users.add(" carol", password="x")
    with pytest.raises(ValueError, match=r"users\.carol\.email"):
        users.add("carol", password="x", email="not-an-address")
    with pytest.raises(ValueError, match="comma"):
        users.add("carol", password="x", groups=["a,b"])
    with pytest.raises(ValueError, match="control"):
        users.add("car\nol", password="x")
    with pytest.raises(UnknownUserError, match="no user 'mallory'"):
        users.set_password("mallory", "x")
    with pytest.raises(UnknownUserError):
        users.set_disabled("mallory", True)
    assert hasher.hashed == 0  # refused before any costly hash
    with pytest.raises(PasswordPolicyError, match="must not be empty"):
        users.add("carol", password="")
    with pytest.raises(PasswordPolicyError, match="at least 12 characters; this one has 1"):
        users.add("carol", password="x")
    with pytest.raises(PasswordPolicyError, match="at least 12 characters; this one has 2"):
        users.set_password("alice", "xy")
    assert users_path.read_bytes() == before
    # a broken file is not overwritten
    write(users_path, "[users.alice]\nemail = 3\n")
    with pytest.raises(UsersFileError, match=r"users\.alice\.email"):
        users.set_disabled("alice", True)
    assert users_path.read_text() == "[users.alice]\nemail = 3\n"


def test_concurrent_adds_from_threads_all_land(users_path: Path) -> None:
    hasher = CountingHasher()
    shared = open_users(users_path, hasher)
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def add(i: int) -> None:
        # half share one object, half have their own (as separate processes would)
        target = shared if i % 2 else open_users(users_path, hasher)
        start.wait()
        try:
            target.add(f"user{i:02d}", password=f"secret number {i:02d}", groups=[f"g{i}"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    final = open_users(users_path, hasher)
    names = [u.username for u in final.users()]
    assert names[:2] == ["alice", "bob"]
    assert sorted(names[2:]) == [f"user{i:02d}" for i in range(12)]
    assert final.verify("user07", "secret number 07") is not None
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600


# -- the TOML writer ----------------------------------------------------------------------

_name_chars = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"))
_text_chars = st.characters(blacklist_categories=("Cs",),
                            blacklist_characters="\u061c\u200e\u200f\u202a\u202b\u202c"
                                                 "\u202d\u202e\u2066\u2067\u2068\u2069"
                                                 "\u2028\u2029\x85")


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(_name_chars, min_size=1, max_size=40).filter(
        lambda n: n == n.strip() and normalize_username(n) != ""),
    display_name=st.text(_text_chars.filter(lambda c: c >= " " and not "\x7f" <= c <= "\x9f"),
                         max_size=40),
    groups=st.lists(st.text(st.sampled_from("abc-_ \u00e9\u4e2d\"\\"), min_size=1, max_size=8)
                    .filter(lambda g: g == g.strip()), unique=True, max_size=4),
    disabled=st.booleans(),
)
def test_written_file_reads_back_the_same(
    name: str, display_name: str, groups: list[str], disabled: bool
) -> None:
    user = User(name, display_name, "x@example.org", tuple(groups), ALICE_HASH, disabled)
    other = User("bob", "", "", (), BOB_HASH, False)
    parsed, problems = _parse(_dump([other, user]))
    assert problems == [] and list(parsed.values()) == [other, user]
    empty, problems = _parse(_dump([]))
    assert problems == [] and empty == {}


# -- looking now (the session check), and edits the time stamps do not show ---------------


def coarse_signatures(monkeypatch: pytest.MonkeyPatch, granularity_ns: int = 10**18
                      ) -> None:
    """Make the file system's time stamps coarse (by default: they never move), so edits
    of the same size have one signature, whatever the real file system records."""
    import secure_mw.login.users as module

    real = module._signature

    def coarse(path: str | os.PathLike[str]) -> tuple[int, ...] | None:
        sig = real(path)
        if sig is None or len(sig) < 6:
            return sig
        return (*sig[:3], sig[3] // granularity_ns * granularity_ns,
                sig[4] // granularity_ns * granularity_ns, sig[5])

    monkeypatch.setattr(module, "_signature", coarse)


def rewrite_in_place(path: Path, text: str) -> None:
    with open(path, "r+", encoding="utf-8") as fh:
        fh.write(text)
        fh.truncate()


def test_an_edit_within_one_time_stamp_tick_is_seen(
    users_path: Path, hasher: CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    coarse_signatures(monkeypatch)
    users = UsersFile(users_path, hasher=hasher, clock=Clock(1000.0),
                      logger=logging.getLogger(LOGGER), wall_clock=lambda: 1.0)  # "just now"
    first = users_toml().replace("Alice Example", "Alice One....")
    second = users_toml().replace("Alice Example", "Alice Two....")
    for text, expected in ((first, "Alice One...."), (second, "Alice Two....")):
        rewrite_in_place(users_path, text)        # same size, same coarse time stamps
        user = users.lookup_now("alice")
        assert user is not None and user.display_name == expected


def test_a_file_with_old_time_stamps_is_only_stated(
    users_path: Path, hasher: CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secure_mw.login.users as module
    from secure_mw._files import read_secret_file as real_read

    reads: list[object] = []

    def counting_read(path: str | os.PathLike[str], **kwargs: str) -> bytes:
        reads.append(path)
        return real_read(path, **kwargs)

    monkeypatch.setattr(module, "read_secret_file", counting_read)
    wall = Clock(os.stat(users_path).st_ctime + 1.0)   # the last change: one second ago
    users = UsersFile(users_path, hasher=hasher, logger=logging.getLogger(LOGGER),
                      wall_clock=wall)
    assert len(reads) == 1
    users.lookup_now("alice")
    assert len(reads) == 2          # too recent to trust: the content is compared
    wall.advance(5)
    users.lookup_now("alice")       # now old enough: from here on, a stat only
    assert len(reads) == 3
    for _ in range(5):
        assert users.lookup_now("alice") is not None
    assert len(reads) == 3
    assert asyncio.run(users.alookup_now("bob")) == users.get("bob")
    assert len(reads) == 3
    bump_mtime(users_path)          # a real change moves the stamps: read again
    users.lookup_now("alice")
    assert len(reads) == 4


class SignallingLock:
    """A lock that says when a second thread starts waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiter = threading.Event()

    def acquire(self, blocking: bool = True) -> bool:
        if self._lock.locked():
            self.waiter.set()
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_lookup_now_ignores_check_interval_and_waits_for_a_writer(
    users_path: Path, hasher: CountingHasher, clock: Clock
) -> None:
    users = open_users(users_path, hasher, clock)
    write(users_path, users_toml(bob_disabled=True))
    bump_mtime(users_path)
    assert users.get("bob").disabled is False  # type: ignore[union-attr]  # paced
    bob = users.lookup_now("BOB")
    assert bob is not None and bob.disabled is True
    write(users_path, users_toml())
    bump_mtime(users_path, 20)
    # Another thread is reloading or writing: the lookup waits for it rather than answer
    # from the version held (which would let a deleted user's requests through).
    answers: list[User | None] = []
    users._lock = SignallingLock()  # type: ignore[assignment]
    with users._lock:
        waiting = threading.Thread(target=lambda: answers.append(users.lookup_now("bob")))
        waiting.start()
        assert users._lock.waiter.wait(timeout=30)    # it has asked for the lock ...
        assert answers == []                          # ... and cannot answer without it
    waiting.join(timeout=30)
    assert answers[0] is not None and answers[0].disabled is False
    write(users_path, users_toml(bob_disabled=True))
    bump_mtime(users_path, 30)
    bob = asyncio.run(users.alookup_now("bob"))
    assert bob is not None and bob.disabled is True
    assert users.lookup_now("mallory") is None


def test_a_reader_without_the_lock_never_pairs_new_stamps_with_old_users(
    users_path: Path, hasher: CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alookup_now answers without the lock once the signature matches: the reload must
    publish the new users before the signature that vouches for them."""
    import secure_mw.login.users as module

    users = UsersFile(users_path, hasher=hasher, logger=logging.getLogger(LOGGER),
                      wall_clock=lambda: 4e9)            # every time stamp is old: trusted
    seen: list[tuple[bool, bool]] = []
    real_state_of = module._State.of

    def spying(found: dict[str, User]) -> module._State:
        # at the moment the new users are built, the old signature must still be held
        seen.append((users._seen == module._signature(users_path), "bob" in found))
        return real_state_of(found)

    monkeypatch.setattr(module._State, "of", staticmethod(spying))
    write(users_path, users_toml().replace("[users.bob]", "[users.bobby]"))
    bump_mtime(users_path)
    assert asyncio.run(users.alookup_now("bob")) is None
    assert seen == [(False, False)]


def test_an_empty_or_cut_short_file_of_a_moment_ago_is_being_written(
    users_path: Path, hasher: CountingHasher, caplog: pytest.LogCaptureFixture
) -> None:
    """An editor that truncates the file and then writes it in place shows an empty (valid
    TOML: no users) or cut-short version in between, which ended every session. Such a
    version changed less than RACY_SECONDS ago is taken as being written: the last good
    one is kept (logged once) until a complete one appears, or it is old enough."""
    changed = os.stat(users_path).st_ctime
    wall = Clock(changed)
    users = UsersFile(users_path, hasher=hasher, logger=logging.getLogger(LOGGER),
                      wall_clock=wall)
    text = users_toml()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for partial in ("", "\n\n", text[:text.index("[users.bob]") + 5]):
            rewrite_in_place(users_path, partial)
            wall.now = os.stat(users_path).st_ctime + 0.5          # a moment ago
            assert users.lookup_now("alice") is not None and users.lookup_now("bob") is not None
            assert users.lookup_now("alice") is not None            # logged once per version
    lines = [r.getMessage() for r in caplog.records if "being written" in r.getMessage()]
    assert len(lines) == 3 and "empty" in lines[0] and "cut short" in lines[2]
    rewrite_in_place(users_path, text.replace("Alice Example", "Alice Again"))
    wall.now = os.stat(users_path).st_ctime + 0.5
    alice = users.lookup_now("alice")                  # complete: used at once
    assert alice is not None and alice.display_name == "Alice Again"
    rewrite_in_place(users_path, "")
    wall.now = os.stat(users_path).st_ctime + 0.5
    assert users.lookup_now("alice") is not None
    wall.advance(2.0)                                  # still empty two seconds later: meant
    assert users.lookup_now("alice") is None and users.users() == []


def test_a_user_added_again_under_a_name_ends_what_the_old_one_had(
        users_path: Path, hasher: CountingHasher) -> None:
    wall = Clock(1_800_000_000.5)
    users = UsersFile(users_path, hasher=hasher, logger=logging.getLogger(LOGGER),
                      wall_clock=wall)
    users.delete("bob")
    wall.advance(10)
    bob = users.add("bob", password="a new person's pw 42", groups=["admins"])
    assert bob.sessions_not_before == 1_800_000_010.5
    assert open_users(users_path, hasher).get("bob").sessions_not_before == \
        1_800_000_010.5  # type: ignore[union-attr]


# -- more writers -------------------------------------------------------------------------


def test_update_delete_and_end_sessions(users_path: Path, hasher: CountingHasher) -> None:
    wall = Clock(1_800_000_000.25)
    users = UsersFile(users_path, hasher=hasher, logger=logging.getLogger(LOGGER),
                      wall_clock=wall)
    alice = users.update("ALICE", groups=["ops"], email="a@example.org")
    assert (alice.groups, alice.email, alice.display_name) == (("ops",), "a@example.org",
                                                               "Alice Example")
    assert alice.password_hash == ALICE_HASH
    inode = users_path.stat().st_ino
    users.update("alice", groups=["ops"])           # no change: nothing written
    assert users_path.stat().st_ino == inode
    with pytest.raises(ValueError, match=r"users\.alice\.groups\[0\]"):
        users.update("alice", groups=["a,b"])
    with pytest.raises(ValueError, match=r"users\.alice\.display_name"):
        users.update("alice", display_name="x\u202e")
    with pytest.raises(UnknownUserError):
        users.update("mallory", groups=[])
    users.end_sessions("bob")
    assert users.get("bob").sessions_not_before == 1_800_000_000.25  # type: ignore[union-attr]
    text = users_path.read_text()
    assert "sessions_not_before = 2027-01-15T08:00:00.250000Z" in text
    assert tomllib.loads(text)["users"]["bob"]["sessions_not_before"].timestamp() == \
        1_800_000_000.25
    wall.advance(60)
    users.set_password("bob", "tulip ladder 94", end_sessions=False)
    assert users.get("bob").sessions_not_before == 1_800_000_000.25  # type: ignore[union-attr]
    users.set_password("bob", "tulip ladder 95")
    assert users.get("bob").sessions_not_before == 1_800_000_060.25  # type: ignore[union-attr]
    removed = users.delete("BOB")
    assert removed.username == "bob" and users.get("bob") is None
    assert [u.username for u in open_users(users_path, hasher).users()] == ["alice"]
    with pytest.raises(UnknownUserError):
        users.delete("bob")
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600


@pytest.mark.parametrize(("value", "ok"), [
    ("2026-01-02T03:04:05Z", True), ("2026-01-02T03:04:05.5+02:00", True),
    ("1767322800", True), ("2026-01-02T03:04:05", False), ("2026-01-02", False),
    ('"yesterday"', False), ("true", False), ("-1", False),
])
def test_sessions_not_before_must_be_an_instant(
    tmp_path: Path, hasher: CountingHasher, value: str, ok: bool
) -> None:
    path = write(tmp_path / "users.toml", users_toml(extra=f"sessions_not_before = {value}\n"))
    if ok:
        bob = open_users(path, hasher).get("bob")
        assert bob is not None and bob.sessions_not_before > 1.7e9
        parsed, problems = _parse(_dump([bob]))
        assert problems == [] and parsed["bob"] == bob
    else:
        with pytest.raises(UsersFileError) as caught:
            open_users(path, hasher)
        assert [p.path for p in caught.value.problems] == ["users.bob.sessions_not_before"]


def test_a_users_file_without_a_policy_takes_any_password(tmp_path: Path,
                                                         hasher: CountingHasher) -> None:
    users = UsersFile(tmp_path / "users.toml", hasher=hasher, policy=None)
    users.add("alice", password="a")
    assert users.verify("alice", "a") is not None
    strict = UsersFile(tmp_path / "users.toml", hasher=hasher,
                       policy=PasswordPolicy(min_length=20))
    with pytest.raises(PasswordPolicyError, match="at least 20 characters; this one has 16"):
        strict.set_password("alice", "sixteen chars ok")
