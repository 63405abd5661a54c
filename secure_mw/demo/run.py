"""Start the demo: ``secure-mw demo``, ``python -m secure_mw.demo`` or ``python3 dev.py demo``.

It serves the app with Werkzeug's threaded development server (Werkzeug is a base
dependency), so a plain install runs it; it is a demo, not a production server.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from secure_mw import Settings
from secure_mw._files import write_secret_file
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError


def _key_ring(state_dir: Path, settings: Settings) -> tuple[KeyRing, str]:
    """Keys from settings when configured; otherwise a key file made on first run (0600)."""
    keys = settings.keys
    if keys.encryption_keys or keys.encryption_passphrase:
        return KeyRing.from_settings(keys), "from settings"
    path = state_dir / "encryption.keys"
    if not path.exists():
        write_secret_file(path, (KeyRing.new_key_text() + "\n").encode())
        return KeyRing.from_file(path, algorithm=keys.encryption_algorithm), \
            f"generated into {path} (mode 0600)"
    return KeyRing.from_file(path, algorithm=keys.encryption_algorithm), f"read from {path}"


def _sqlite_by_default(state_dir: Path, settings: Settings) -> Settings:
    """Sessions, limits and login regulation in ``<state>/secure-mw.sqlite3`` unless a
    store was chosen: they survive a restart and would be shared by several workers. (The
    key ring may come from the demo's key file, so the settings are not validated again.)"""
    if settings.session.store_explicit:
        return settings
    path = settings.sqlite.path or str(state_dir / "secure-mw.sqlite3")
    return dataclasses.replace(
        settings, session=dataclasses.replace(settings.session, store="sqlite"),
        sqlite=dataclasses.replace(settings.sqlite, path=path))


# The demo's access rules (your own [access_control] replaces them).
DEMO_RULES = Settings.from_mapping({"access_control": {"default_policy": "deny", "rules": [
    {"resources": ["^/healthz$"], "policy": "bypass"},
    {"resources": ["^/two-factor(/|$)"], "policy": "two_factor"},   # path only: ?x=1 too
    {"policy": "authenticated"},
]}}, environ={})


def _demo_user(state_dir: Path, settings: Settings) -> tuple[str, str, str]:
    """The users file with a ``demo`` user whose password is new at every start."""
    from secure_mw.login import UsersFile
    from secure_mw.login.policy import PasswordPolicy

    path = Path(settings.local_users.file)
    policy = PasswordPolicy.from_settings(settings.local_users)
    users = UsersFile(path, policy=policy)
    password = secrets.token_urlsafe(max(12, policy.min_length))
    while policy.problems(password, username="demo"):   # a rare chance: draw again
        password = secrets.token_urlsafe(max(12, policy.min_length))
    if users.get("demo") is None:
        users.add("demo", password=password, display_name="Demo User",
                  email="demo@example.com", groups=["demo"])
    else:
        users.set_password("demo", password)
    return str(path), "demo", password


def run(*, host: str = "127.0.0.1", port: int = 8000, state_dir: str = ".secure-mw-demo") -> int:
    from werkzeug.serving import make_server

    from secure_mw.demo.app import create_app
    from secure_mw.wsgi import protect

    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # no line per request
    state = Path(state_dir)
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The demo's users file lives in its state directory unless configured elsewhere.
        os.environ.setdefault("SECURE_MW_LOCAL_USERS__FILE", str(state / "users.toml"))
        os.environ.setdefault("SECURE_MW_LOCAL_USERS__TOTP_FILE", str(state / "totp.json"))
        settings = Settings.from_environment()
        ring, where = _key_ring(state, settings)
        users_file, name, password = _demo_user(state, settings)
        if not settings.access_control.rules:
            settings = dataclasses.replace(settings, access_control=DEMO_RULES.access_control)
        settings = _sqlite_by_default(state, settings)
    except ConfigError as exc:
        print(f"secure_mw demo: {exc}", file=sys.stderr)
        return 1
    # The whole stack: security headers, client address, redirect guard, the built-in
    # login (or the OpenID provider, when [oidc] is configured) and its sessions.
    try:
        app = protect(create_app(settings, ring,
                                 key_source=f"{len(ring.key_ids)} key(s), {where}"),
                      settings, keyring=ring)
    except ConfigError as exc:          # the store's file cannot be used, for instance
        print(f"secure_mw demo: {exc}", file=sys.stderr)
        return 1
    print(f"secure_mw demo: encryption key {where}")
    print(f"secure_mw demo: users file {users_file}")
    print(f"secure_mw demo: session store {settings.session.store}"
          + (f" ({settings.sqlite.path}, mode 0600)" if settings.session.store == "sqlite"
             else ""))
    print(f"secure_mw demo: sign in as {name!r} with password {password!r} "
          "(new at every start)")
    # SIGINT, SIGTERM and SIGHUP (a closed terminal) end serve_forever() with a clean return;
    # the handlers are in place before the port opens, so no signal finds the default.
    stops = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP")
                                                else [])
    previous = {s: signal.signal(s, _stop) for s in stops}
    server = None
    try:
        server = make_server(host, port, app, threaded=True)
        print(f"secure_mw demo: open http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        server.serve_forever()
    except OSError as exc:
        print(f"secure_mw demo: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        if server is not None:
            server.server_close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("secure_mw demo: stopped", flush=True)
    return 0


class _Stopped(BaseException):
    """Not an Exception: socketserver logs and swallows those when one interrupts the
    hand-over of a connection to its thread (as KeyboardInterrupt, it must end the loop)."""


def _stop(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secure-mw demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--state-dir", default=".secure-mw-demo")
    args = parser.parse_args(argv)
    return run(host=args.host, port=args.port, state_dir=args.state_dir)
