"""Probe: a session survives the deletion of its user when the name is added again before
the session's next check. ``secure-mw users delete bob`` then ``users add bob`` (a new
person, a new password, other groups) within ``local_users.refresh_interval``: the old bob's
session is looked up by name at its next check, finds a user that is not disabled and whose
``sessions_not_before`` is unset, and goes on — with the new bob's groups.

Run: .venv/bin/python -m review.probe_users_readd
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.clock import Clock

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
ROOT = Path(__file__).resolve().parents[1]


def users_cli(path: Path, *args: str, stdin: str | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECURE_MW_USERS_FILE"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "secure_mw.cli", "users", args[0], "--file",
                           str(path), *args[1:]], input=stdin, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def sign_in(client: Any, base: str, user: str, password: str) -> int:
    form = client.get(base + "/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state
    return int(client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": user, "password": password}).status_code)


def run(flavour: str, store: str, readd: bool) -> Any:
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "users.toml"
    UsersFile(path, hasher=FAST).add("bob", password="battery staple horse")
    clock = Clock()
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(path), "refresh_interval": "5m"},
        "session": {"inactivity": "1h", "expiration": "1d", "store": store}}, environ={})
    options: dict[str, Any] = {"users": UsersFile(path, hasher=FAST), "clock": clock,
                               "delay": LoginDelay(floor=0.001, seed=0.001, jitter=0)}
    if store == "memory":
        options["store"] = MemorySessionStore(clock=clock)
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    with server(module.protect(inner, settings, **options)) as base, browser() as old_bob:
        assert sign_in(old_bob, base, "bob", "battery staple horse") == 303
        users_cli(path, "delete", "bob", "--yes")
        if readd:
            users_cli(path, "add", "bob", "--group", "admins",
                      stdin="a new person's password 42\n")
        clock.advance(301)                      # the session's check is due
        answer = old_bob.get(base + "/hello", headers={"Accept": "application/json"})
        return answer.json() if answer.status_code == 200 else answer.status_code


def main() -> int:
    bad = 0
    for flavour in ("asgi", "wsgi"):
        for store in ("memory", "cookie"):
            deleted = run(flavour, store, readd=False)
            readded = run(flavour, store, readd=True)
            shown = readded if not isinstance(readded, dict) else \
                (readded.get("sub"), readded.get("groups"))
            print(f"{flavour:4} {store:6} deleted: old session -> {deleted}; deleted and "
                  f"added again: old session -> {shown}")
            bad += isinstance(readded, dict)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
