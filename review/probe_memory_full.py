"""Probe: the memory regulator, when a kind's table is full, looks at only the 64 least
recently used subjects: if those 64 have a ban in force, every attempt needing a new subject
is refused (503) although the rest of the table holds subjects that are long finished.
Bans age to the front of the LRU order (a failure does not move a subject, a reservation
does), so an attacker bans 64 pairs, then fills the table with throw-away attempts (empty
passwords: no Argon2 at all), and every sign-in from a new (user, address) pair gets 503
for ``ban_time``. Shown with ``max_subjects=200`` instead of 100,000 (same mechanism; the
real size needs ~100k requests from ~5,000 IPv6 /64s, one /51).

Run: .venv/bin/python -m review.probe_memory_full
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.regulation import MemoryRegulator
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.clock import Clock

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
KEY = KeyRing.new_key_text()
PASSWORD = "correct horse battery"


def post(base: str, user: str, password: str, ip: str) -> int:
    with browser() as client:
        form = client.get(base + "/.auth/login", headers={"X-Forwarded-For": ip})
        state = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state
        return client.post(base + "/.auth/login", headers={"X-Forwarded-For": ip}, data={
            "state": state.group(1), "username": user, "password": password}).status_code


def run(flavour: str, size: int = 200) -> tuple[int, int, int]:
    tmp = Path(tempfile.mkdtemp())
    users = UsersFile(tmp / "users.toml", hasher=FAST)
    users.add("alice", password=PASSWORD)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)},
                                      "server": {"trusted_proxies": ["127.0.0.1/32"]}},
                                     environ={})
    clock = Clock()
    regulator = MemoryRegulator(max_subjects=size, clock=clock)
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings, users=users, regulator=regulator,
                         store=MemorySessionStore(),
                         delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    with server(app) as base:
        # 64 pairs banned: three empty-password failures each, 6 pairs per /64
        for n in range(64):
            ip = f"2001:db8:0:{n // 6:x}::1"
            for _ in range(3):
                post(base, f"victim{n}", "", ip)
        # then throw-away single failures until the pair table is full
        n = 0
        while len(regulator._tables["pair"]) < size and n < 5 * size:
            post(base, f"filler{n}", "", f"2001:db8:1:{n // 19:x}::1")
            n += 1
        clock.advance(90)          # every filler is finished now (pair: 60 s), bans hold
        table = regulator._tables["pair"]
        finished = sum(1 for s in table.values() if s.deadline(120.0) <= clock())
        owner = post(base, "alice", PASSWORD, "198.51.100.20")
    return owner, finished, len(table)


def main() -> int:
    bad = 0
    for flavour in ("asgi", "wsgi"):
        owner, finished, size = run(flavour)
        print(f"{flavour:4} pair table {size} subjects, {finished} of them finished: the "
              f"owner's right password from a new address gets {owner}")
        bad += owner != 303
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
