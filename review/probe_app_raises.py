"""Probe: an exception in the app behind the login guard leaves the attempt's reservation
unsettled (neither failed nor released): it holds the user's budget for ``find_time``, and
no ``login_failure`` audit line is written for it (fail2ban never sees it). Ten such
requests from ten addresses make the owner's right password a 429 for two minutes.

Run: .venv/bin/python -m review.probe_app_raises
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import httpx

from review.common import CountingLogin
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.guards.regulation import MemoryRegulator
from secure_mw.guards.timing import LoginDelay
from tests.apps import uvicorn_server, wsgi_server
from tests.clock import Clock

KEY = KeyRing.new_key_text()


class Audit(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run(flavour: str) -> tuple[list[int], int, int, int]:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]}}, environ={})
    login = CountingLogin(raise_on=lambda data: data.get("password") == "boom")
    clock = Clock()
    regulator = MemoryRegulator(clock=clock)
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    app = module.LoginGuardMiddleware(inner, settings=settings, paths=["/login"],
                                      regulator=regulator,
                                      delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    app = module.ClientAddressMiddleware(app, trusted_proxies=["127.0.0.1/32"])
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    audit = Audit()
    logging.getLogger("secure_mw.audit").addHandler(audit)
    try:
        with server(app) as base:
            statuses = [httpx.post(base + "/login", data={"username": "alice",
                                                          "password": "boom"},
                                   headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
                        for i in range(10)]
            owner = httpx.post(base + "/login", data={"username": "alice",
                                                      "password": "correct horse battery"},
                               headers={"X-Forwarded-For": "203.0.113.1"}).status_code
            pending = sum(len(s.pending) for s in regulator._tables["user"].values())
    finally:
        logging.getLogger("secure_mw.audit").removeHandler(audit)
    failures = sum('"login_failure"' in line and "198.51.100" in line for line in audit.lines)
    return statuses, owner, pending, failures


def main() -> int:
    bad = 0
    for flavour in ("asgi", "wsgi"):
        statuses, owner, pending, failures = run(flavour)
        print(f"{flavour:4} 10 requests that make the app raise: answers {sorted(set(statuses))},"
              f" {pending} reservations left pending on the user, {failures} login_failure "
              f"lines; then the owner's right password -> {owner}")
        bad += pending > 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
