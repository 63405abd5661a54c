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
# -- secure-mw explain -----------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "authorization.md"


def doc_block(name: str) -> str:
    block = DOCS.read_text().split(f"<!-- example: {name} -->", 1)[1].split("```", 2)[1]
    return block.split("\n", 1)[1]


def test_explain_prints_what_the_docs_show(tmp_path: Path) -> None:
    import shlex

    (tmp_path / "secure-mw.toml").write_text(doc_block("layout"))
    command, *expected = doc_block("explain").splitlines()
    argv = shlex.split(command.removeprefix("$ "))
    assert argv[0] == "secure-mw"
    result = cli(*argv[1:], cwd=tmp_path)
    assert result.stdout.splitlines() == expected, result.stderr
    assert result.returncode == 3


RULES_TOML = """
[server]
external_url = "https://app.example.com"
[access_control]
default_policy = "deny"
[[access_control.networks]]
name = "office"
networks = ["10.0.0.0/8"]
[[access_control.rules]]
resources = ["^/healthz$"]
policy = "bypass"
[[access_control.rules]]
resources = ["^/admin(/|$)"]
subject = [["group:admins"]]
policy = "two_factor"
[[access_control.rules]]
resources = ["^/boss$"]
subject = ["email:boss@example.com"]
policy = "authenticated"
[[access_control.rules]]
networks = ["office"]
methods = ["POST"]
policy = "authenticated"
[[access_control.rules]]
policy = "authenticated"
[[access_control.rules]]
resources = ["^/late"]
policy = "bypass"
"""


def test_explain_exit_status_follows_the_decision(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(RULES_TOML)

    def explain(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("explain", "--config", str(config), "--no-env", *args)

    ok = explain("/healthz")                               # the host from external_url
    assert ok.returncode == 0 and "host 'app.example.com'" in ok.stdout
    assert explain("https://app.example.com/page").returncode == 4          # anonymous
    assert explain("/page", "--user", "bob").returncode == 0
    admin = explain("/admin?x=1", "--user", "alice", "--group", "admins")
    assert admin.returncode == 5 and "second step" in admin.stdout
    assert explain("/admin", "--user", "alice", "--group", "admins", "--two-factor"
                   ).returncode == 0
    assert explain("/admin", "--user", "bob").returncode == 3
    # an email criterion needs a verified email
    unverified = explain("/boss", "--user", "x", "--email", "boss@example.com")
    assert unverified.returncode == 3 and "not verified" in unverified.stdout
    assert explain("/boss", "--user", "x", "--email", "boss@example.com", "--email-verified"
                   ).returncode == 0
    # the path is normalized and refused as the middleware would
    walked = explain("/healthz/../admin", "--user", "bob")
    assert walked.returncode == 3 and "path '/admin'" in walked.stdout
    encoded = explain("/healthz/..%2Fadmin")
    assert encoded.returncode == 3 and "encoded slash" in encoded.stdout
    assert explain("/.auth/../x/../.auth/me").returncode == 3
    # networks and methods
    post = explain("/x", "--method", "post", "--ip", "10.2.3.4", "--user", "bob")
    assert post.returncode == 0 and "rule 3    DECIDES" in post.stdout
    # the unreachable rule is named, on stdout, without changing the status
    assert "access_control.rules[5] can never apply: rule 4" in ok.stdout


def test_explain_usage_and_configuration_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(RULES_TOML)
    lone = cli("explain", "/x", "--config", str(config), "--no-env", "--group", "admins")
    assert lone.returncode == 2 and "--user" in lone.stderr
    relative = cli("explain", "x", "--config", str(config), "--no-env")
    assert relative.returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[[access_control.rules]]\nresources = ["^/(x"]\npolicy = "deny"\n')
    broken = cli("explain", "/x", "--config", str(bad), "--no-env")
    assert broken.returncode == 1 and "access_control.rules[0].resources[0]" in broken.stderr


def test_check_config_compiles_the_rules_and_reports_unreachable_ones(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(RULES_TOML)
    ok = cli("check-config", "--no-env", str(config))
    assert ok.returncode == 0
    assert "warning: access_control.rules[5] can never apply: rule 4 " \
           '(policy = "authenticated")' in ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[access_control.rules]]\nresources = ["^/(x"]\npolicy = "deny"\n'
                   '[[access_control.rules]]\nsubject_mismatch = "continue"\n'
                   'policy = "deny"\n')
    fail = cli("check-config", "--no-env", str(bad))
    assert fail.returncode == 1
    assert "access_control.rules[0].resources[0]" in fail.stderr
    assert "access_control.rules[1].subject_mismatch" in fail.stderr


def test_the_documented_redis_fallback_starts_as_check_config_says(tmp_path: Path) -> None:
    """docs: rate_limits.redis_url defaults to session.redis_url. check-config accepted such
    a file while start-up raised (uvicorn workers crash-looped); both accept it now."""
    from secure_mw import Settings
    from secure_mw.asgi import protect

    config = tmp_path / "fallback.toml"
    config.write_text(f'[keys]\nencryption_keys = ["{KeyRing.new_key_text()}"]\n'
                      '[session]\nstore = "redis"\nredis_url = "redis://127.0.0.1:1/0"\n'
                      '[rate_limits]\nstore = "redis"\n[[rate_limits.rules]]\n'
                      'limit = "20/minute"\n')
    assert cli("check-config", "--no-env", str(config)).returncode == 0

    async def app(scope: object, receive: object, send: object) -> None: ...

    protect(app, Settings.from_file(config, environ={}))  # type: ignore[arg-type]
# -- explain agrees with a live server ----------------------------------------------------------

LIVE_TOML = """
[server]
external_url = "https://app.example.com"
[session]
store = "cookie"
[access_control]
default_policy = "deny"
[[access_control.rules]]
resources = ["^/v(/|$)"]
allow = {or = [{"claim/department" = "sales"}]}
[[access_control.rules]]
resources = ["^/admin(/|$)"]
methods = ["GET"]
subject = ["group:admins"]
policy = "authenticated"
[[access_control.rules]]
resources = ["^/export$"]
query = [{key = "format", value = "csv"}]
policy = "bypass"
[[access_control.rules]]
policy = "authenticated"
"""


def _status(base: str, target: str, cookie: str, method: str = "GET") -> int:
    """The status for a target sent exactly as written, with Host app.example.com."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    assert parts.hostname and parts.port
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall((f"{method} {target} HTTP/1.1\r\nHost: app.example.com\r\n"
                      f"Accept: application/json\r\nCookie: {cookie}\r\n"
                      "Connection: close\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_explain_agrees_with_a_live_server(tmp_path: Path) -> None:
    """The review's differential test: claim criteria (explain's identity had no claims),
    a path normalizing into /.auth/ (explain allowed what the session layer answers with
    404), a non-UTF-8 path, a repeated query key, HEAD on a GET gate."""
    from secure_mw import Settings, asgi, wsgi
    from secure_mw.testing import session_cookie
    from tests.apps import serve

    config = _live_config(tmp_path)
    settings = Settings.from_file(config, environ=None)
    people = {"sales": ({"sub": "s", "department": "sales"}, ["--claim", 'department="sales"']),
              "contractor": ({"sub": "c", "department": "contractors"},
                             ["--claim", 'department="contractors"']),
              "bob": ({"sub": "bob", "groups": ["staff"]}, ["--group", "staff"]),
              "anonymous": (None, [])}
    cases = [("sales", "GET", "/v"), ("contractor", "GET", "/v"), ("anonymous", "GET", "/v"),
             ("anonymous", "GET", "/p%C0%AF"), ("sales", "GET", "/.auth/../p"),
             ("anonymous", "GET", "/.auth/%2e%2e/p"),
             ("anonymous", "GET", "/export?format=csv&format=pdf"),
             ("anonymous", "GET", "/export?format=csv"), ("bob", "HEAD", "/admin"),
             ("bob", "GET", "/page")]
    exit_for = {200: 0, 400: 3, 403: 3, 404: 3, 401: 4}
    for flavour in ("asgi", "wsgi"):
        module = asgi if flavour == "asgi" else wsgi
        with serve(flavour, lambda inner, m=module: m.protect(inner, settings)) as base:
            for who, method, target in cases:
                claims, options = people[who]
                cookie = session_cookie(settings, claims) if claims else ""
                live = _status(base, target, cookie, method)
                argv = ["explain", f"https://app.example.com{target}", "--config", str(config),
                        "--no-env", "--method", method]
                if claims:
                    argv += ["--user", claims["sub"], *options]
                result = cli(*argv, cwd=tmp_path)
                assert "Traceback" not in result.stderr
                assert result.returncode == exit_for[live], (flavour, who, target, live,
                                                             result.stdout)


def _live_config(tmp_path: Path) -> Path:
    config = tmp_path / "secure-mw.toml"
    config.write_text(f'[keys]\nencryption_keys = ["{KeyRing.new_key_text()}"]\n' + LIVE_TOML)
    return config


def test_explain_takes_claims_and_a_mount_point(tmp_path: Path) -> None:
    config = _live_config(tmp_path)

    def explain(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("explain", "--config", str(config), "--no-env", *args)

    sales = explain("/v", "--user", "s", "--claim", 'department="sales"', "--claim", "level=3")
    assert sales.returncode == 0
    assert 'identity  s; no groups; one factor; claims department="sales", level=3' \
        in sales.stdout
    # under --root the rules see the path after the mount point, as the app routes it
    mounted = explain("/app/admin/users", "--root", "/app", "--user", "bob")
    assert mounted.returncode == 3 and "path '/admin/users'" in mounted.stdout
    assert explain("/app/admin/users", "--user", "bob").returncode == 0
    assert explain("/app/../admin", "--root", "/app", "--user", "bob").returncode == 3
    assert explain("/.auth/login").returncode == 0            # the session layer's own page
    for bad in (["--root", "app"], ["--claim", "department=sales", "--user", "s"],
                ["--claim", "email=\"x@y\"", "--user", "s"], ["--claim", "nothing"],
                ["--claim", 'department="x"']):
        refused = explain("/v", *bad)
        assert refused.returncode == 2 and refused.stderr, bad
        assert "Traceback" not in refused.stderr


def test_explain_says_a_malformed_url_is_bad_usage(tmp_path: Path) -> None:
    config = _live_config(tmp_path)
    for url in ("https://[::1/admin", "http://[x]/"):
        result = cli("explain", url, "--config", str(config), "--no-env")
        assert result.returncode == 2, result.stderr
        assert "is not a URL" in result.stderr and "Traceback" not in result.stderr


def test_explain_knows_the_pages_the_session_layer_serves(tmp_path: Path) -> None:
    from secure_mw import Settings
    from secure_mw._stack import session_core
    from secure_mw.cli import _own_pages
    from secure_mw.login import UsersFile

    keys = {"encryption_keys": [KeyRing.new_key_text()]}
    oidc = {"issuer": "https://idp.example", "client_id": "x", "client_secret": "s" * 32}
    absent = {"file": str(tmp_path / "absent.toml")}
    users = UsersFile(tmp_path / "users.toml",
                      hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    users.add("alice", password="quartz falcon 11")
    present = {"file": str(users.path)}
    for mapping in ({"keys": keys, "oidc": oidc, "local_users": absent},
                    {"keys": keys, "local_users": absent},
                    {"keys": keys, "oidc": oidc, "local_users": present}):
        settings = Settings.from_mapping(mapping, environ={})
        assert _own_pages(settings) == set(session_core(settings)._routes), mapping
