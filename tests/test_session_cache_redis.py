"""The local session cache of RedisSessionStore on a real redis-server: two stores (two
instances of an application) share one Redis; what one writes or ends the other sees at its
next read; a lost or silent invalidation connection sends every read to Redis."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import redis

from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.session.redis_store import RedisSessionStore
from secure_mw.settings import Settings
from tests.clock import Clock
from tests.servers import RedisServer

SID = "k3Jw0Zr8mQyX1vA2bC3dE4fG5hI6jK7lM8nO9pQ0rSt"
VALUE = b'{"user":"alice","groups":["admins"]}'


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def writer(redis_server: RedisServer, ring: KeyRing) -> Iterator[RedisSessionStore]:
    """Another instance (no cache of its own)."""
    store = RedisSessionStore(redis_server.url, keyring=ring, cache_ttl=0)
    yield store
    store.close()


@pytest.fixture
def reader(redis_server: RedisServer, ring: KeyRing,
           clock: Clock) -> Iterator[RedisSessionStore]:
    """This instance: the cache on, its clock injected."""
    store = RedisSessionStore(redis_server.url, keyring=ring, cache_ttl=1.0, clock=clock,
                              socket_timeout=0.5)
    yield store
    store.close()


def gets(raw: redis.Redis) -> int:
    return int(raw.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def tracking_ids(raw: redis.Redis, store: RedisSessionStore) -> list[str]:
    """The ids of the connections tracking keys for ``store`` (its cache's)."""
    cache = store.cache
    conn = None if cache is None else cache._conn
    if conn is None or conn._sock is None:
        return []
    host, port = conn._sock.getsockname()[:2]
    return [c["id"] for c in raw.client_list()
            if "t" in c["flags"] and c["addr"] == f"{host}:{port}"]


def test_a_warm_read_is_served_locally(writer: RedisSessionStore, reader: RedisSessionStore,
                                       raw: redis.Redis) -> None:
    writer.save(SID, VALUE, 60)
    assert reader.load(SID) == VALUE
    before = gets(raw)
    for _ in range(20):
        assert reader.load(SID) == VALUE
    assert gets(raw) == before
    assert reader.cache is not None and len(reader.cache) == 1


def test_a_session_ended_or_rewritten_elsewhere_is_seen_at_the_next_read(
        writer: RedisSessionStore, reader: RedisSessionStore, raw: redis.Redis) -> None:
    writer.save(SID, VALUE, 60)
    assert reader.load(SID) == VALUE
    writer.save(SID, b"rewritten", 60)                       # another instance rewrites it
    assert reader.load(SID) == b"rewritten"
    writer.delete(SID)                                       # ... ends it (a logout)
    assert reader.load(SID) is None
    writer.save_indexed(SID, VALUE, 60, ["sid\x00client\x00op-1"], 60)
    assert reader.load(SID) == VALUE
    assert writer.end_indexed("sid\x00client\x00op-1") == 1  # a back-channel logout
    assert reader.load(SID) is None
    writer.save(SID, VALUE, 60)
    assert reader.load(SID) == VALUE
    raw.flushdb()                                            # everything at once
    assert reader.load(SID) is None


def test_the_same_in_asyncio(writer: RedisSessionStore, reader: RedisSessionStore,
                             raw: redis.Redis) -> None:
    async def run() -> None:
        await writer.asave(SID, VALUE, 60)
        assert await reader.aload(SID) == VALUE
        before = gets(raw)
        assert await reader.aload(SID) == VALUE
        assert gets(raw) == before                           # served locally
        await writer.asave(SID, b"rewritten", 60)
        assert await reader.aload(SID) == b"rewritten"
        await writer.adelete(SID)
        assert await reader.aload(SID) is None
        await writer.asave_indexed(SID, VALUE, 60, ["sub\x00client\x00alice"], 60)
        assert await reader.aload(SID) == VALUE
        assert await writer.aend_indexed("sub\x00client\x00alice") == 1
        assert await reader.aload(SID) is None
        await reader.aclose()
        await writer.aclose()

    asyncio.run(run())


def test_a_miss_is_not_cached(writer: RedisSessionStore, reader: RedisSessionStore) -> None:
    assert reader.load(SID) is None
    writer.save(SID, VALUE, 60)                              # a new session elsewhere
    assert reader.load(SID) == VALUE


def test_its_own_writes_leave_the_cache_at_once(reader: RedisSessionStore) -> None:
    reader.save(SID, VALUE, 60)
    assert reader.load(SID) == VALUE
    reader.save(SID, b"second", 60)
    assert reader.load(SID) == b"second"
    reader.touch(SID, 0)
    assert reader.load(SID) is None


def test_an_entry_never_outlives_its_record(writer: RedisSessionStore,
                                            reader: RedisSessionStore, raw: redis.Redis,
                                            clock: Clock) -> None:
    writer.save(SID, VALUE, 0.3)                             # PTTL 300 ms < the cache's 1 s
    assert reader.load(SID) == VALUE
    clock.advance(0.31)
    before = gets(raw)
    reader.load(SID)
    assert gets(raw) == before + 1                           # read from Redis again


def test_a_read_that_an_invalidation_overtook_is_not_kept(
        writer: RedisSessionStore, reader: RedisSessionStore, raw: redis.Redis) -> None:
    """A GET answered before another instance's write, whose invalidation arrived while the
    answer was on its way, is served once but not kept: it would be stale for the TTL."""
    writer.save(SID, VALUE, 60)
    cache = reader.cache
    assert cache is not None and cache.establish()
    key = reader.redis_key(SID)
    value, token = cache.lookup(key)                         # a miss: this read asks Redis
    assert value is None
    writer.save(SID, b"changed meanwhile", 60)               # ... and is overtaken
    cache.keep(key, b"the answer of before", 60_000, token)
    assert len(cache) == 0
    assert reader.load(SID) == b"changed meanwhile"


def test_a_redis_user_without_client_reads_redis_every_time(
        redis_server: RedisServer, ring: KeyRing, raw: redis.Redis) -> None:
    """A Redis ACL user that may not run CLIENT (no tracking): the cache stays off and
    every read asks Redis (fail closed); the requests themselves work."""
    raw.execute_command("ACL", "SETUSER", "app", "on", ">app-pw", "~*", "+@all", "-client")
    try:
        url = f"redis://app:app-pw@127.0.0.1:{redis_server.port}/0"
        store = RedisSessionStore(url, keyring=ring, cache_ttl=1.0)
        try:
            assert store.cache is not None and not store.cache.establish()
            store.save(SID, VALUE, 60)
            before = gets(raw)
            assert [store.load(SID) for _ in range(5)] == [VALUE] * 5
            assert gets(raw) == before + 5 and len(store.cache) == 0
            assert asyncio.run(store.aload(SID)) == VALUE
        finally:
            store.close()
    finally:
        raw.execute_command("ACL", "DELUSER", "app")


def test_a_killed_invalidation_connection_sends_reads_to_redis_until_it_is_back(
        writer: RedisSessionStore, reader: RedisSessionStore, raw: redis.Redis,
        clock: Clock) -> None:
    writer.save(SID, VALUE, 60)
    assert reader.load(SID) == VALUE
    [tracker] = tracking_ids(raw, reader)
    raw.execute_command("CLIENT", "KILL", "ID", tracker)
    # A write while it is gone: its invalidation is lost with the connection.
    writer.save(SID, b"while-away", 60)
    before = gets(raw)
    assert reader.load(SID) == b"while-away"
    assert reader.load(SID) == b"while-away"
    assert gets(raw) == before + 2                           # every read goes to Redis
    assert reader.cache is not None and not reader.cache.tracking and len(reader.cache) == 0
    assert tracking_ids(raw, reader) == []                           # not retried before its time
    clock.advance(1.01)
    assert reader.load(SID) == b"while-away"                 # re-established, then cached
    assert len(tracking_ids(raw, reader)) == 1
    before = gets(raw)
    assert reader.load(SID) == b"while-away"
    assert gets(raw) == before


def test_a_frozen_server_stops_the_cache_within_its_ttl(
        redis_server: RedisServer, writer: RedisSessionStore, reader: RedisSessionStore,
        clock: Clock) -> None:
    writer.save(SID, VALUE, 60)
    assert reader.load(SID) == VALUE
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        clock.advance(0.6)
        assert reader.load(SID) == VALUE     # heard from 0.6 s ago: a PING goes out
        clock.advance(0.5)                   # no PONG within the TTL: the cache stops
        with pytest.raises(StoreUnavailable):
            reader.load(SID)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def test_the_cache_is_bounded(redis_server: RedisServer, writer: RedisSessionStore,
                              ring: KeyRing, clock: Clock) -> None:
    store = RedisSessionStore(redis_server.url, keyring=ring, cache_entries=3,
                              cache_bytes=100, clock=clock)
    try:
        sids = [f"{SID[:-2]}{i:02d}" for i in range(6)]
        for sid in sids:
            writer.save(sid, b"x" * 30, 60)
            assert store.load(sid) == b"x" * 30
        assert store.cache is not None
        assert len(store.cache) == 3 and store.cache.size <= 100
        writer.save(SID, b"y" * 101, 60)                     # bigger than the bound: not kept
        assert store.load(SID) == b"y" * 101
        assert store.cache.size <= 100
        assert store.load(sids[-1]) == b"x" * 30             # the newest are kept
    finally:
        store.close()


def test_no_cache_on_a_cluster_or_sentinel_or_when_turned_off(ring: KeyRing) -> None:
    for url in ("redis+cluster://127.0.0.1:7000/", "redis+sentinel://127.0.0.1:26379/mymaster"):
        assert RedisSessionStore(url, keyring=ring).cache is None
    assert RedisSessionStore("redis://127.0.0.1:1/0", keyring=ring, cache_ttl=0).cache is None
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]},
                                      "session": {"store": "redis",
                                                  "redis_url": "redis://127.0.0.1:1/0",
                                                  "redis_cache_ttl": "0"}}, environ={})
    assert RedisSessionStore.from_settings(settings.session, ring).cache is None


def test_a_warm_signed_in_request_makes_one_round_trip() -> None:
    """The whole ASGI stack with the session and the rate limit in a real redis-server,
    counted as benchmarks/stack.py counts (socket writes, INFO commandstats): 2 before."""
    from benchmarks.stack import redis_per_request

    loop = asyncio.new_event_loop()
    try:
        found = redis_per_request(loop, [KeyRing.new_key_text()], requests=50)
    finally:
        loop.close()
    assert not isinstance(found, str), found
    commands, writes = found
    assert writes <= 1.0, (commands, writes)
    assert "get" not in commands and commands.get("evalsha") == 1.0, commands
