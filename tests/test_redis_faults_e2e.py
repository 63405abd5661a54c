"""A real redis-server failing under concurrent load, behind real servers (uvicorn and a
threaded WSGI server): stopped and restarted, frozen (SIGSTOP) beyond the client timeouts,
out of memory, its connections killed mid-load. Never a 500; sessions fail closed with 503
and Retry-After; each rate-limit rule follows its fail_open choice; the first request after
Redis is back is served; sessions survive an application restart."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.testing import session_cookie
from tests.apps import serve
from tests.servers import RedisServer

KEY = KeyRing.new_key_text()
CLIENTS = 12
EACH = 3
API = {"Accept": "application/json"}


def settings_for(url: str, *, cache_ttl: str = "1s") -> Settings:
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": "redis", "redis_url": url, "redis_cache_ttl": cache_ttl},
        "rate_limits": {"store": "redis", "redis_url": url, "rules": [
            {"key": "ip", "limit": "100000/s", "paths": ["^/public/open"], "fail_open": True},
            {"key": "ip", "limit": "100000/s", "paths": ["^/public/closed"],
             "fail_open": False},
        ]},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/public/"], "policy": "bypass"},
            {"policy": "authenticated"},
        ]},
    }, environ={})


@contextmanager
def app(flavour: str, settings: Settings) -> Iterator[str]:
    module: Any = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(inner, settings)) as base:
        yield base


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


@contextmanager
def killing_connections(server: RedisServer) -> Iterator[None]:
    """Kill every other client connection, again and again, while the block runs."""
    stop = threading.Event()
    admin = redis.Redis.from_url(server.url)

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(redis.RedisError):
                admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        admin.close()


@contextmanager
def out_of_memory(server: RedisServer) -> Iterator[None]:
    admin = redis.Redis.from_url(server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        yield
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()


def load(base: str, cookie: str) -> list[tuple[str, int, str | None]]:
    """CLIENTS parallel clients, each asking EACH times for a protected page and both
    bypassed pages; (path, status, Retry-After) of every answer."""
    paths = ["/secret", "/public/open", "/public/closed"]

    def one(_: int) -> list[tuple[str, int, str | None]]:
        out = []
        with httpx.Client(timeout=30) as client:
            for _ in range(EACH):
                for path in paths:
                    headers = {**API, "Cookie": cookie} if path == "/secret" else API
                    r = client.get(base + path, headers=headers)
                    out.append((path, r.status_code, r.headers.get("retry-after")))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        return [answer for chunk in pool.map(one, range(CLIENTS)) for answer in chunk]


def check_fail_closed(answers: list[tuple[str, int, str | None]], *, reads_work: bool) -> None:
    statuses = Counter((path, status) for path, status, _ in answers)
    assert all(status in (200, 503) for _, status, _ in answers), statuses
    assert all(after and after.isdigit() for _, status, after in answers if status == 503)
    # A rule that fails open lets its path through; one that fails closed refuses it.
    assert statuses[("/public/open", 503)] == 0, statuses
    if not reads_work:
        assert statuses[("/secret", 200)] == 0, statuses         # no session without Redis
        assert statuses[("/public/closed", 200)] == 0, statuses


@pytest.fixture(params=["asgi", "wsgi"])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


FAULTS: dict[str, Callable[[RedisServer], Any]] = {
    "frozen": frozen, "connections killed": killing_connections,
    "out of memory": out_of_memory,
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failing_redis_under_load_fails_closed_and_recovers(
        flavour: str, fault: str, redis_server: RedisServer) -> None:
    # A frozen server is noticed by the session cache only within its TTL (its own test:
    # tests/test_session_cache_redis.py): here every read must go to Redis.
    settings = settings_for(redis_server.url, cache_ttl="0" if fault == "frozen" else "1s")
    cookie = session_cookie(settings, {"sub": "alice"})
    with app(flavour, settings) as base:
        assert httpx.get(base + "/secret", headers={**API, "Cookie": cookie}).status_code == 200
        with FAULTS[fault](redis_server):
            answers = load(base, cookie)
        check_fail_closed(answers, reads_work=fault != "frozen")
        if fault == "frozen":                 # every answer waited for the timeout: 503
            assert {s for p, s, _ in answers if p == "/secret"} == {503}
        if fault == "out of memory":          # reads work, the closed rule's writes do not
            assert {s for p, s, _ in answers if p == "/secret"} == {200}
            assert {s for p, s, _ in answers if p == "/public/closed"} == {503}
        # Redis is back: the very next request is served, with the same session.
        back = httpx.get(base + "/secret", headers={**API, "Cookie": cookie})
        assert back.status_code == 200, back.text
        assert back.json()["sub"] == "alice"
        assert httpx.get(base + "/public/closed", headers=API).status_code == 200


@pytest.mark.slow
def test_a_stopped_redis_fails_closed_and_a_restarted_one_serves_at_once(
        flavour: str, redis_server: RedisServer) -> None:
    settings = settings_for(redis_server.url)
    cookie = session_cookie(settings, {"sub": "alice"})
    with app(flavour, settings) as base:
        redis_server.stop()
        try:
            answers = load(base, cookie)
        finally:
            redis_server.start()
        check_fail_closed(answers, reads_work=False)
        # It came back empty (no persistence): the old session is gone, never a 500; a new
        # one works at once, and so does every rate-limited path.
        assert httpx.get(base + "/secret", headers={**API, "Cookie": cookie}).status_code \
            == 401
        fresh = session_cookie(settings, {"sub": "bob"})
        again = httpx.get(base + "/secret", headers={**API, "Cookie": fresh})
        assert again.status_code == 200 and again.json()["sub"] == "bob"
        assert httpx.get(base + "/public/closed", headers=API).status_code == 200


def test_sessions_survive_an_application_restart(flavour: str,
                                                 redis_server: RedisServer) -> None:
    settings = settings_for(redis_server.url)
    cookie = session_cookie(settings, {"sub": "carol"})
    with app(flavour, settings) as base:
        assert httpx.get(base + "/secret", headers={**API, "Cookie": cookie}).json()["sub"] \
            == "carol"
    with app(flavour, settings_for(redis_server.url)) as base:     # a new process's stack
        again = httpx.get(base + "/secret", headers={**API, "Cookie": cookie})
        assert again.status_code == 200 and again.json()["sub"] == "carol"
