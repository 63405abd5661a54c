"""Probe: the second factor can be guessed without end by an attacker who knows the
password. A password login issues the device cookie at once (before the second step), and
an attempt with a device cookie is regulated by that device alone; each new password login
without the cookie mints a new device id, with a fresh budget of ``max_retries`` codes —
the user's budget (10) and the address's (20) never apply.

Run: .venv/bin/python -m review.probe_totp_devices [rounds]
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.login.totp import TOTP, TOTPStore
from secure_mw.session import MemorySessionStore
from tests.apps import asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.clock import Clock

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
KEY = KeyRing.new_key_text()
PASSWORD = "correct horse battery"


class CountingTOTP(TOTP):
    checked: ClassVar[list[str]] = []

    def verify(self, secret: str, code: str) -> int | None:
        CountingTOTP.checked.append(str(code))
        return super().verify(secret, code)


def sign_in(client: Any, base: str) -> int:
    form = client.get(base + "/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state, form.text
    return int(client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": "alice", "password": PASSWORD}).status_code)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def run(flavour: str, rounds: int) -> tuple[int, int, dict[int, int]]:
    tmp = Path(tempfile.mkdtemp())
    users = UsersFile(tmp / "users.toml", hasher=FAST)
    users.add("alice", password=PASSWORD)
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(users.path)}}, environ={})
    clock = Clock()
    totp = CountingTOTP(issuer="probe", clock=clock)
    store = TOTPStore()
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings, users=users, totp=totp, totp_store=store,
                         store=MemorySessionStore(),
                         delay=LoginDelay(floor=0.001, seed=0.001, jitter=0.0001))
    statuses: dict[int, int] = {}
    with server(app) as base:
        with browser() as owner:            # the owner enrols a second factor
            assert sign_in(owner, base) == 303
            page = owner.get(base + "/.auth/2fa")
            secret = re.search(r"Or type the key: <code>([A-Z2-7]+)</code>", page.text)
            enrol = re.search(r'name="enrol" value="([^"]+)"', page.text)
            assert secret and enrol
            done = owner.post(base + "/.auth/2fa", data={
                "csrf": csrf_of(page.text), "enrol": enrol.group(1),
                "code": totp.code(secret.group(1))})
            assert done.status_code == 303
        CountingTOTP.checked.clear()
        right = {totp.code(secret.group(1))}
        wrong = (f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in right)
        for _ in range(rounds):               # the attacker knows the password only
            with browser() as attacker:       # a fresh browser: no device cookie
                assert sign_in(attacker, base) == 303
                page = attacker.get(base + "/.auth/2fa")
                csrf = csrf_of(page.text)
                for _ in range(4):
                    status = attacker.post(base + "/.auth/2fa", data={
                        "csrf": csrf, "code": next(wrong)}).status_code
                    statuses[status] = statuses.get(status, 0) + 1
    return len(CountingTOTP.checked), rounds * 4, statuses


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    bad = 0
    for flavour in ("asgi", "wsgi"):
        checked, sent, statuses = run(flavour, rounds)
        print(f"{flavour:4} {rounds} password logins, {sent} wrong codes sent: {checked} "
              f"codes checked (user budget 10); answers {statuses}")
        bad += checked > 10
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
