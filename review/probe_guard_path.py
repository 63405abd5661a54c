"""Probe: the login guard matches ``regulation.paths`` against the path as sent, while the
authorization layer (inside it) hands the app the normalized path. With access rules set,
``POST //login`` (or ``/./login``, ``/x/../login``) reaches the app's ``/login`` unregulated.

Run: .venv/bin/python -m review.probe_guard_path
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

from review.common import CountingLogin, raw_post
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from tests.apps import uvicorn_server, wsgi_server

KEY = KeyRing.new_key_text()


def settings(tmp: str) -> Settings:
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "local_users": {"file": f"{tmp}/users.toml"},
        "session": {"store": "memory"},
        "regulation": {"paths": ["/login"]},
        "access_control": {"default_policy": "authenticated", "rules": [
            {"resources": ["^/login$"], "policy": "bypass"}]},
    }, environ={})


def run(flavour: str, target: str, guesses: int = 20) -> tuple[int, list[int], set[str]]:
    tmp = tempfile.mkdtemp()
    login = CountingLogin()
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(inner, settings(tmp))) as base:
        statuses = [raw_post(base, target, {"username": "alice",
                                            "password": f"guess {i}"})[0]
                    for i in range(guesses)]
    return len(login.checks), statuses, set(login.paths)


def main() -> int:
    bad = 0
    for flavour in ("asgi", "wsgi"):
        for target in ("/login", "//login", "/./login", "/x/../login"):
            checked, statuses, seen = run(flavour, target)
            print(f"{flavour:4} POST {target:12} 20 wrong passwords: {checked:2} checked by "
                  f"the app (app saw {sorted(seen)}), statuses {sorted(set(statuses))}")
            if checked > 3:
                bad += 1
    return 1 if bad else 0



def gunicorn_run(target: str, guesses: int = 20) -> int:
    """The same against gunicorn (review.worker_app: access rules set, /login guarded)."""
    import tempfile as _tempfile
    from pathlib import Path

    from review.probe_workers import command, environment
    from tests.servers import ServerProcess, free_port

    tmp = Path(_tempfile.mkdtemp())
    count = tmp / "checked.txt"
    count.touch()
    port = free_port()
    with ServerProcess(command("gunicorn", port, 1), port=port,
                       env=environment(count, tmp, SECURE_MW_SESSION__STORE="cookie"),
                       log=tmp / "gunicorn.log") as proc:
        for i in range(guesses):
            raw_post(proc.url, target, {"username": "alice", "password": f"guess {i}"})
    return len(count.read_text().splitlines())


def main_gunicorn() -> int:
    bad = 0
    for target in ("/login", "//login", "/./login"):
        checked = gunicorn_run(target)
        print(f"gunicorn POST {target:12} 20 wrong passwords: {checked:2} checked by the app")
        bad += checked > 3
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main() | main_gunicorn())
