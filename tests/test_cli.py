"""The secure-mw command, run as a real process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from secure_mw.crypto import KeyRing, PasswordHasher


def cli(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "secure_mw.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_hash_password_reads_stdin_never_argv() -> None:
    result = cli("hash-password", stdin="correct horse battery staple\n")
    assert result.returncode == 0, result.stderr
    phc = result.stdout.strip()
    assert phc.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PasswordHasher().verify(phc, "correct horse battery staple")
    # a password on the command line is not accepted
    refused = cli("hash-password", "secret-on-argv", stdin="x\n")
    assert refused.returncode == 2 and "unrecognized arguments" in refused.stderr


def test_hash_password_refuses_empty_input() -> None:
    result = cli("hash-password", stdin="\n")
    assert result.returncode == 1 and "no password" in result.stderr


def test_gen_keys_writes_0600_files_and_prints_only_public(tmp_path: Path) -> None:
    jwks_path, enc_path = tmp_path / "jwks.json", tmp_path / "enc.keys"
    result = cli("gen-keys", "--jwks", str(jwks_path), "--encryption", str(enc_path),
                 "--alg", "ES256", "--alg", "EdDSA")
    assert result.returncode == 0, result.stderr
    for path in (jwks_path, enc_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = json.loads(jwks_path.read_text())
    public = json.loads(result.stdout)
    assert len(private["keys"]) == len(public["keys"]) == 2
    assert all("d" in k for k in private["keys"])
    assert not any("d" in k or "p" in k or "q" in k for k in public["keys"])
    assert [k["kid"] for k in public["keys"]] == [k["kid"] for k in private["keys"]]
    ring = KeyRing.from_file(enc_path)
    assert ring.decrypt(ring.encrypt(b"ok")) == b"ok"
    again = cli("gen-keys", "--encryption", str(enc_path))
    assert again.returncode == 1 and "--force" in again.stderr


def test_check_config_exit_status(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    key = KeyRing.new_key_text()
    good.write_text(f'[session]\nstore = "cookie"\n[keys]\nencryption_keys = ["{key}"]\n')
    ok = cli("check-config", "--no-env", str(good))
    assert ok.returncode == 0 and "session store   : cookie" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[session]\nstore = "disk"\nexpiry = "1h"\n')
    fail = cli("check-config", "--no-env", str(bad))
    assert fail.returncode == 1
    assert "session.store" in fail.stderr and "session.expiry" in fail.stderr
