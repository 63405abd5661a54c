from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from secure_mw import ConfigError, Settings
from secure_mw.crypto import KeyRing
from secure_mw.settings import parse_duration, parse_rate_limit

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

EXAMPLE = Path(__file__).resolve().parents[1] / "secure-mw.example.toml"
EXAMPLE_TEXT = EXAMPLE.read_text()


def secret(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return {p.path: p.message for p in exc.value.problems}


@pytest.fixture
def example_config(tmp_path: Path) -> Path:
    """The repository's example configuration, its secret file paths pointed at real 0600
    files."""
    import json

    from secure_mw.crypto import KeyRing
    from secure_mw.tokens import generate_private_jwks

    keys = secret(tmp_path, "keys", KeyRing.new_key_text() + "\n")
    jwks = secret(tmp_path, "jwks.json", json.dumps(generate_private_jwks(("ES256",))))
    client = secret(tmp_path, "client", "s3cret-value\n")
    redis_url = secret(tmp_path, "redis", "redis://:pw@127.0.0.1:6379/0\n")
    text = (EXAMPLE_TEXT.replace("/run/secrets/secure-mw-keys", str(keys))
            .replace("/run/secrets/secure-mw-jwks.json", str(jwks))
            .replace("/run/secrets/oidc-client-secret", str(client))
            .replace("/run/secrets/secure-mw-redis-url", str(redis_url)))
    path = tmp_path / "secure-mw.toml"
    path.write_text(text)
    return path


def test_defaults_are_secure() -> None:
    s = Settings.from_mapping({})
    assert s.session.store == "memory"
    assert s.session.same_site == "lax"
    assert s.session.expiration == 3600 and s.session.inactivity == 300
    assert s.session.remember_me == 30 * 86400
    assert s.access_control.default_policy == "deny"
    assert s.oidc is None
    assert s.regulation.max_retries == 3 and s.regulation.find_time == 120
    assert s.regulation.ban_time == 300
    assert s.keys.encryption_algorithm == "xchacha20-poly1305"


def test_example_file_loads_every_section(example_config: Path) -> None:
    s = Settings.from_file(example_config)
    assert s.oidc is not None and s.oidc.client_secret == "s3cret-value"
    assert s.oidc.issuer == "https://idp.example.com" and s.oidc.max_token_size == 64 * 1024
    assert len(s.keys.encryption_keys) == 1
    assert s.keys.signing_jwks is not None and '"keys"' in s.keys.signing_jwks
    assert s.server.allowed_hosts == ["app.example.com"]
    assert s.redis is not None and s.redis.url == "redis://:pw@127.0.0.1:6379/0"
    assert s.session.redis_url == "redis://:pw@127.0.0.1:6379/0?socket_timeout=2.0"
    assert s.access_control.rules[1].subject == [["group:admins"]]
    assert s.access_control.rules[1].policy == "two_factor"
    assert s.rate_limits.rules[0].limit == "20/second;600/minute"
    assert s.rate_limits.rules[1].protects_credentials
    assert s.regulation.modes == ["pair", "user", "ip"]
    assert s.headers.hsts_max_age == 365 * 86400
    assert s.headers.overrides == {"/account": {"cache-control": "no-store"}}
    assert s.session.remember_me == 30 * 86400
    # every section of the tree appears in the example
    import dataclasses

    written = set(tomllib.loads(EXAMPLE_TEXT))
    assert {f.name for f in dataclasses.fields(Settings)} == written


def test_example_file_passes_check_config(example_config: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    from secure_mw.cli import main

    assert main(["check-config", "--no-env", str(example_config)]) == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out and "OpenID provider https://idp.example.com" in out
    assert "bearer tokens   : from https://idp.example.com for https://api.example.com " \
        "(jwks_url; ES256, RS256)" in out
    assert "s3cret-value" not in out


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("30d", 2592000), ("1h30m", 5400), ("0", 0),
    (45, 45), ("250ms", 0.25), ("2w", 1209600), (" 5M ", 300),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 minutes", "-5s", "1y", "5m5", True, None,
                                  [1], "nan", "inf", "1e999s", "5s5x"])
def test_bad_durations(text: object) -> None:
    if text == "5":  # a bare number is seconds
        assert parse_duration(text) == 5
        return
    with pytest.raises(ValueError):
        parse_duration(text)


def test_rate_limits_parse() -> None:
    assert parse_rate_limit("20/second;600/minute") == ((20, 1.0), (600, 60.0))
    assert parse_rate_limit("5/10minutes") == ((5, 600.0),)
    for bad in ("", "20", "0/second", "20/fortnight", "20/second;", "x/second"):
        with pytest.raises(ValueError):
            parse_rate_limit(bad)


@pytest.mark.parametrize("text", ["\u0661\u0660\u0662\u0664", "\uff11\uff10\uff12\uff14",
                                  "64\u212aiB", "\u0661\u0660 KiB", "1024\u00a0b"])
def test_sizes_take_ascii_digits_and_units_only(text: str) -> None:
    """Arabic-Indic or full-width digits are not a size, nor is the Kelvin sign a "k"
    (they were: "١٠٢٤" gave 1024)."""
    from secure_mw.settings import parse_size

    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["\u0661\u0660s", "\u0661\u0660", "\uff15m", "5\u00a0m"])
def test_durations_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["\u0661\u0660/minute", "10/\u0665minutes",
                                  "10/minute\u00a0"])
def test_rate_limits_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate_limit(text)


def test_every_problem_is_reported_together_with_its_path() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({
            "sesion": {"store": "redis"},
            "session": {"store": "reddis", "expiration": "1x", "cookie_name": 5},
            "oidc": {"client_id": "app", "issuer": "ftp://idp"},
            "regulation": {"max_retries": "three", "modes": ["user", "mac"]},
            "access_control": {"rules": [{"policy": "bypass", "subject": "group:x"},
                                         {"resourses": ["^/x"]}]},
            "headers": {"preset": "apii"},
        })
    found = problems_of(exc)
    assert found["sesion"] == "unknown key; did you mean 'session'?"
    assert "'reddis' is not one of" in found["session.store"]
    assert "did you mean 'redis'?" in found["session.store"]
    assert "not a duration" in found["session.expiration"]
    assert found["session.cookie_name"] == "expected a string, got an integer"
    assert "absolute http or https URL" in found["oidc.issuer"]
    assert "expected an integer" in found["regulation.max_retries"]
    assert "modes" in found["regulation.modes"]
    assert "did you mean 'resources'?" in found["access_control.rules[1].resourses"]
    assert "did you mean 'api'?" in found["headers.preset"]
    assert len(exc.value.problems) >= 10
    # One message lists them all, one per line.
    assert str(exc.value).count("\n  - ") == len(exc.value.problems)


def test_trusted_proxies_take_unix_and_success_statuses_are_checked() -> None:
    settings = Settings.from_mapping({"server": {"trusted_proxies": ["unix", "10.0.0.0/8"]}})
    assert settings.server.trusted_proxies == ["unix", "10.0.0.0/8"]
    assert settings.regulation.success_statuses == [200, 201, 204, 302, 303]
    assert settings.regulation.names_folded is False
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"server": {"trusted_proxies": ["unix:/run/app.sock"]},
                               "regulation": {"success_statuses": [200, 401, 500]}})
    found = problems_of(exc)
    assert "not CIDR networks: 'unix:/run/app.sock'" in found["server.trusted_proxies"]
    assert "not 401, 500" in found["regulation.success_statuses"]
    with pytest.raises(ConfigError, match="at least one status"):
        Settings.from_mapping({"regulation": {"success_statuses": []}})


def test_cross_field_problems() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({
            "session": {"store": "redis", "inactivity": "2h", "expiration": "1h"},
            "oidc": {"issuer": "https://idp.example.com", "client_id": "app",
                     "scopes": ["profile"]},
            "access_control": {"rules": [{"policy": "bypass", "subject": ["user:bob"]},
                                         {"resources": ["^/x"]}]},
            "signed_headers": {"verify": {"issuer": "a.example.com"}},
        })
    found = problems_of(exc)
    assert "required when session.store = 'redis'" in found["session.redis_url"]
    assert "never apply" in found["session.inactivity"]
    assert "must include 'openid'" in found["oidc.scopes"]
    assert "oidc.client_secret" in found
    assert "cannot have a subject" in found["access_control.rules[0].subject"]
    assert "needs a policy" in found["access_control.rules[1]"]
    assert "jwks_url or jwks_file" in found["signed_headers.verify"]


def test_plain_http_issuer_only_on_loopback() -> None:
    ok = Settings.from_mapping({"oidc": {"issuer": "http://127.0.0.1:9000", "client_id": "a",
                                         "client_secret": "x"}})
    assert ok.oidc is not None
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"oidc": {"issuer": "http://idp.example.com", "client_id": "a",
                                        "client_secret": "x"}})
    assert "https" in problems_of(exc)["oidc.issuer"]


def test_subject_forms_are_normalised() -> None:
    s = Settings.from_mapping({"access_control": {"rules": [
        {"policy": "authenticated", "subject": "group:a"},
        {"policy": "authenticated", "subject": ["group:a", "user:b"]},
        {"policy": "authenticated", "subject": [["group:a", "email:c@example.com"], ["user:b"]]},
    ]}})
    rules = s.access_control.rules
    assert rules[0].subject == [["group:a"]]
    assert rules[1].subject == [["group:a"], ["user:b"]]
    assert rules[2].subject == [["group:a", "email:c@example.com"], ["user:b"]]
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"access_control": {"rules": [
            {"policy": "authenticated", "subject": ["admins"]}]}})
    assert "must start with" in problems_of(exc)["access_control.rules[0].subject"]


def test_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = secret(tmp_path, "client", "  top-secret\n")
    s = Settings.from_mapping({"oidc": {"issuer": "https://idp.example.com", "client_id": "a",
                                        "client_secret_file": str(path)}})
    assert s.oidc is not None and s.oidc.client_secret == "top-secret"


def test_relative_secret_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    secret(tmp_path, "client", "rel-secret")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[oidc]\nissuer = "https://idp.example.com"\nclient_id = "a"\n'
                   'client_secret_file = "client"\n')
    s = Settings.from_file(cfg)
    assert s.oidc is not None and s.oidc.client_secret == "rel-secret"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_secret_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret(tmp_path, "client", "top-secret", mode)
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"oidc": {"issuer": "https://idp.example.com", "client_id": "a",
                                        "client_secret_file": str(path)}})
    message = problems_of(exc)["oidc.client_secret_file"]
    assert str(path) in message and f"{mode:04o}" in message
    assert "top-secret" not in str(exc.value)


def test_secret_and_its_file_together_is_an_error(tmp_path: Path) -> None:
    path = secret(tmp_path, "client", "x")
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"oidc": {"issuer": "https://idp.example.com", "client_id": "a",
                                        "client_secret": "y", "client_secret_file": str(path)}})
    assert "not both" in problems_of(exc)["oidc.client_secret_file"]


def test_missing_and_empty_secret_files(tmp_path: Path) -> None:
    empty = secret(tmp_path, "empty", "\n")
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"keys": {"encryption_keys_file": str(empty)},
                               "session": {"redis_url_file": str(tmp_path / "nope")}})
    found = problems_of(exc)
    assert "is empty" in found["keys.encryption_keys_file"]
    assert "does not exist" in found["session.redis_url_file"]


def test_list_secret_file_holds_one_item_a_line(tmp_path: Path) -> None:
    path = secret(tmp_path, "keys", "# newest first\nAAA\n\nBBB\n")
    s = Settings.from_mapping({"keys": {"encryption_keys_file": str(path)}})
    assert s.keys.encryption_keys == ["AAA", "BBB"]


def test_environment_overrides() -> None:
    s = Settings.from_mapping(
        {"session": {"store": "memory"}},
        environ={
            "SECURE_MW_SESSION__STORE": "redis",
            "SECURE_MW_SESSION__REDIS_URL": "redis://127.0.0.1:6379/1",
            "SECURE_MW_SESSION__INACTIVITY": "10m",
            "SECURE_MW_KEYS__ENCRYPTION_KEYS": KeyRing.new_key_text(),
            "SECURE_MW_REGULATION__MAX_RETRIES": "5",
            "SECURE_MW_HEADERS__HSTS_PRELOAD": "true",
            "SECURE_MW_REDIRECTS__ALLOWED_HOSTS": "a.example.com, *.b.example.com",
            "SECURE_MW_RATE_LIMITS__RULES": '[{"key": "user", "limit": "5/second"}]',
            "SECURE_MW_CONFIG": "ignored: no double underscore",
            "OTHER": "ignored",
        },
    )
    assert s.session.store == "redis" and s.session.redis_url == "redis://127.0.0.1:6379/1"
    assert s.session.inactivity == 600
    assert s.regulation.max_retries == 5
    assert s.headers.hsts_preload is True
    assert s.redirects.allowed_hosts == ["a.example.com", "*.b.example.com"]
    assert s.rate_limits.rules[0].key == "user"


def test_environment_can_create_a_section_and_use_secret_files(tmp_path: Path) -> None:
    path = secret(tmp_path, "client", "from-env-file")
    s = Settings.from_mapping({}, environ={
        "SECURE_MW_OIDC__ISSUER": "https://idp.example.com",
        "SECURE_MW_OIDC__CLIENT_ID": "app",
        "SECURE_MW_OIDC__CLIENT_SECRET_FILE": str(path),
    })
    assert s.oidc is not None and s.oidc.client_secret == "from-env-file"


def test_environment_problems_name_the_variable() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({}, environ={
            "SECURE_MW_SESSION__STOR": "redis",
            "SECURE_MW_REGULATION__MAX_RETRIES": "many",
            "SECURE_MW_HEADERS__HSTS_PRELOAD": "perhaps",
            "SECURE_MW_SESSION__STORE": "disk",
        })
    found = problems_of(exc)
    assert "did you mean 'SECURE_MW_SESSION__STORE'?" in found["SECURE_MW_SESSION__STOR"]
    assert "not an integer" in found["SECURE_MW_REGULATION__MAX_RETRIES"]
    assert "not true or false" in found["SECURE_MW_HEADERS__HSTS_PRELOAD"]
    assert "'disk' is not one of" in found["session.store"]


def test_from_environment_reads_the_config_variable(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[session]\nstore = "cookie"\n')
    monkeypatch.setenv("SECURE_MW_CONFIG", str(cfg))
    monkeypatch.setenv("SECURE_MW_KEYS__ENCRYPTION_KEYS", KeyRing.new_key_text())
    monkeypatch.setenv("SECURE_MW_SESSION__COOKIE_NAME", "sid")
    s = Settings.from_environment()
    assert s.session.store == "cookie" and s.session.cookie_name == "sid"


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[session\nstore = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.from_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_file(tmp_path / "missing.toml")


def test_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"signed_headers": {"header": "X-A\r\nSet-Cookie: x"}})
    assert "signed_headers.header" in problems_of(exc)


def test_check_config_names_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    from secure_mw.cli import main

    world = secret(tmp_path, "secret", "hunter2", 0o644)
    cfg = tmp_path / "broken.toml"
    cfg.write_text(f"""
[sesion]
store = "redis"
[session]
expiration = "soon"
[oidc]
issuer = "https://idp.example.com"
client_id = "app"
client_secret_file = "{world}"
[regulation]
max_retrys = 3
""")
    assert main(["check-config", "--no-env", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "4 configuration problems" in err
    for expected in ("sesion: unknown key; did you mean 'session'?", "session.expiration:",
                     "oidc.client_secret_file:", "mode 0644",
                     "regulation.max_retrys: unknown key; did you mean 'max_retries'?"):
        assert expected in err
    assert "hunter2" not in err


def test_example_toml_parses_as_toml() -> None:
    assert "session" in tomllib.loads(EXAMPLE_TEXT)


def test_settings_are_immutable() -> None:
    s = Settings.from_mapping({})
    with pytest.raises(AttributeError):
        s.session.store = "redis"  # type: ignore[misc]


def test_docs_name_every_setting() -> None:
    """docs/configuration.md stays true: every key of the tree is documented."""
    import dataclasses
    import typing

    from secure_mw.settings import _unwrap_optional

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = []

    def walk(cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            inner, _ = _unwrap_optional(hints[f.name])
            if typing.get_origin(inner) is list:
                (item,) = typing.get_args(inner)
                if dataclasses.is_dataclass(item):
                    inner = item
            if dataclasses.is_dataclass(inner):
                if f"{f.name}]" not in doc:
                    missing.append(f.name)
                walk(typing.cast(type, inner))
            elif f"`{f.name}`" not in doc and f"{f.name}`" not in doc:
                missing.append(f.name)

    walk(Settings)
    assert missing == []


# -- regressions from the security review ---------------------------------------------------


def test_repr_never_shows_secrets() -> None:
    s = Settings.from_mapping({
        "keys": {"encryption_passphrase": "pass-phrase-xyz", "encryption_salt_file": "/tmp/s"},
        "session": {"redis_url": "redis://:redis-pw-xyz@127.0.0.1:6379/0"},
        "oidc": {"issuer": "https://idp.example.com", "client_id": "a",
                 "client_secret": "client-secret-xyz"},
    })
    text = repr(s)
    for secret_value in ("pass-phrase-xyz", "redis-pw-xyz", "client-secret-xyz"):
        assert secret_value not in text


def test_wrongly_typed_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"keys": {"encryption_keys": "hunter2-supersecret"}})
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize("data", [
    {"session": {"expiration": 10**400}},
    {(1, 2): 1},
    {"session": {"cookie_name": b"abc"}},
    {"server": {"trusted_proxies": [[[[]]]] * 3}},
])
def test_hostile_mappings_give_config_errors(data: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError):
        Settings.from_mapping(data)


def test_deep_nesting_gives_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "deep.toml"
    cfg.write_text("[server]\ntrusted_proxies = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError):
        Settings.from_file(cfg)
    with pytest.raises(ConfigError):
        Settings.from_mapping({}, environ={"SECURE_MW_SERVER__TRUSTED_PROXIES": "[" * 100000})


def test_toml_dates_are_not_strings(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text("[session]\nredis_key_prefix = 2020-01-01\n")
    with pytest.raises(ConfigError) as exc:
        Settings.from_file(cfg)
    assert "session.redis_key_prefix" in problems_of(exc)


def test_path_settings_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[keys]\nencryption_passphrase = "p"\nencryption_salt_file = "salt"\n'
                   '[local_users]\nfile = "/abs/users.toml"\n')
    s = Settings.from_file(cfg)
    assert s.keys.encryption_salt_file == str(tmp_path / "salt")
    assert s.local_users.file == "/abs/users.toml"


def test_secret_file_of_several_lines_is_refused_for_a_single_value(tmp_path: Path) -> None:
    path = secret(tmp_path, "client", "line1\nline2\n")
    with pytest.raises(ConfigError) as exc:
        Settings.from_mapping({"oidc": {"issuer": "https://idp.example.com", "client_id": "a",
                                        "client_secret_file": str(path)}})
    assert "more than one line" in problems_of(exc)["oidc.client_secret_file"]
    assert "line1" not in str(exc.value)


@pytest.mark.parametrize(("domain", "problem"), [
    ("co.uk", "public suffix"),
    ("github.io", "public suffix"),
    ("com", "not a domain name"),
    ("exa mple.com", "not a domain name"),
    ("-bad.example.com", "not a domain name"),
])
def test_cookie_domain_refuses_public_suffixes_and_junk(domain: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as err:
        Settings.from_mapping({"session": {"cookie_domain": domain}}, environ={})
    assert err.value.problems[0].path == "session.cookie_domain"


def test_cookie_domain_accepts_a_registrable_domain() -> None:
    s = Settings.from_mapping({"session": {"cookie_domain": "example.co.uk"}}, environ={})
    assert s.session.cookie_domain == "example.co.uk"


@pytest.mark.parametrize("store", ["cookie", "redis"])
def test_shared_stores_need_encryption_keys(store: str) -> None:
    with pytest.raises(ConfigError, match=r"keys\.encryption_keys"):
        Settings.from_mapping({"session": {"store": store, "redis_url": "redis://h/0"}},
                              environ={})


@pytest.mark.parametrize("prefix", ["/.auth", "auth/", "/a b/", "/"])
def test_auth_prefix_must_be_a_slash_delimited_path(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.auth_prefix"):
        Settings.from_mapping({"server": {"auth_prefix": prefix}}, environ={})


def test_private_key_jwt_needs_a_usable_client_jwks() -> None:
    base = {"issuer": "https://idp.example.com", "client_id": "app",
            "token_endpoint_auth_method": "private_key_jwt"}
    with pytest.raises(ConfigError, match=r"oidc\.client_jwks: required"):
        Settings.from_mapping({"oidc": base}, environ={})
    for bad, why in (("not json", "not a JSON JWK Set"), ('{"keys": []}', "at least one"),
                     ('{"keys": [{"kty": "EC"}]}', "first key")):
        with pytest.raises(ConfigError, match=why) as err:
            Settings.from_mapping({"oidc": {**base, "client_jwks": bad}}, environ={})
        assert "kty" not in str(err.value) or why == "first key"
    from secure_mw.tokens import generate_private_jwks

    good = json.dumps(generate_private_jwks(("ES256",)))
    s = Settings.from_mapping({"oidc": {**base, "client_jwks": good}}, environ={})
    assert s.oidc is not None and "client_jwks" not in repr(s).replace("client_jwks=", "")
    assert good not in repr(s)


def test_sizes_are_parsed_and_bounded() -> None:
    from secure_mw.settings import parse_size

    assert [parse_size(v) for v in ("64KiB", "1 MiB", "4096", 4096, "10b")] == \
        [65536, 1048576, 4096, 4096, 10]
    for bad in ("64KB", "1.5MiB", "", "x", -1, True, 2.0):
        with pytest.raises(ValueError):
            parse_size(bad)
    oidc = {"issuer": "https://idp.example", "client_id": "a", "client_secret": "s"}
    default = Settings.from_mapping({"oidc": oidc}, environ={}).oidc
    assert default is not None and default.max_token_size == 64 * 1024
    raised = Settings.from_mapping({"oidc": oidc},
                                   environ={"SECURE_MW_OIDC__MAX_TOKEN_SIZE": "256KiB"}).oidc
    assert raised is not None and raised.max_token_size == 256 * 1024
    with pytest.raises(ConfigError) as refused:
        Settings.from_mapping({"oidc": {**oidc, "max_token_size": "2MiB"}}, environ={})
    assert "oidc.max_token_size" in str(refused.value)
