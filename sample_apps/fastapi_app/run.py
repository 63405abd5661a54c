"""Start the sample app: ``python -m sample_apps.fastapi_app [--port 8000]``.

Without an ``[oidc]`` section in ``$SECURE_MW_CONFIG`` it signs in with the built-in login:
the state directory gets an encryption key and a users file with ``alice`` (an admin) and
``bob`` (not), whose passwords are new at every start and printed. With ``[oidc]``, the
OpenID provider signs people in and no users file is made.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
from pathlib import Path

from secure_mw import Settings
from secure_mw._files import write_secret_file
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError

RULES = Settings.from_mapping({"access_control": {"default_policy": "deny", "rules": [
    {"resources": ["^/healthz$"], "policy": "bypass"},
    {"policy": "authenticated"},
]}}, environ={}).access_control
USERS = {"alice": ("Alice Admin", ["admins"]), "bob": ("Bob User", ["staff"])}


def prepare(state: Path) -> tuple[Settings, dict[str, str]]:
    """The settings (from the environment, keys and users file defaulting into ``state``)
    and the demo passwords (none with an OpenID provider)."""
    from secure_mw.login import UsersFile
    from secure_mw.login.policy import PasswordPolicy

    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = state / "encryption.keys"
    if not key_file.exists():
        write_secret_file(key_file, (KeyRing.new_key_text() + "\n").encode())
    os.environ.setdefault("SECURE_MW_KEYS__ENCRYPTION_KEYS_FILE", str(key_file))
    os.environ.setdefault("SECURE_MW_LOCAL_USERS__FILE", str(state / "users.toml"))
    os.environ.setdefault("SECURE_MW_LOCAL_USERS__TOTP_FILE", str(state / "totp.json"))
    settings = Settings.from_environment()
    if not settings.access_control.rules:
        settings = dataclasses.replace(settings, access_control=RULES)
    passwords: dict[str, str] = {}
    if settings.oidc is None:
        policy = PasswordPolicy.from_settings(settings.local_users)
        users = UsersFile(settings.local_users.file, policy=policy)
        for name, (display, groups) in USERS.items():
            password = secrets.token_urlsafe(max(12, policy.min_length))
            while policy.problems(password, username=name):
                password = secrets.token_urlsafe(max(12, policy.min_length))
            if users.get(name) is None:
                users.add(name, password=password, display_name=display,
                          email=f"{name}@example.com", groups=groups)
            else:
                users.set_password(name, password)
            passwords[name] = password
    return settings, passwords


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from sample_apps.fastapi_app.app import create_app

    parser = argparse.ArgumentParser(prog="python -m sample_apps.fastapi_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state-dir", default=".secure-mw-fastapi-app")
    args = parser.parse_args(argv)
    try:
        settings, passwords = prepare(Path(args.state_dir))
    except ConfigError as exc:
        print(f"fastapi_app: {exc}", file=sys.stderr)
        return 1
    for name, password in passwords.items():
        print(f"fastapi_app: sign in as {name!r} with password {password!r}")
    if settings.oidc is not None:
        print(f"fastapi_app: sign in through {settings.oidc.issuer}")
    print(f"fastapi_app: open http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning",
                proxy_headers=False)
    return 0
