"""Races between requests of one session, on the real stores."""

from __future__ import annotations

import pytest

from secure_mw import Settings
from secure_mw._driver import run_sync
from secure_mw.crypto import KeyRing
from secure_mw.http import RequestView
from secure_mw.session import MemorySessionStore, SessionManager
from secure_mw.session.redis_store import RedisSessionStore
from tests.clock import Clock
from tests.servers import RedisServer

KEY = KeyRing.new_key_text()


def _manager(store_kind: str, clock: Clock, redis_url: str | None) -> SessionManager:
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": store_kind, **({"redis_url": redis_url} if redis_url else {})},
    }, environ={})
    ring = KeyRing.from_settings(settings.keys)
    store = (RedisSessionStore(redis_url, keyring=ring) if redis_url
             else MemorySessionStore(clock=clock))
    return SessionManager(settings.session, keyring=ring, store=store, clock=clock)


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_request_in_flight_cannot_bring_back_a_logged_out_session(
        store_kind: str, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_server").url if store_kind == "redis" else None
    clock = Clock()
    manager = _manager(store_kind, clock, redis_url)
    session = manager.new(claims={"sub": "alice"})
    cookies = run_sync(manager.save(session, new=True))
    assert cookies
    view = RequestView("GET", "https", "app", "/", "", {"cookie": cookies[0].split(";")[0]},
                       "127.0.0.1")
    in_flight = run_sync(manager.read(view)).session       # request A has read it ...
    assert in_flight is not None
    run_sync(manager.destroy(session))                     # ... the user logs out ...
    clock.advance(120)
    touched = in_flight.evolve(last_active=clock())
    assert run_sync(manager.save(touched)) is None         # ... A's write-back is refused
    assert run_sync(manager.read(view)).session is None    # and the session stays gone


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_a_login_state_is_claimed_once(store_kind: str,
                                       request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_server").url if store_kind == "redis" else None
    clock = Clock()
    first = _manager(store_kind, clock, redis_url)
    assert run_sync(first.claim_once("state:abc", 600)) is True
    assert run_sync(first.claim_once("state:abc", 600)) is False
    assert run_sync(first.claim_once("state:abd", 600)) is True
    if redis_url:       # another process sharing the Redis sees the claim too
        other = _manager(store_kind, clock, redis_url)
        assert run_sync(other.claim_once("state:abc", 600)) is False


def test_redis_store_update_is_set_xx(redis_server: RedisServer) -> None:
    ring = KeyRing.generate()
    store = RedisSessionStore(redis_server.url, keyring=ring)
    assert store.save("a" * 43, b"v", 60, only_if_exists=True) is False
    assert store.load("a" * 43) is None
    assert store.save("a" * 43, b"v", 60) is True
    assert store.save("a" * 43, b"w", 60, only_if_exists=True) is True
    assert store.load("a" * 43) == b"w"


@pytest.mark.parametrize("store_kind", ["cookie", "redis"])
def test_the_decode_cache_never_bypasses_lifetimes_or_logout(
        store_kind: str, request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue("redis_server").url if store_kind == "redis" else None
    clock = Clock()
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": store_kind, "inactivity": "5m",
                    **({"redis_url": redis_url} if redis_url else {})},
    }, environ={})
    ring = KeyRing.from_settings(settings.keys)
    store = RedisSessionStore(redis_url, keyring=ring) if redis_url else None
    manager = SessionManager(settings.session, keyring=ring, store=store, clock=clock)
    session = manager.new(claims={"sub": "alice"})
    cookies = run_sync(manager.save(session, new=True)) or []
    view = RequestView("GET", "https", "app", "/", "",
                       {"cookie": "; ".join(c.split(";")[0] for c in cookies)}, "127.0.0.1")
    assert run_sync(manager.read(view)).session is not None
    assert run_sync(manager.read(view)).session is not None     # now from the cache
    clock.advance(301)
    assert run_sync(manager.read(view)).session is None          # idle too long, cache or not
    if redis_url:
        clock.now -= 301
        fresh = manager.new(claims={"sub": "bob"})
        cookies = run_sync(manager.save(fresh, new=True)) or []
        view = RequestView("GET", "https", "app", "/", "", {"cookie": cookies[0].split(";")[0]},
                           "127.0.0.1")
        assert run_sync(manager.read(view)).session is not None
        run_sync(manager.destroy(fresh))
        assert run_sync(manager.read(view)).session is None      # gone from Redis: gone
