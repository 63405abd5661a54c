"""``secure-mw users``, run as a real process (the default Argon2id cost, as in production)."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from secure_mw.crypto import PasswordHasher
from secure_mw.login import UsersFile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HASHER = PasswordHasher()


def cli(*args: str, stdin: str = "", cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SECURE_MW_USERS_FILE"}
    environ |= {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "secure_mw.cli", "users", *args],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env=environ, cwd=cwd)


def stored(path: Path) -> dict[str, dict[str, object]]:
    users: dict[str, dict[str, object]] = tomllib.loads(path.read_text("utf-8"))["users"]
    return users


def table(stdout: str) -> list[list[str]]:
    """The rows of `users list`, cells split on runs of two or more spaces."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()]


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    result = cli("add", "--file", str(path), "alice", "--display-name", "Alice Example",
                 "--email", "alice@example.com", "--group", "admins", "--group", "staff",
                 stdin="correct horse battery\n")
    assert result.returncode == 0, result.stderr
    return path


def test_add_reads_the_password_from_stdin(users_file: Path) -> None:
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    alice = stored(users_file)["alice"]
    assert alice["display_name"] == "Alice Example" and alice["email"] == "alice@example.com"
    assert alice["groups"] == ["admins", "staff"] and alice["disabled"] is False
    assert isinstance(alice["password"], str)
    assert alice["password"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert HASHER.verify(alice["password"], "correct horse battery")
    assert UsersFile(users_file).verify("Alice", "correct horse battery") is not None


def test_list_shows_users_but_never_a_hash(users_file: Path) -> None:
    assert cli("add", "--file", str(users_file), "bob", stdin="tulip ladder 94\n").returncode == 0
    result = cli("list", "--file", str(users_file))
    assert result.returncode == 0, result.stderr
    assert table(result.stdout) == [
        ["NAME", "DISPLAY NAME", "EMAIL", "GROUPS", "DISABLED"],
        ["alice", "Alice Example", "alice@example.com", "admins,staff", "no"],
        ["bob", "no"],
    ]
    assert "$argon2" not in result.stdout + result.stderr
    for user in stored(users_file).values():
        assert str(user["password"]) not in result.stdout


def test_generate_prints_the_password_once(users_file: Path) -> None:
    result = cli("add", "--file", str(users_file), "bob", "--generate", stdin="ignored\n")
    assert result.returncode == 0, result.stderr
    password = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1 and len(password) >= 20
    assert "shown only now" in result.stderr and password not in result.stderr
    assert HASHER.verify(str(stored(users_file)["bob"]["password"]), password)
    assert not HASHER.verify(str(stored(users_file)["bob"]["password"]), "ignored")


def test_passwd_changes_only_that_user(users_file: Path) -> None:
    cli("add", "--file", str(users_file), "bob", stdin="tulip ladder 94\n")
    bob_before = stored(users_file)["bob"]["password"]
    result = cli("passwd", "--file", str(users_file), "ALICE", stdin="lantern quarry 17\r\n")
    assert result.returncode == 0, result.stderr
    after = stored(users_file)
    assert HASHER.verify(str(after["alice"]["password"]), "lantern quarry 17")
    assert not HASHER.verify(str(after["alice"]["password"]), "correct horse battery")
    assert after["bob"]["password"] == bob_before
    assert after["alice"]["groups"] == ["admins", "staff"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600


def test_disable_and_enable(users_file: Path) -> None:
    result = cli("disable", "--file", str(users_file), "alice")
    assert result.returncode == 0, result.stderr
    assert stored(users_file)["alice"]["disabled"] is True
    assert table(cli("list", "--file", str(users_file)).stdout)[1][-1] == "yes"
    assert UsersFile(users_file).verify("alice", "correct horse battery") is None
    assert cli("enable", "--file", str(users_file), "alice").returncode == 0
    assert stored(users_file)["alice"]["disabled"] is False
    assert UsersFile(users_file).verify("alice", "correct horse battery") is not None


@pytest.mark.parametrize(("args", "stdin", "words"), [
    (("add", "ALICE"), "x\n", "already exists"),
    (("add", "bob", "--email", "bob"), "x\n", "users.bob.email"),
    (("add", "bob", "--group", "a,b"), "x\n", "comma"),
    (("add", "bob"), "\n", "no password given"),
    (("passwd", "carol"), "x\n", "no user 'carol'"),
    (("disable", "carol"), "", "no user 'carol'"),
    (("enable", "carol"), "", "no user 'carol'"),
])
def test_errors_exit_1_with_a_clear_message(
    users_file: Path, args: tuple[str, ...], stdin: str, words: str
) -> None:
    before = users_file.read_bytes()
    result = cli(*args, "--file", str(users_file), stdin=stdin)
    assert result.returncode == 1
    assert words in result.stderr and "Traceback" not in result.stderr
    assert users_file.read_bytes() == before


def test_missing_or_unsafe_files_are_refused(tmp_path: Path, users_file: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = cli("list", "--file", str(missing))
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert str(missing) in result.stderr and not missing.exists()
    users_file.chmod(0o644)
    result = cli("list", "--file", str(users_file))
    assert result.returncode == 1
    assert str(users_file) in result.stderr and "0644" in result.stderr
    users_file.chmod(0o600)
    users_file.write_text(users_file.read_text().replace("disabled = false", "disabled = 1"))
    result = cli("disable", "--file", str(users_file), "alice")
    assert result.returncode == 1 and "users.alice.disabled" in result.stderr
    assert "$argon2" not in result.stderr


def test_password_is_never_an_argument(users_file: Path) -> None:
    result = cli("add", "--file", str(users_file), "bob", "secret-on-argv", stdin="x\n")
    assert result.returncode == 2 and "unrecognized arguments" in result.stderr
    assert "bob" not in stored(users_file)


def test_which_file(tmp_path: Path) -> None:
    # default: users.toml in the current directory
    assert cli("add", "dora", cwd=tmp_path, stdin="plum orchard 42\n").returncode == 0
    assert "dora" in stored(tmp_path / "users.toml")
    # $SECURE_MW_USERS_FILE
    env_file = tmp_path / "env-users.toml"
    result = cli("add", "erin", cwd=tmp_path, stdin="plum orchard 42\n",
                 env={"SECURE_MW_USERS_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert list(stored(env_file)) == ["erin"]
    # local_users.file of --config, relative to the configuration file
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config = conf_dir / "secure_mw.toml"
    config.write_text('[local_users]\nfile = "people.toml"\n')
    result = cli("add", "--config", str(config), "fred", cwd=tmp_path, stdin="plum orchard 42\n")
    assert result.returncode == 0, result.stderr
    assert list(stored(conf_dir / "people.toml")) == ["fred"]
    # --file wins over both
    result = cli("list", "--file", str(env_file), "--config", str(config),
                 env={"SECURE_MW_USERS_FILE": str(tmp_path / "users.toml")})
    assert [row[0] for row in table(result.stdout)] == ["NAME", "erin"]
    # an invalid configuration is reported with its path
    config.write_text('[local_users]\nfile = 3\n')
    result = cli("list", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert str(config) in result.stderr and "local_users.file" in result.stderr



# -- the password policy --------------------------------------------------------------------


@pytest.mark.parametrize(("action", "name", "password", "words"), [
    ("add", "bob", "x", "use at least 12 characters; this one has 1"),
    ("add", "bob", "short pw", "use at least 12 characters; this one has 8"),
    ("add", "bob", "my name is BOB, ok?", "must not contain the user name"),
    ("add", "bob", "aaaaaaaaaaaaaaaa", "use at least 5 different characters; this one has 1"),
    ("add", "bob", "abcdeabcdeabcde", "one 5-character sequence repeated 3 times"),
    ("add", "bob", "abcdefghijklmnop", "plain run of consecutive characters"),
    ("add", "bob", "0987654321098", "plain run of consecutive characters"),
    ("add", "bob", "qwertyuiopasdf", "row of the keyboard"),
    ("passwd", "alice", "tiny", "use at least 12 characters; this one has 4"),
    ("passwd", "alice", "I am Alice, the admin", "must not contain the user name"),
    ("passwd", "alice", "\u00c5" * 13, "different characters"),
])
def test_a_weak_password_is_refused_saying_what_to_change(
    users_file: Path, action: str, name: str, password: str, words: str
) -> None:
    before = users_file.read_bytes()
    result = cli(action, "--file", str(users_file), name, stdin=password + "\n")
    assert result.returncode == 1
    assert words in result.stderr and "Traceback" not in result.stderr
    assert password not in result.stdout + result.stderr       # never echoed
    assert users_file.read_bytes() == before


def test_a_one_character_password_is_refused_on_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    result = cli("add", "--file", str(path), "bob", stdin="x\n")
    assert result.returncode == 1
    assert "at least 12 characters; this one has 1" in result.stderr
    assert not path.exists()


def test_min_length_and_blocklist_come_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "common.txt").write_text("sunflower meadow\nletmein\n\u00e9t\u00e9 d'amour\n")
    config = tmp_path / "secure_mw.toml"
    config.write_text('[local_users]\nfile = "users.toml"\npassword_min_length = 16\n'
                      'password_blocklist_file = "common.txt"\n')
    refused = {
        "fifteen chars!!": "use at least 16 characters; this one has 15",
        "SunFlower Meadow": "on the list of common passwords "
                            "(local_users.password_blocklist_file)",
        "letmein2024!!!!!!": "with digits or symbols added",
        "e\u0301te\u0301 d'amour 1984": "with digits or symbols added",  # same after NFKC
    }
    for password, words in refused.items():
        result = cli("add", "--config", str(config), "dora", stdin=password + "\n")
        assert result.returncode == 1, password
        assert words in result.stderr, result.stderr
        assert password not in result.stderr
    assert not (tmp_path / "users.toml").exists()
    result = cli("add", "--config", str(config), "dora", stdin="sunflower meadow at dusk\n")
    assert result.returncode == 0, result.stderr
    # --generate obeys the configured length too
    result = cli("passwd", "--config", str(config), "dora", "--generate")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) >= 16
    # an unreadable list is a configuration error naming the key
    (tmp_path / "common.txt").unlink()
    result = cli("list", "--config", str(config))
    assert result.returncode == 1 and "local_users.password_blocklist_file" in result.stderr


# -- passwd, end-sessions, delete, set-groups, set-email, set-display-name -------------------


def test_passwd_ends_sessions_unless_told_to_keep_them(users_file: Path) -> None:
    before = stored(users_file)["alice"].get("sessions_not_before")   # `users add` set it
    result = cli("passwd", "--file", str(users_file), "alice", "--keep-sessions",
                 stdin="lantern quarry 17\n")
    assert result.returncode == 0 and "sessions are kept" in result.stderr
    assert stored(users_file)["alice"].get("sessions_not_before") == before
    result = cli("passwd", "--file", str(users_file), "alice", stdin="lantern quarry 18\n")
    assert result.returncode == 0 and "sessions end" in result.stderr
    first = stored(users_file)["alice"]["sessions_not_before"]
    assert isinstance(first, datetime.datetime) and first.tzinfo is not None
    assert abs(first.timestamp() - time.time()) < 60
    assert cli("end-sessions", "--file", str(users_file), "alice").returncode == 0
    second = stored(users_file)["alice"]["sessions_not_before"]
    assert isinstance(second, datetime.datetime) and second > first
    assert cli("end-sessions", "--file", str(users_file), "carol").returncode == 1


def test_delete_asks_on_a_terminal_and_needs_yes_otherwise(users_file: Path) -> None:
    assert cli("add", "--file", str(users_file), "bob", stdin="tulip ladder 94\n"
               ).returncode == 0
    before = users_file.read_bytes()
    result = cli("delete", "--file", str(users_file), "bob")      # stdin is not a terminal
    assert result.returncode == 1 and "--yes" in result.stderr
    assert users_file.read_bytes() == before
    for answer, code in (("n\n", 1), ("\n", 1), ("y\n", 0)):
        leader, follower = os.openpty()
        try:
            os.write(leader, answer.encode())
            environ = {k: v for k, v in os.environ.items() if k != "SECURE_MW_USERS_FILE"}
            environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
            done = subprocess.run([sys.executable, "-m", "secure_mw.cli", "users", "delete",
                                   "--file", str(users_file), "bob"], stdin=follower,
                                  capture_output=True, text=True, timeout=120, env=environ)
        finally:
            os.close(leader)
            os.close(follower)
        assert done.returncode == code, (answer, done.stderr)
        assert "Delete user 'bob'" in done.stdout
    assert list(stored(users_file)) == ["alice"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    result = cli("delete", "--file", str(users_file), "bob", "--yes")
    assert result.returncode == 1 and "no user 'bob'" in result.stderr


def test_delete_with_a_config_removes_the_totp_enrolment_and_list_shows_it(
    tmp_path: Path
) -> None:
    from secure_mw.login.totp import FileTOTPStore

    config = tmp_path / "secure_mw.toml"
    config.write_text('[local_users]\nfile = "users.toml"\ntotp_file = "totp.json"\n')
    for name in ("alice", "bob"):
        assert cli("add", "--config", str(config), name, stdin="tulip ladder 94\n"
                   ).returncode == 0
    FileTOTPStore(tmp_path / "totp.json").set("bob", "sealed-for-bob")
    listed = cli("list", "--config", str(config))
    assert table(listed.stdout) == [
        ["NAME", "DISPLAY NAME", "EMAIL", "GROUPS", "DISABLED", "TOTP"],
        ["alice", "no", "no"], ["bob", "no", "yes"]]
    result = cli("delete", "--config", str(config), "bob", "--yes")
    assert result.returncode == 0 and "TOTP enrolment" in result.stderr
    assert FileTOTPStore(tmp_path / "totp.json").get("bob") is None
    assert list(stored(tmp_path / "users.toml")) == ["alice"]
    # without --config the command says an enrolment may remain
    result = cli("delete", "--file", str(tmp_path / "users.toml"), "alice", "--yes")
    assert result.returncode == 0 and "pass --config" in result.stderr


def test_set_groups_email_and_display_name(users_file: Path) -> None:
    before = stored(users_file)["alice"]["password"]
    assert cli("set-groups", "--file", str(users_file), "ALICE", "ops", "staff").returncode == 0
    assert stored(users_file)["alice"]["groups"] == ["ops", "staff"]
    result = cli("set-groups", "--file", str(users_file), "alice")
    assert result.returncode == 1 and "--none" in result.stderr
    assert cli("set-groups", "--file", str(users_file), "alice", "--none").returncode == 0
    assert stored(users_file)["alice"]["groups"] == []
    for args, words in ((("set-groups", "alice", "a,b"), "comma"),
                        (("set-groups", "alice", "x", "x"), "listed twice"),
                        (("set-email", "alice", "nope"), "users.alice.email"),
                        (("set-display-name", "alice", "A\u202eB"), "bidirectional"),
                        (("set-email", "carol", "c@example.com"), "no user 'carol'")):
        snapshot = users_file.read_bytes()
        result = cli(args[0], "--file", str(users_file), *args[1:])
        assert result.returncode == 1 and words in result.stderr, (args, result.stderr)
        assert users_file.read_bytes() == snapshot
    assert cli("set-email", "--file", str(users_file), "alice", "a@example.org").returncode == 0
    assert cli("set-display-name", "--file", str(users_file), "alice", "Alice A.").returncode == 0
    alice = stored(users_file)["alice"]
    assert alice["email"] == "a@example.org" and alice["display_name"] == "Alice A."
    assert alice["password"] == before
