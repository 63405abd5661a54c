"""``secure-mw users``, run as a real process (the default Argon2id cost, as in production)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
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
                 stdin="alice-password\n")
    assert result.returncode == 0, result.stderr
    return path


def test_add_reads_the_password_from_stdin(users_file: Path) -> None:
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    alice = stored(users_file)["alice"]
    assert alice["display_name"] == "Alice Example" and alice["email"] == "alice@example.com"
    assert alice["groups"] == ["admins", "staff"] and alice["disabled"] is False
    assert isinstance(alice["password"], str)
    assert alice["password"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert HASHER.verify(alice["password"], "alice-password")
    assert UsersFile(users_file).verify("Alice", "alice-password") is not None


def test_list_shows_users_but_never_a_hash(users_file: Path) -> None:
    assert cli("add", "--file", str(users_file), "bob", stdin="bob-password\n").returncode == 0
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
    cli("add", "--file", str(users_file), "bob", stdin="bob-password\n")
    bob_before = stored(users_file)["bob"]["password"]
    result = cli("passwd", "--file", str(users_file), "ALICE", stdin="new-password\r\n")
    assert result.returncode == 0, result.stderr
    after = stored(users_file)
    assert HASHER.verify(str(after["alice"]["password"]), "new-password")
    assert not HASHER.verify(str(after["alice"]["password"]), "alice-password")
    assert after["bob"]["password"] == bob_before
    assert after["alice"]["groups"] == ["admins", "staff"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600


def test_disable_and_enable(users_file: Path) -> None:
    result = cli("disable", "--file", str(users_file), "alice")
    assert result.returncode == 0, result.stderr
    assert stored(users_file)["alice"]["disabled"] is True
    assert table(cli("list", "--file", str(users_file)).stdout)[1][-1] == "yes"
    assert UsersFile(users_file).verify("alice", "alice-password") is None
    assert cli("enable", "--file", str(users_file), "alice").returncode == 0
    assert stored(users_file)["alice"]["disabled"] is False
    assert UsersFile(users_file).verify("alice", "alice-password") is not None


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
    assert cli("add", "dora", cwd=tmp_path, stdin="pw\n").returncode == 0
    assert "dora" in stored(tmp_path / "users.toml")
    # $SECURE_MW_USERS_FILE
    env_file = tmp_path / "env-users.toml"
    result = cli("add", "erin", cwd=tmp_path, stdin="pw\n",
                 env={"SECURE_MW_USERS_FILE": str(env_file)})
    assert result.returncode == 0, result.stderr
    assert list(stored(env_file)) == ["erin"]
    # local_users.file of --config, relative to the configuration file
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config = conf_dir / "secure_mw.toml"
    config.write_text('[local_users]\nfile = "people.toml"\n')
    result = cli("add", "--config", str(config), "fred", cwd=tmp_path, stdin="pw\n")
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
