"""Start-up warnings about the deployment (secure_mw.deployment), from the function, from
protect() and from `secure-mw check-config`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from secure_mw import Settings, asgi
from secure_mw.crypto import KeyRing
from secure_mw.deployment import deployment_warnings
from tests.test_cli import cli

NOT_ROOT = lambda: 1000  # noqa: E731 - the effective user id of an unprivileged server


def settings(**sections: Any) -> Settings:
    return Settings.from_mapping(sections, environ={})


def warnings(s: Settings, **kwargs: Any) -> list[str]:
    return deployment_warnings(s, euid=kwargs.pop("euid", NOT_ROOT), **kwargs)


def test_a_plain_development_configuration_gets_no_warning(tmp_path: Path) -> None:
    assert warnings(settings(local_users={"file": str(tmp_path / "users.toml")})) == []
    assert warnings(settings(server={"external_url": "https://app.example.com"})) == []


def test_running_as_root() -> None:
    assert any(w.startswith("running as root") for w in warnings(settings(), euid=lambda: 0))
    assert warnings(settings(), euid=lambda: 1000) == []


@pytest.mark.parametrize(("toml", "named"), [
    ('[oidc]\nissuer = "https://idp.example"\nclient_id = "app"\nclient_secret = "s3cret"\n',
     "oidc.client_secret"),
    ('[keys]\nencryption_passphrase = "correct horse"\n'
     'encryption_salt_file = "salt"\n', "keys.encryption_passphrase"),
    ('[session]\nstore = "redis"\nredis_url = "redis://:pw@127.0.0.1:6379/0"\n',
     "session.redis_url"),
    ('[redis]\nurl = "redis://:pw@127.0.0.1:6379/0"\n', "redis.url"),
    ('[redis]\nsentinel_master = "m"\nsentinel_nodes = ["a:1"]\nsentinel_password = "pw@"\n',
     "redis.sentinel_password"),
])
def test_a_config_file_others_can_read_with_secrets_in_it(tmp_path: Path, toml: str,
                                                          named: str) -> None:
    path = tmp_path / "secure-mw.toml"
    path.write_text(toml)
    path.chmod(0o644)
    found = warnings(settings(), config_file=path)
    assert len(found) == 1 and named in found[0] and "0644" in found[0], found
    assert "s3cret" not in found[0] and "correct horse" not in found[0] and "pw@" not in found[0]
    path.chmod(0o600)
    assert warnings(settings(), config_file=path) == []


def test_a_readable_config_file_without_inline_secrets_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "secure-mw.toml"
    path.write_text('[oidc]\nclient_secret_file = "/run/secrets/oidc"\n'
                    '[session]\nredis_url = "redis://127.0.0.1:6379/0"\n'
                    '[redis]\nurl = "redis://127.0.0.1:6379/0"\n')
    path.chmod(0o644)
    assert warnings(settings(), config_file=path) == []
    assert warnings(settings(), config_file=tmp_path / "missing.toml") == []


def test_users_and_totp_files_readable_by_others(tmp_path: Path) -> None:
    users, totp = tmp_path / "users.toml", tmp_path / "totp.json"
    users.write_text("")
    totp.write_text("{}")
    s = settings(local_users={"file": str(users), "totp_file": str(totp)})
    users.chmod(0o640)
    totp.chmod(0o604)
    found = warnings(s)
    assert [w.split(" ", 1)[0] for w in found] == ["local_users.file", "local_users.totp_file"]
    assert "password hashes" in found[0] and "chmod 600" in found[0]
    users.chmod(0o600)
    totp.chmod(0o600)
    assert warnings(s) == []


def test_cookies_without_secure_on_a_public_host() -> None:
    found = warnings(settings(session={"cookie_secure": False},
                              server={"allowed_hosts": ["app.example.com", "localhost"]}))
    assert len(found) == 1 and "session.cookie_secure" in found[0]
    assert "app.example.com" in found[0] and "localhost" not in found[0].split("(")[0]
    assert warnings(settings(session={"cookie_secure": False})) == []      # loopback only
    assert warnings(settings(session={"cookie_secure": False},
                             server={"external_url": "http://127.0.0.1:8000"})) == []


def test_a_bypass_default_policy() -> None:
    found = warnings(settings(access_control={"default_policy": "bypass"}))
    assert len(found) == 1 and 'default_policy is "bypass"' in found[0]


def test_hsts_off_on_https() -> None:
    https = {"external_url": "https://app.example.com"}
    assert any("HSTS is off" in w for w in warnings(settings(
        server=https, headers={"hsts_max_age": "0"})))
    assert any("HSTS is off" in w for w in warnings(settings(
        server=https, headers={"overrides": {"/": {"Strict-Transport-Security": ""}}})))
    assert warnings(settings(server={"external_url": "http://app.example.com"},
                             headers={"hsts_max_age": "0"})) == []
    assert warnings(settings(server=https, headers={
        "overrides": {"/api": {"Strict-Transport-Security": ""}}})) == []


def test_protect_logs_each_warning_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    s = settings(access_control={"default_policy": "bypass"},
                 keys={"encryption_keys": [KeyRing.new_key_text()]},
                 server={"allowed_hosts": ["deploy-once.example"]})

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        return None

    with caplog.at_level(logging.WARNING, logger="secure_mw.deployment"):
        asgi.protect(app, s)
        asgi.protect(app, s)
    lines = [r.getMessage() for r in caplog.records
             if r.name == "secure_mw.deployment" and "bypass" in r.getMessage()]
    assert len(lines) == 1


def test_check_config_prints_them_with_the_file(tmp_path: Path) -> None:
    config = tmp_path / "secure-mw.toml"
    config.write_text(f'[keys]\nencryption_keys = ["{KeyRing.new_key_text()}"]\n'
                      '[access_control]\ndefault_policy = "bypass"\n')
    config.chmod(0o644)
    result = cli("check-config", "--no-env", str(config))
    assert result.returncode == 0, result.stderr
    assert "warning: access_control.default_policy is \"bypass\"" in result.stderr
    assert "holds secrets written in it (keys.encryption_keys)" in result.stderr
