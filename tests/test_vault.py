"""The secrets vault (secure_mw.vault), its command and `vault:NAME` settings."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from secure_mw import Settings
from secure_mw.errors import ConfigError
from secure_mw.vault import Vault, VaultError

PASS = "a long vault passphrase"
FAST = 100_000          # the lowest accepted iteration count: quick tests, same mechanism


def make(tmp_path: Path, **entries: str) -> Vault:
    vault = Vault.create(tmp_path / "secrets.vault", PASS, iterations=FAST)
    for name, value in entries.items():
        vault.set(name, value.encode())
    return vault


def test_round_trip_and_the_file_holds_no_value(tmp_path: Path) -> None:
    vault = make(tmp_path, oidc_client_secret="s3cret-value", redis_password="pw-123456")
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    again = Vault(vault.path, PASS)
    assert again.names() == ["oidc_client_secret", "redis_password"]
    assert again.get("oidc_client_secret") == b"s3cret-value"
    raw = vault.path.read_text()
    assert "s3cret-value" not in raw and "pw-123456" not in raw and PASS not in raw
    assert again.delete("redis_password") and not again.delete("redis_password")
    assert Vault(vault.path, PASS).names() == ["oidc_client_secret"]
    with pytest.raises(VaultError, match="no entry 'missing'"):
        again.get("missing")
    with pytest.raises(VaultError, match="exists already"):
        Vault.create(vault.path, PASS, iterations=FAST)


def test_a_wrong_passphrase_is_told_apart(tmp_path: Path) -> None:
    vault = make(tmp_path, a="1")
    with pytest.raises(VaultError, match="wrong passphrase"):
        Vault(vault.path, "another passphrase")


def test_an_entry_moved_or_changed_does_not_decrypt(tmp_path: Path) -> None:
    vault = make(tmp_path, admin_token="for admins", guest_token="for guests")
    data = json.loads(vault.path.read_text())
    data["entries"]["guest_token"] = data["entries"]["admin_token"]      # swap in a value
    vault.path.write_text(json.dumps(data))
    with pytest.raises(VaultError, match="moved from another name"):
        Vault(vault.path, PASS).get("guest_token")
    assert Vault(vault.path, PASS).get("admin_token") == b"for admins"
    data["entries"]["admin_token"] = data["entries"]["admin_token"][:-4] + "AAA="
    vault.path.write_text(json.dumps(data))
    with pytest.raises(VaultError, match="does not decrypt"):
        Vault(vault.path, PASS).get("admin_token")


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"format": "other"}',
                                     '{"format": "secure-mw-vault/1", "kdf": "pbkdf2-sha256",'
                                     ' "iterations": 10, "salt": "AAAA", "check": ""}'])
def test_a_damaged_file_gets_a_precise_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "v"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(VaultError, match="'" + str(path)):
        Vault(path, PASS)


def test_a_vault_readable_by_others_is_refused(tmp_path: Path) -> None:
    vault = make(tmp_path, a="1")
    vault.path.chmod(0o644)
    with pytest.raises(VaultError, match="0644"):
        Vault(vault.path, PASS)


def test_rekey_reencrypts_every_entry(tmp_path: Path) -> None:
    vault = make(tmp_path, a="one", b="two", c="three")
    before = json.loads(vault.path.read_text())
    assert vault.rekey("the new passphrase!") == 3
    after = json.loads(vault.path.read_text())
    assert after["salt"] != before["salt"]
    assert not set(after["entries"].values()) & set(before["entries"].values())
    with pytest.raises(VaultError, match="wrong passphrase"):
        Vault(vault.path, PASS)
    fresh = Vault(vault.path, "the new passphrase!")
    assert [fresh.get(n) for n in fresh.names()] == [b"one", b"two", b"three"]


def test_parallel_writers_lose_nothing(tmp_path: Path) -> None:
    make(tmp_path)
    path = tmp_path / "secrets.vault"
    writers = [Vault(path, PASS) for _ in range(6)]     # each its own view of the file

    def write(i: int) -> None:
        for j in range(5):
            writers[i].set(f"w{i}_{j}", f"value {i}.{j}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = Vault(path, PASS)
    assert len(final.names()) == 30
    assert final.get("w3_4") == b"value 3.4"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "../etc", "a/b"])
def test_entry_names_are_checked(tmp_path: Path, bad: str) -> None:
    vault = make(tmp_path)
    with pytest.raises(VaultError, match="entry name"):
        vault.set(bad, b"v")


# -- settings: <key>_file = "vault:NAME" ----------------------------------------------------


def _passphrase_file(tmp_path: Path, text: str = PASS, name: str = "vault.pass") -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def test_settings_read_secrets_from_the_vault(tmp_path: Path) -> None:
    vault = make(tmp_path, oidc="client-secret-from-vault", keys="k1\nk2")
    mapping = {
        "oidc": {"issuer": "https://idp.example", "client_id": "app",
                 "client_secret_file": "vault:oidc"},
        "vault": {"file": str(vault.path), "passphrase_file": str(_passphrase_file(tmp_path))},
    }
    settings = Settings.from_mapping(mapping, environ={})
    assert settings.oidc is not None and settings.oidc.client_secret == "client-secret-from-vault"
    assert "client-secret-from-vault" not in repr(settings)
    # the passphrase from the environment instead of a file
    by_env = Settings.from_mapping({**mapping, "vault": {"file": str(vault.path)}},
                                   environ={"SECURE_MW_VAULT__PASSPHRASE": PASS})
    assert by_env.oidc is not None and by_env.oidc.client_secret == "client-secret-from-vault"


def test_vault_problems_name_the_key(tmp_path: Path) -> None:
    vault = make(tmp_path, oidc="x")
    base = {"oidc": {"issuer": "https://idp.example", "client_id": "app",
                     "client_secret_file": "vault:nope"}}
    cases = [
        ({}, "needs [vault] file"),
        ({"file": str(vault.path)}, "passphrase is not given"),
        ({"file": str(vault.path), "passphrase_file": str(_passphrase_file(tmp_path))},
         "no entry 'nope'"),
        ({"file": str(vault.path),
          "passphrase_file": str(_passphrase_file(tmp_path, "wrong wrong wrong", "bad.pass"))},
         "wrong passphrase"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError) as caught:
            Settings.from_mapping({**base, "vault": section} if section else base, environ={})
        assert any(p.path == "oidc.client_secret_file" and message in p.message
                   for p in caught.value.problems), caught.value.problems


# -- the command ----------------------------------------------------------------------------


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SECURE_MW_VAULT_PASSPHRASE"}
    return subprocess.run([sys.executable, "-m", "secure_mw.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**environ, **(env or {})})


def test_the_vault_command(tmp_path: Path) -> None:
    path = str(tmp_path / "app.vault")
    first, second = _passphrase_file(tmp_path), tmp_path / "new.pass"
    second.write_text("a second long passphrase\n")
    second.chmod(0o600)
    init = cli("vault", "init", "--file", path, "--new-passphrase-file", str(first))
    assert init.returncode == 0, init.stderr
    stored = cli("vault", "set", "--file", path, "--passphrase-file", str(first),
                 "oidc_client_secret", stdin="the-client-secret\n")
    assert stored.returncode == 0 and "the-client-secret" not in stored.stderr
    env = {"SECURE_MW_VAULT_PASSPHRASE": PASS}
    got = cli("vault", "get", "--file", path, "oidc_client_secret", env=env)
    assert got.returncode == 0 and got.stdout == "the-client-secret\n"
    assert cli("vault", "list", "--file", path, env=env).stdout == "oidc_client_secret\n"
    wrong = cli("vault", "get", "--file", path, "oidc_client_secret",
                env={"SECURE_MW_VAULT_PASSPHRASE": "not the passphrase"})
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr and not wrong.stdout
    nopass = cli("vault", "list", "--file", path)
    assert nopass.returncode == 1 and "no vault passphrase" in nopass.stderr
    rekey = cli("vault", "rekey", "--file", path, "--passphrase-file", str(first),
                "--new-passphrase-file", str(second))
    assert rekey.returncode == 0 and "re-encrypted 1 entry" in rekey.stderr
    assert cli("vault", "get", "--file", path, "oidc_client_secret", "--passphrase-file",
               str(second)).stdout == "the-client-secret\n"
    gone = cli("vault", "delete", "--file", path, "--passphrase-file", str(second), "nope")
    assert gone.returncode == 1 and "no entry 'nope'" in gone.stderr
