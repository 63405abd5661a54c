"""Probe: the login guard folds user names (NFKC, trim, case fold) for its counters and its
device cookie, but the app behind it decides who is who. In an app whose names are
case-sensitive (a dict lookup, as most hand-written logins), an attacker who owns ``ALICE``
gets, at each of their own logins, a device cookie naming ``alice`` — and a device cookie
replaces every other budget. Each fresh login mints a new device with ``max_retries``
guesses against the victim ``alice``: the user (10) and address (20) budgets never apply.

Run: .venv/bin/python -m review.probe_device_names [rounds]
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

from review import common
from review.common import CountingLogin
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.guards.timing import LoginDelay
from tests.apps import uvicorn_server, wsgi_server

KEY = KeyRing.new_key_text()
DEVICE = "__Host-secure_mw_session_device"


def run(flavour: str, rounds: int) -> tuple[int, int]:
    common.USERS["ALICE"] = "attacker's own password"     # the attacker's own account
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})
    login = CountingLogin()
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.LoginGuardMiddleware(inner, settings=settings, paths=["/login"],
                                      delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    sent = 0
    with server(app) as base:
        for r in range(rounds):
            own = httpx.post(base + "/login", data={"username": "ALICE",
                                                    "password": "attacker's own password"})
            assert own.status_code == 200
            device = own.cookies.get(DEVICE) or next(
                c.split(";")[0].split("=", 1)[1] for c in own.headers.get_list("set-cookie")
                if c.startswith(DEVICE))
            for i in range(3):
                sent += 1
                httpx.post(base + "/login", data={"username": "alice",
                                                  "password": f"guess {r}.{i}"},
                           headers={"Cookie": f"{DEVICE}={device}"})
    victim = [p for p in login.checks if p.startswith("guess")]
    return len(victim), sent


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    bad = 0
    for flavour in ("asgi", "wsgi"):
        checked, sent = run(flavour, rounds)
        print(f"{flavour:4} {rounds} logins to the attacker's own ALICE, {sent} guesses at "
              f"alice: {checked} checked (user budget 10, address budget 20)")
        bad += checked > 10
    return 1 if bad else 0



def two_apps(flavour: str, rounds: int = 10) -> tuple[int, int]:
    """App A and app B share the key ring (and the default cookie name) but not their users:
    the attacker's own ``alice`` on A mints device cookies that B accepts for its ``alice``."""
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})
    module: Any = asgi if flavour == "asgi" else wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    on_a, on_b = CountingLogin(), CountingLogin()
    delay = LoginDelay(floor=0.001, seed=0.001, jitter=0)
    app_a = module.LoginGuardMiddleware(on_a.asgi if flavour == "asgi" else on_a.wsgi,
                                        settings=settings, paths=["/login"], delay=delay)
    app_b = module.LoginGuardMiddleware(on_b.asgi if flavour == "asgi" else on_b.wsgi,
                                        settings=settings, paths=["/login"], delay=delay)
    sent = 0
    with server(app_a) as a, server(app_b) as b:
        for r in range(rounds):
            # on A, "alice" is the attacker's account (A's password for it: the USERS one)
            own = httpx.post(a + "/login", data={"username": "alice",
                                                 "password": common.USERS["alice"]})
            device = next(c.split(";")[0].split("=", 1)[1]
                          for c in own.headers.get_list("set-cookie") if c.startswith(DEVICE))
            for i in range(3):
                sent += 1
                httpx.post(b + "/login", data={"username": "alice",
                                               "password": f"guess {r}.{i}"},
                           headers={"Cookie": f"{DEVICE}={device}"})
    return len([p for p in on_b.checks if p.startswith("guess")]), sent


def main_two_apps() -> int:
    bad = 0
    for flavour in ("asgi", "wsgi"):
        checked, sent = two_apps(flavour)
        print(f"{flavour:4} device cookies minted on app A, {sent} guesses at app B's alice: "
              f"{checked} checked (user budget 10)")
        bad += checked > 10
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main() | main_two_apps())
