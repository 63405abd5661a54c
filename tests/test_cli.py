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


# Problems found at three depths: a section's own values, the checks that need the whole
# section, and what only building the stack finds (regexes, criteria, key functions, keys).
STAGED = """
[server]
trusted_proxies = ["nonsense"]
[session]
store = "redis"
cookie_name = "__Host-x"
[keys]
encryption_keys = ["short"]
[[access_control.rules]]
resources = ["^/admin("]
policy = "two_factor"
[[access_control.rules]]
allow = {or = [{unknown_criterion = true}]}
[rate_limits]
[[rate_limits.rules]]
limit = "5/minute"
paths = ["^/login("]
[[rate_limits.rules]]
limit = "5/minute"
key = "nodots"
[regulation]
max_retries = 0
"""
STAGED_PATHS = [
    "server.trusted_proxies", "session.cookie_name", "session.redis_url",
    "regulation.max_retries", "access_control.rules[0].resources[0]",
    "access_control.rules[1].allow.or[0].unknown_criterion", "rate_limits.rules[0].paths",
    "rate_limits.rules[1].key", "keys.encryption_keys[0]",
]


def test_check_config_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "staged.toml"
    config.write_text(STAGED)
    result = cli("check-config", "--no-env", str(config))
    assert result.returncode == 1
    reported = [line.split(": ", 1)[0].strip()[2:] for line in result.stderr.splitlines()
                if line.startswith("  - ")]
    assert sorted(reported) == sorted(STAGED_PATHS), result.stderr
    assert f"{len(STAGED_PATHS)} configuration problems" in result.stderr


def test_start_up_reports_what_check_config_reports(tmp_path: Path) -> None:
    """check-config builds what start-up builds: the same problems, all at once."""
    from secure_mw import Settings
    from secure_mw.asgi import protect
    from secure_mw.errors import ConfigError

    fixed = STAGED.replace('trusted_proxies = ["nonsense"]', "") \
        .replace('cookie_name = "__Host-x"', 'redis_url = "redis://127.0.0.1:1/0"') \
        .replace("max_retries = 0", "max_retries = 3")
    config = tmp_path / "startup.toml"
    config.write_text(fixed)
    settings = Settings.from_file(config, environ={})   # the settings themselves are valid

    async def app(scope: object, receive: object, send: object) -> None: ...

    try:
        protect(app, settings)  # type: ignore[arg-type]
    except ConfigError as exc:
        at_start = sorted(p.path for p in exc.problems)
    else:
        raise AssertionError("start-up accepted an invalid configuration")
    checked = cli("check-config", "--no-env", str(config))
    assert checked.returncode == 1
    reported = sorted(line.split(": ", 1)[0].strip()[2:] for line in checked.stderr.splitlines()
                      if line.startswith("  - "))
    assert reported == at_start == sorted(STAGED_PATHS[4:])


def test_check_config_says_plainly_that_nobody_can_sign_in(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    result = cli("check-config", "--no-env", str(empty), cwd=tmp_path)
    assert result.returncode == 0
    assert "warning: nobody can sign in" in result.stderr
    assert str(tmp_path / "users.toml") in result.stderr
    assert result.stderr.count("users.toml") == 1     # one plain statement, not two
    missing = cli("check-config", "--no-env", "absent.toml", cwd=tmp_path)
    assert missing.returncode == 1 and f"looked in {str(tmp_path)!r}" in missing.stderr
