"""GET /.auth/health on real servers, both flavours, with a real redis-server stopped and
started: 200 while the stores answer, 503 with Retry-After when one does not, nothing
secret in the answer, and a flood of probes reaching Redis once per cache interval (the
clock is injected)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from secure_mw import Settings, asgi, wsgi
from secure_mw._driver import run_sync
from secure_mw.crypto import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.health import HealthCheck, store_urls
from tests.apps import FLAVOURS, asgi_inner, uvicorn_server, wsgi_inner, wsgi_server
from tests.clock import Clock
from tests.servers import RedisServer

KEY = KeyRing.new_key_text()


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def settings_for(tmp_path: Path, url: str, **metrics: Any) -> Settings:
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "local_users": {"file": str(tmp_path / "users.toml")},
        "session": {"store": "redis", "redis_url": url},
        "metrics": {"health_timeout": "500ms", **metrics}}, environ={})


def pings(server: RedisServer) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


def serve(flavour: str, settings: Settings, **options: Any) -> Any:
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    return server(module.protect(inner, settings, **options))


@pytest.mark.external("redis-server")
def test_health_follows_redis_down_and_up(flavour: str, tmp_path: Path,
                                          redis_server: RedisServer) -> None:
    clock = Clock(1000.0)
    settings = settings_for(tmp_path, redis_server.url)
    redis_server.start()
    try:
        with serve(flavour, settings, health_clock=clock) as base:
            up = httpx.get(base + "/.auth/health")
            assert up.status_code == 200
            assert up.json() == {"status": "ok", "checks": {"session": "ok",
                                                            "regulation": "ok"}}
            assert up.headers["cache-control"] == "no-store"
            redis_server.stop()
            # Within the cache interval the last answer stands (no store is asked) ...
            assert httpx.get(base + "/.auth/health").status_code == 200
            clock.advance(1.0)
            down = httpx.get(base + "/.auth/health")
            assert down.status_code == 503
            assert down.json() == {"status": "unavailable",
                                   "checks": {"session": "unavailable",
                                              "regulation": "unavailable"}}
            assert down.headers["retry-after"] == "1"
            for secret in (str(redis_server.port), "redis", "127.0.0.1", KEY):
                assert secret not in down.text
            redis_server.start()
            assert httpx.get(base + "/.auth/health").status_code == 503     # cached
            clock.advance(1.0)
            assert httpx.get(base + "/.auth/health").status_code == 200
            head = httpx.head(base + "/.auth/health")
            assert head.status_code == 200 and head.content == b""
    finally:
        redis_server.start()


@pytest.mark.external("redis-server")
def test_a_flood_of_probes_pings_redis_once_per_interval(flavour: str, tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    clock = Clock(1000.0)
    # One store only, so one PING a check.
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "local_users": {"file": str(tmp_path / "users.toml")},
        "session": {"store": "redis", "redis_url": redis_server.url},
        "oidc": {"issuer": "https://idp.example.com", "client_id": "app",
                 "client_secret": "s3cret-s3cret-s3cret"}}, environ={})
    assert store_urls(settings) == {"session": redis_server.url}
    with serve(flavour, settings, health_clock=clock) as base, \
            httpx.Client(timeout=10) as client:
        # A first check opens the connection (redis-py PINGs a new one once itself).
        assert client.get(base + "/.auth/health").status_code == 200
        clock.advance(1.0)
        before = pings(redis_server)
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: client.get(base + "/.auth/health").status_code,
                                     range(64)))
        assert statuses == [200] * 64
        assert pings(redis_server) - before == 1
        clock.advance(1.0)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: client.get(base + "/.auth/health"), range(32)))
        assert pings(redis_server) - before == 2


def test_the_health_answer_without_external_stores(flavour: str, tmp_path: Path) -> None:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(tmp_path / "u.toml")}},
                                     environ={})
    with serve(flavour, settings) as base:
        answer = httpx.get(base + "/.auth/health")
        assert answer.status_code == 200
        assert json.loads(answer.text) == {"status": "ok", "checks": {}}
        # Only GET and HEAD, only the exact path: the rest goes on as before.
        assert httpx.post(base + "/.auth/health").status_code != 200
        assert httpx.get(base + "/.auth/healthz").status_code != 200


def test_health_can_be_switched_off(flavour: str, tmp_path: Path) -> None:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KEY]},
                                      "local_users": {"file": str(tmp_path / "u.toml")},
                                      "metrics": {"health": False}}, environ={})
    with serve(flavour, settings) as base:
        answer = httpx.get(base + "/.auth/health")
        assert answer.status_code == 404 and "checks" not in answer.text


class _Target:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    def ping(self) -> None:
        self.calls += 1
        if not self.up:
            raise StoreUnavailable("session store unavailable: 10.0.0.5:6379")

    async def aping(self) -> None:
        self.ping()


def test_the_cache_ages_with_the_clock(tmp_path: Path) -> None:
    clock = Clock(0.0)
    target = _Target()
    settings = Settings.from_mapping({"metrics": {"health_cache": "2s"}}, environ={})
    check = HealthCheck(settings, targets=[(("session", "regulation"), target)], clock=clock)
    assert check.cached() is None
    assert run_sync(check.check()).status == 200
    target.up = False
    clock.advance(1.9)
    cached = check.cached()
    assert cached is not None and cached.status == 200 and target.calls == 1
    clock.advance(0.1)
    assert check.cached() is None
    down = run_sync(check.check())
    assert down.status == 503 and dict(down.headers)["retry-after"] == "2"
    assert b"10.0.0.5" not in down.body and target.calls == 2


@pytest.mark.external("redis-server")
def test_a_frozen_redis_is_unavailable_not_a_hang(flavour: str, tmp_path: Path,
                                                  redis_server: RedisServer) -> None:
    import signal

    clock = Clock(1000.0)
    settings = settings_for(tmp_path, redis_server.url, health_timeout="200ms")
    redis_server.start()
    with serve(flavour, settings, health_clock=clock) as base:
        assert httpx.get(base + "/.auth/health").status_code == 200
        clock.advance(1.0)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)      # accepts, never answers
        try:
            frozen = httpx.get(base + "/.auth/health", timeout=30)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert frozen.status_code == 503 and frozen.headers["retry-after"] == "1"
        assert frozen.json()["checks"]["session"] == "unavailable"
