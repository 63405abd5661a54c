"""Probe: guesses spread over user names and addresses at a guarded /login (both flavours),
counting the passwords the app checked: X-Forwarded-For from an untrusted peer, IPv6
rotation inside one /64, IPv4 and its IPv4-mapped IPv6 form, one name from many addresses,
and case/width/space variants of one name.

Run: .venv/bin/python -m review.probe_addresses
"""

from __future__ import annotations

import random
import sys
from typing import Any

import httpx

from review.common import CountingLogin
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.guards.timing import LoginDelay
from tests.apps import uvicorn_server, wsgi_server

KEY = KeyRing.new_key_text()
VARIANTS = ["alice", "Alice", "ALICE", " alice ", "ａｌｉｃｅ", "ＡＬＩＣＥ", "alice\u3000",
            "\u00a0alice"]


def server_for(flavour: str, trusted: bool) -> tuple[Any, CountingLogin]:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})
    login = CountingLogin()
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    app = module.LoginGuardMiddleware(inner, settings=settings, paths=["/login"],
                                      delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    app = module.ClientAddressMiddleware(app, trusted_proxies=["127.0.0.1/32"] if trusted
                                         else [])
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    return server(app), login


def scenario(flavour: str, name: str, trusted: bool, budget: int,
             plan: list[tuple[str, str]]) -> bool:
    context, login = server_for(flavour, trusted)
    with context as base:
        for i, (user, ip) in enumerate(plan):
            httpx.post(base + "/login", data={"username": user, "password": f"guess {i}"},
                       headers={"X-Forwarded-For": ip}, timeout=30)
    ok = len(login.checks) <= budget
    print(f"{flavour:4} {name:48} {len(plan):3} guesses -> {len(login.checks):3} checked "
          f"(budget {budget}) {'held' if ok else 'BROKEN'}")
    return ok


def main() -> int:
    rng = random.Random(7)
    bad = 0
    for flavour in ("asgi", "wsgi"):
        plans = [
            ("untrusted XFF, random IPs, 60 names", False, 20,
             [(f"user{i}", f"203.0.113.{rng.randrange(256)}") for i in range(60)]),
            ("IPv6 rotation in one /64, 60 names", True, 20,
             [(f"user{i}", f"2001:db8:1:2:{rng.randrange(65536):x}:{i:x}::1")
              for i in range(60)]),
            ("IPv4 / IPv4-mapped alternating, one name", True, 3,
             [("alice", "198.51.100.7" if i % 2 else "::ffff:198.51.100.7")
              for i in range(20)]),
            ("one name from 60 IPv4 addresses", True, 10,
             [("alice", f"198.51.{i // 200}.{i % 200}") for i in range(60)]),
            ("case/width/space variants of one name", True, 3,
             [(VARIANTS[i % len(VARIANTS)], "198.51.100.9") for i in range(24)]),
        ]
        for name, trusted, budget, plan in plans:
            bad += not scenario(flavour, name, trusted, budget, plan)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
