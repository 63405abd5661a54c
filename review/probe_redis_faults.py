"""Probe: a real redis-server misbehaving under the login guard and the built-in login, both
flavours — SIGSTOP past the client timeout (at the reservation, and between the app's
verdict and the settlement), CLIENT KILL of every connection before each attempt — with
parallel attempts. Counted: 500s (must be none), passwords judged while Redis could not
answer at the reservation (must be none), and the owner's sign-in once Redis is back.

Run: .venv/bin/python -m review.probe_redis_faults
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import redis

from review.common import CountingLogin
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.guards.timing import LoginDelay
from tests.apps import uvicorn_server, wsgi_server
from tests.servers import RedisServer

KEY = KeyRing.new_key_text()


@contextmanager
def stopped(server: RedisServer) -> Any:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def kill_clients(server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    try:
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    finally:
        admin.close()


def guard(flavour: str, server: RedisServer, login: CountingLogin) -> Any:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "session": {"store": "redis",
                                                  "redis_url": server.url}}, environ={})
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = login.asgi if flavour == "asgi" else login.wsgi
    app = module.LoginGuardMiddleware(inner, settings=settings, paths=["/login"],
                                      delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    return (uvicorn_server if flavour == "asgi" else wsgi_server)(app)


def post(base: str, password: str, user: str = "alice") -> int:
    return httpx.post(base + "/login", data={"username": user, "password": password},
                      timeout=30).status_code


def run(flavour: str, server: RedisServer) -> list[str]:
    problems = []
    # 1. SIGSTOP at the reservation, 20 parallel attempts
    server.flush()
    login = CountingLogin()
    with guard(flavour, server, login) as base:
        with stopped(server), ThreadPoolExecutor(20) as pool:
            answers = Counter(pool.map(lambda i: post(base, f"g{i}"), range(20)))
        judged = len(login.checks)
        owner = post(base, "correct horse battery")
    print(f"{flavour:4} SIGSTOP at reserve: 20 attempts -> {dict(answers)}, judged {judged}; "
          f"after SIGCONT the owner -> {owner}")
    if answers.get(500) or judged or owner != 200:
        problems.append("sigstop-reserve")
    # 2. SIGSTOP between verdict and settlement
    server.flush()
    holder: dict[str, Any] = {}
    login = CountingLogin()
    real = login.judge

    def judge(data: dict[str, Any], path: str) -> Any:
        out = real(data, path)
        if data.get("password") == "stop here":
            holder["ctx"] = stopped(server)
            holder["ctx"].__enter__()
        return out

    login.judge = judge  # type: ignore[method-assign]
    with guard(flavour, server, login) as base:
        try:
            mid = post(base, "stop here")
        finally:
            holder["ctx"].__exit__(None, None, None)
        again = [post(base, f"after {i}") for i in range(5)]
        owner = post(base, "battery staple horse", user="bob")
    wrong = [p for p in login.checks if p != "battery staple horse"]
    print(f"{flavour:4} SIGSTOP before settle: wrong password -> {mid}; then 5 wrong -> "
          f"{again}; wrong judged {len(wrong)} (pair budget 3); bob -> {owner}")
    if mid != 503 or len(wrong) > 3 or owner != 200:
        problems.append("sigstop-settle")
    # 3. CLIENT KILL before each attempt
    server.flush()
    login = CountingLogin()
    with guard(flavour, server, login) as base:
        answers = Counter()
        for i in range(12):
            kill_clients(server)
            answers[post(base, f"k{i}")] += 1
        kill_clients(server)
        owner = post(base, "battery staple horse", user="bob")
    wrong = [p for p in login.checks if p != "battery staple horse"]
    print(f"{flavour:4} CLIENT KILL before each of 12 wrong: {dict(answers)}, wrong judged "
          f"{len(wrong)}; the owner (bob) -> {owner}")
    if answers.get(500) or len(wrong) > 3 or owner != 200:
        problems.append("client-kill")
    return problems


def main() -> int:
    server = RedisServer()
    server.start()
    problems: list[str] = []
    try:
        for flavour in ("asgi", "wsgi"):
            problems += run(flavour, server)
    finally:
        server.stop()
    print("problems:", problems or "none")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
