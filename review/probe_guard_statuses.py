"""Probe: the login guard frees the reservation of any answer that is neither 401/403 nor
2xx/3xx, and counts 2xx as a success. FastAPI's OAuth2 tutorial answers a wrong password
with 400 ("Incorrect username or password"), Django's LoginView and most Flask forms with
200 (the form again): behind the guard with its defaults, every guess is checked.

Run: .venv/bin/python -m review.probe_guard_statuses
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

from review.common import CountingLogin
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from tests.apps import uvicorn_server, wsgi_server

KEY = KeyRing.new_key_text()


def run(flavour: str, fail_status: int, guesses: int = 30) -> tuple[int, set[int], bool]:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})
    login = CountingLogin(fail_status=fail_status)
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.LoginGuardMiddleware(inner, settings=settings, paths=["/token"])
    statuses = set()
    with server(app) as base:
        for i in range(guesses):
            statuses.add(httpx.post(base + "/token", data={
                "username": "alice", "password": f"guess {i}"}, timeout=30).status_code)
        last = httpx.post(base + "/token", data={"username": "alice",
                                                 "password": "correct horse battery"})
    return len(login.checks), statuses, last.status_code == 200


def main() -> int:
    bad = 0
    for flavour in ("asgi", "wsgi"):
        for status in (401, 400, 422, 200, 500):
            checked, statuses, got_in = run(flavour, status)
            print(f"{flavour:4} wrong password answered {status}: 30 guesses, {checked:2} "
                  f"checked, statuses {sorted(statuses)}, right password then accepted: "
                  f"{got_in}")
            bad += checked > 3
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
