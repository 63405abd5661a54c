"""Probe: do the answers of the built-in login and the login guard tell an existing user
from an unknown one — before a ban, during a ban, over budget (429)? Compares status,
body (the form token blanked) and the names of the cookies set, for alice (exists), carol
(disabled) and nobody (unknown), each from its own address.

Run: .venv/bin/python -m review.probe_enumeration
"""

from __future__ import annotations

import re
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

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def shape(response: Any) -> tuple[int, str, tuple[str, ...]]:
    body = re.sub(r'name="state" value="[^"]+"', 'name="state" value="-"', response.text)
    cookies = tuple(sorted(c.split("=", 1)[0] for c in response.headers.get_list("set-cookie")))
    return response.status_code, body, cookies


def attempt(client: Any, base: str, user: str, ip: str) -> Any:
    headers = {"X-Forwarded-For": ip}
    form = client.get(base + "/.auth/login", headers=headers)
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state
    return client.post(base + "/.auth/login", headers=headers, data={
        "state": state.group(1), "username": user, "password": "wrong password 1"})


def run(flavour: str) -> int:
    tmp = Path(tempfile.mkdtemp())
    users = UsersFile(tmp / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse battery")
    users.add("carol", password="plum orchard 42 x")
    users.set_disabled("carol", True)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]},
                                      "local_users": {"file": str(users.path)},
                                      "server": {"trusted_proxies": ["127.0.0.1/32"]}},
                                     environ={})
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings, users=users, store=MemorySessionStore(),
                         delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    differences = 0
    with server(app) as base:
        seen: dict[str, list[Any]] = {}
        for n, user in enumerate(("alice", "carol", "nobody")):
            with browser() as client:
                seen[user] = [shape(attempt(client, base, user, f"198.51.100.{n}"))
                              for _ in range(5)]     # 3 judged, then banned
        for i in range(5):
            shapes = {seen[u][i] for u in seen}
            differences += len(shapes) > 1
        print(f"{flavour:4} 5 attempts each for alice/carol/unknown: statuses "
              f"{[s[0] for s in seen['alice']]}; attempts whose answers differ between the "
              f"three: {differences}")
    return differences


def main() -> int:
    return 1 if sum(run(f) for f in ("asgi", "wsgi")) else 0


if __name__ == "__main__":
    sys.exit(main())
