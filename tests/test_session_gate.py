"""The session gate shared by the login methods: both cores are gates built through the
gate's own constructor, neither is the other, the provider's method is the same object in
both, and no login module reaches into the gate's (or the other's) private attributes."""

from __future__ import annotations

import ast
from pathlib import Path

from secure_mw.crypto import KeyRing
from secure_mw.login.core import LocalLoginCore
from secure_mw.login.users import UsersFile
from secure_mw.oidc.core import OIDCSessionCore, ProviderLogin
from secure_mw.session.gate import SessionGate
from secure_mw.settings import Settings

PACKAGE = Path(__file__).resolve().parent.parent / "secure_mw"
OIDC = {"issuer": "https://idp.example", "client_id": "app", "client_secret": "s" * 32}


def _settings(tmp_path: Path, *, oidc: bool) -> Settings:
    users = tmp_path / "users.toml"
    UsersFile(users)        # an empty users file
    mapping: dict[str, object] = {
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(users), "totp_file": str(tmp_path / "totp.json")}}
    if oidc:
        mapping["oidc"] = OIDC
    return Settings.from_mapping(mapping, environ={})


def test_neither_core_is_the_other() -> None:
    assert issubclass(OIDCSessionCore, SessionGate)
    assert issubclass(LocalLoginCore, SessionGate)
    assert not issubclass(LocalLoginCore, OIDCSessionCore)
    assert not issubclass(OIDCSessionCore, LocalLoginCore)


def test_the_password_login_beside_a_provider_serves_the_providers_method(
        tmp_path: Path) -> None:
    core = LocalLoginCore(_settings(tmp_path, oidc=True))
    assert isinstance(core.provider, ProviderLogin)
    assert core.provider.gate is core and core.provider.sessions is core.sessions
    assert {"login", "login/oidc", "callback", "2fa", "api/login", "api/2fa", "logout",
            "logged-out", "me", "backchannel-logout"} <= set(core._routes)
    alone = LocalLoginCore(_settings(tmp_path, oidc=False))
    assert alone.provider is None
    assert not {"login/oidc", "callback", "backchannel-logout"} & set(alone._routes)
    oidc = OIDCSessionCore(_settings(tmp_path, oidc=True))
    assert oidc.provider.gate is oidc and oidc.client is oidc.provider.client
    assert not {"2fa", "api/login", "login/oidc"} & set(oidc._routes)


def _private_reaches(path: Path, owners: set[str]) -> list[str]:
    """``x._name`` where ``x`` is one of ``owners`` (``self.gate``, ``self.provider``...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and ast.unparse(node.value) in owners:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_login_module_reaches_into_the_others_internals() -> None:
    owners = {"self.gate", "gate", "self.provider", "core.provider", "provider"}
    found = _private_reaches(PACKAGE / "oidc" / "core.py", owners) + \
        _private_reaches(PACKAGE / "login" / "core.py", owners)
    assert found == []
    login = (PACKAGE / "login" / "core.py").read_text(encoding="utf-8")
    assert "OIDCSessionCore" not in login and "._setup(" not in login
