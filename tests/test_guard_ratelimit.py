"""GCRA rate limiting: exact arithmetic in memory with an injected clock, and the same
decisions from Redis (a real redis-server: the ``redis_server`` fixture, no mocks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from secure_mw._sqlite import Database
from secure_mw.errors import ConfigError, StoreUnavailable
from secure_mw.guards.layers import RateLimitLayer
from secure_mw.guards.ratelimit import (
    _GCRA,
    MemoryRateLimiter,
    RateDecision,
    RedisRateLimiter,
    limiter_from_settings,
    rate_headers,
    rate_lines,
)
from secure_mw.guards.ratelimit_sqlite import SqliteRateLimiter
from secure_mw.settings import RateLimitsSettings, Settings, SqliteSettings, parse_rate_limit
from tests.clock import Clock
from tests.servers import RedisServer

HOURLY = parse_rate_limit("5/hour")                  # T = 720 s
TWO = ((3, 1.0), (5, 60.0))                          # T = 1/3 s and 12 s
TEN = ((10, 10.0),)                                  # T = 1 s


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture(params=["memory", "sqlite"])
def mem(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> MemoryRateLimiter:
    """A limiter on the injected clock: in memory, or in a SQLite file (same decisions)."""
    if request.param == "sqlite":
        db = Database(tmp_path / "store.sqlite3", clock=clock)
        db.check()
        return SqliteRateLimiter(db)  # type: ignore[return-value]
    return MemoryRateLimiter(clock=clock)


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def rl(redis_server: RedisServer) -> Iterator[RedisRateLimiter]:
    limiter = RedisRateLimiter(redis_server.url)
    yield limiter
    limiter.close()


def _shape(d: RateDecision) -> tuple[bool, int, int, str]:
    return d.allowed, d.limit, d.remaining, d.policy


# -- memory: exact GCRA arithmetic ----------------------------------------------------------


def test_burst_then_refused_with_exact_values(mem: MemoryRateLimiter) -> None:
    for i in range(5):
        d = mem.hit("k", HOURLY)
        assert d == RateDecision(True, 5, 4 - i, 720.0 * (i + 1), 0.0, '"5/3600s";q=5;w=3600',
                                 ('"5/3600s";q=5;w=3600',))
    d = mem.hit("k", HOURLY)
    assert (d.allowed, d.remaining, d.reset_after, d.retry_after) == (False, 0, 3600.0, 720.0)
    # a refusal consumes nothing
    assert mem.hit("k", HOURLY).retry_after == 720.0


def test_steady_rate_one_per_emission_interval(mem: MemoryRateLimiter, clock: Clock) -> None:
    for _ in range(5):
        mem.hit("k", HOURLY)
    for _ in range(3):
        clock.advance(719.5)
        d = mem.hit("k", HOURLY)
        assert not d.allowed and d.retry_after == pytest.approx(0.5)
        clock.advance(0.5)
        d = mem.hit("k", HOURLY)
        assert d.allowed and d.remaining == 0 and d.reset_after == pytest.approx(3600.0)
        assert not mem.hit("k", HOURLY).allowed


def test_partial_refill_and_full_reset(mem: MemoryRateLimiter, clock: Clock) -> None:
    for _ in range(10):
        assert mem.hit("k", TEN).allowed
    clock.advance(3.5)  # 3.5 units back: 3 whole ones
    d = mem.hit("k", TEN)
    assert (d.allowed, d.remaining, d.reset_after) == (True, 2, pytest.approx(7.5))
    clock.advance(7.5)  # everything drained
    d = mem.hit("k", TEN)
    assert (d.remaining, d.reset_after) == (9, 1.0)


def test_retry_after_is_exactly_when_it_passes(mem: MemoryRateLimiter, clock: Clock) -> None:
    for _ in range(10):
        mem.hit("k", TEN)
    d = mem.hit("k", TEN, cost=3)
    assert not d.allowed and d.retry_after == pytest.approx(3.0)
    clock.advance(d.retry_after - 0.01)
    assert not mem.hit("k", TEN, cost=3).allowed
    clock.advance(0.01)
    assert mem.hit("k", TEN, cost=3).allowed


def test_multiple_limits_most_restrictive_decides(mem: MemoryRateLimiter, clock: Clock) -> None:
    p0, p1 = '"3/1s";q=3;w=1', '"5/60s";q=5;w=60'
    seen = [mem.hit("k", TWO) for _ in range(4)]
    assert [(d.allowed, d.limit, d.remaining, d.policy) for d in seen] == [
        (True, 3, 2, p0), (True, 3, 1, p0), (True, 3, 0, p0), (False, 3, 0, p0)]
    assert seen[3].retry_after == pytest.approx(1 / 3)
    assert seen[3].reset_after == pytest.approx(1.0)
    assert seen[0].policies == (p0, p1)

    clock.advance(1.0)  # the per-second limit has drained; the per-minute one owes 35 s
    d = mem.hit("k", TWO)
    assert (d.allowed, d.limit, d.remaining, d.policy) == (True, 5, 1, p1)
    assert d.reset_after == pytest.approx(47.0)
    d = mem.hit("k", TWO)
    assert (d.allowed, d.limit, d.remaining, d.reset_after) == (True, 5, 0, pytest.approx(59.0))
    # the per-second limit would pass, the per-minute one refuses: 11 s to wait
    d = mem.hit("k", TWO)
    assert (d.allowed, d.limit, d.policy) == (False, 5, p1)
    assert d.retry_after == pytest.approx(11.0) and d.reset_after == pytest.approx(59.0)
    # ... and the refusal consumed nothing from the per-second limit either
    assert mem.hit("k", TWO, cost=0).remaining == 0  # still per-minute-bound
    clock.advance(11.0)
    d = mem.hit("k", TWO)
    assert (d.allowed, d.limit, d.remaining, d.reset_after) == (True, 5, 0, pytest.approx(60.0))
    clock.advance(12.0)
    d = mem.hit("k", TWO)
    assert d.allowed and d.limit == 5  # the per-second limit only ever saw 1 request since


def test_refusal_by_one_limit_leaves_the_others_untouched(mem: MemoryRateLimiter) -> None:
    limits = ((100, 3600.0), (2, 1.0))
    assert mem.hit("k", limits).allowed and mem.hit("k", limits).allowed
    for _ in range(50):
        assert not mem.hit("k", limits).allowed
    # the hourly limit (index 0: peek at it alone) saw two requests, not 52
    assert mem.hit("k", ((100, 3600.0),), cost=0).remaining == 98


def test_cost(mem: MemoryRateLimiter) -> None:
    d = mem.hit("k", TEN, cost=4)
    assert (d.allowed, d.remaining, d.reset_after) == (True, 6, 4.0)
    d = mem.hit("k", TEN, cost=7)  # 11 s owed > 10: refused, 1 s to wait, 6 available
    assert (d.allowed, d.remaining, d.reset_after, d.retry_after) == (False, 6, 4.0, 1.0)
    d = mem.hit("k", TEN, cost=6)
    assert (d.allowed, d.remaining) == (True, 0)
    with pytest.raises(ValueError, match="never pass"):
        mem.hit("k", TEN, cost=11)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="cost"):
            mem.hit("k", TEN, cost=bad)  # type: ignore[arg-type]


def test_cost_zero_peeks_without_consuming(mem: MemoryRateLimiter) -> None:
    assert mem.hit("k", TEN, cost=0) == mem.hit("k", TEN, cost=0)
    assert mem.hit("k", TEN, cost=0).remaining == 10
    assert len(mem) == 0  # nothing stored
    mem.hit("k", TEN, cost=10)
    d = mem.hit("k", TEN, cost=0)
    assert (d.allowed, d.remaining, d.reset_after) == (True, 0, 10.0)


def test_keys_are_independent(mem: MemoryRateLimiter) -> None:
    for _ in range(5):
        mem.hit("a", HOURLY)
    assert not mem.hit("a", HOURLY).allowed
    assert mem.hit("b", HOURLY).remaining == 4


def test_memory_is_bounded_by_max_keys(clock: Clock) -> None:
    mem = MemoryRateLimiter(max_keys=3, clock=clock)
    for key in "abcdef":
        for _ in range(5):
            mem.hit(key, HOURLY)
        assert len(mem) <= 3
    assert not mem.hit("f", HOURLY).allowed          # recent: still limited
    assert mem.hit("a", HOURLY).remaining == 4       # least recently used: forgotten


def test_each_key_prefix_has_its_own_bound(clock: Clock) -> None:
    """A flood of distinct keys in one rule (every user name an attacker tries) cannot evict
    another rule's state (the attacker's own address) and so reset it."""
    mem = MemoryRateLimiter(max_keys=10, clock=clock)
    for _ in range(5):
        mem.hit("r0:ip:203.0.113.9", HOURLY)
    assert not mem.hit("r0:ip:203.0.113.9", HOURLY).allowed
    for n in range(1000):
        mem.hit(f"r1:user:name{n}", HOURLY)
    assert not mem.hit("r0:ip:203.0.113.9", HOURLY).allowed
    assert len(mem) == 11
    for n in range(300):                       # keys without a prefix share one table
        mem.hit(f"plain{n}", HOURLY)
    for n in range(300):                       # beyond 256 prefixes, the rest share one
        mem.hit(f"p{n}:x", HOURLY)
    assert len(mem) <= 10 * 258


def test_refused_keys_stay_recent(clock: Clock) -> None:
    mem = MemoryRateLimiter(max_keys=2, clock=clock)
    for _ in range(5):
        mem.hit("attacker", HOURLY)
    mem.hit("x", HOURLY)
    assert not mem.hit("attacker", HOURLY).allowed   # refused: moved to the recent end
    mem.hit("y", HOURLY)                             # evicts x, not the attacker
    assert not mem.hit("attacker", HOURLY).allowed


def test_drained_keys_are_dropped(clock: Clock) -> None:
    mem = MemoryRateLimiter(clock=clock)
    mem.hit("a", TEN)
    mem.hit("b", TEN)
    clock.advance(1.0)  # both drained
    mem.hit("c", TEN)
    mem.hit("c", TEN)
    assert len(mem) == 1


def test_memory_threads_never_exceed_the_limit() -> None:
    mem = MemoryRateLimiter()
    limits = ((100, 3600.0),)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: mem.hit("k", limits).allowed, range(1000)))
    assert results.count(True) == 100


def test_memory_async_matches_sync(clock: Clock) -> None:
    a, b = MemoryRateLimiter(clock=clock), MemoryRateLimiter(clock=clock)

    async def many(n: int) -> list[RateDecision]:
        return [await a.ahit("k", TWO) for _ in range(n)]

    first = asyncio.run(many(2))
    second = asyncio.run(many(3))
    assert first + second == [b.hit("k", TWO) for _ in range(5)]


@pytest.mark.parametrize("limits", [(), [(1, 1.0)], ((0, 1.0),), ((1, 0.0),), ((1, float("inf")),),
                                    ((True, 1.0),), ((1, 1.0, 2),)])
def test_bad_limits(mem: MemoryRateLimiter, limits: object) -> None:
    with pytest.raises(ValueError):
        mem.hit("k", limits)  # type: ignore[arg-type]


def test_bad_key(mem: MemoryRateLimiter) -> None:
    with pytest.raises(TypeError):
        mem.hit(b"k", TEN)  # type: ignore[arg-type]


def test_bad_max_keys() -> None:
    with pytest.raises(ValueError):
        MemoryRateLimiter(max_keys=0)


# -- headers ---------------------------------------------------------------------------------


def test_headers_allowed(mem: MemoryRateLimiter) -> None:
    d = mem.hit("k", parse_rate_limit("20/second;600/minute"))
    assert rate_headers(d) == [
        ("RateLimit-Policy", '"20/1s";q=20;w=1, "600/60s";q=600;w=60'),
        ("RateLimit", '"20/1s";r=19;t=1'),
    ]


def test_headers_refused_have_retry_after_rounded_up(mem: MemoryRateLimiter,
                                                     clock: Clock) -> None:
    limits = parse_rate_limit("20/second")
    for _ in range(20):
        mem.hit("k", limits)
    d = mem.hit("k", limits)
    assert d.retry_after == pytest.approx(0.05)
    assert rate_headers(d) == [
        ("RateLimit-Policy", '"20/1s";q=20;w=1'),
        ("RateLimit", '"20/1s";r=0;t=1'),
        ("Retry-After", "1"),
    ]
    for _ in range(5):
        mem.hit("h", HOURLY)
    clock.advance(0.25)
    d = mem.hit("h", HOURLY)
    assert dict(rate_headers(d))["Retry-After"] == "720"     # 719.75 s rounded up
    assert dict(rate_headers(d))["RateLimit"] == '"5/3600s";r=0;t=720'


def test_the_header_memo_keeps_each_decision_its_own_spelling() -> None:
    """The RateLimit lines of equal-looking decisions are kept apart: a limiter of one's
    own that says ``3.0`` left gets ``r=3.0``, the built-in one's ``3`` stays ``r=3``, in
    either order; text headers and raw lines agree, refused ones carry Retry-After."""
    policy = '"5/60s";q=5;w=60'
    as_float = RateDecision(True, 5, 3.0, 24.0, 0.0, policy, (policy,))  # type: ignore[arg-type]
    as_int = RateDecision(True, 5, 3, 24.0, 0.0, policy, (policy,))
    refused = RateDecision(False, 5, 0, 60.0, 12.0, policy, [policy])    # type: ignore[arg-type]
    for first, second in ((as_float, as_int), (as_int, as_float)):
        rate_lines(first)
        assert dict(rate_lines(second))[b"ratelimit"] == \
            f'"5/60s";r={second.remaining};t=24'.encode()
    assert [(n.lower().encode(), v.encode()) for n, v in rate_headers(refused)] == \
        rate_lines(refused) == [(b"ratelimit-policy", policy.encode()),
                                (b"ratelimit", b'"5/60s";r=0;t=12'), (b"retry-after", b"12")]


def test_headers_t_is_the_time_to_full_quota(mem: MemoryRateLimiter) -> None:
    for _ in range(3):
        d = mem.hit("k", HOURLY)
    assert dict(rate_headers(d))["RateLimit"] == '"5/3600s";r=2;t=2160'


# -- Redis -----------------------------------------------------------------------------------


def test_redis_burst_of_five_per_hour(rl: RedisRateLimiter) -> None:
    decisions = [rl.hit("k", HOURLY) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert decisions[5].retry_after == pytest.approx(720.0, abs=1.0)
    assert decisions[5].reset_after == pytest.approx(3600.0, abs=1.0)
    assert decisions[0].reset_after == pytest.approx(720.0, abs=1.0)


def test_redis_and_memory_decide_alike(rl: RedisRateLimiter, mem: MemoryRateLimiter) -> None:
    limits = parse_rate_limit("5/hour;7/day")
    for cost in (1, 1, 2, 3, 1, 0, 1, 1, 5, 1):
        r, m = rl.hit("k", limits, cost), mem.hit("k", limits, cost)
        assert _shape(r) == _shape(m)
        assert r.reset_after == pytest.approx(m.reset_after, abs=1.0)
        assert r.retry_after == pytest.approx(m.retry_after, abs=1.0)
        assert r.policies == m.policies


def test_redis_five_per_second_on_the_server_clock(rl: RedisRateLimiter) -> None:
    limits = parse_rate_limit("5/second")
    assert [rl.hit("fast", limits).allowed for _ in range(5)] == [True] * 5
    refused = rl.hit("fast", limits)
    assert not refused.allowed and 0 < refused.retry_after <= 0.2


def test_redis_keys_share_one_hash_tag_and_hide_the_key(rl: RedisRateLimiter,
                                                        raw: redis.Redis) -> None:
    key = "rule0:ip:203.0.113.9"
    rl.hit(key, parse_rate_limit("20/second;600/minute;5000/day"))
    keys = sorted(raw.keys("*"))
    expected = base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).decode()[:22]
    assert keys == [f"secure_mw:rl:{{{expected}}}:{i}" for i in range(3)]
    assert keys == rl.redis_keys(key, parse_rate_limit("20/second;600/minute;5000/day"))
    tags = {re.search(r"\{([^}]*)\}", str(k)).group(1) for k in keys}  # type: ignore[union-attr]
    assert tags == {expected}
    assert not any("203.0.113.9" in k for k in keys)


def test_redis_ttls_are_bounded_by_the_period(rl: RedisRateLimiter, raw: redis.Redis) -> None:
    # Each key expires when its debt has drained: 3 x 5 s and 3 x 10 s owed here. Time only
    # lowers a TTL, so the upper bounds hold however slow the machine; the lower bound only
    # tells the two keys apart.
    limits = ((20, 100.0), (600, 6000.0))
    rl.hit("k", limits, cost=3)
    k0, k1 = rl.redis_keys("k", limits)
    assert 0 < raw.pttl(k0) <= 15_001
    assert 15_001 < raw.pttl(k1) <= 30_001
    for _ in range(20):
        rl.hit("k", limits)
    assert raw.pttl(k0) <= 100_001 and raw.pttl(k1) <= 6_000_001


def test_redis_refusal_writes_nothing(rl: RedisRateLimiter, raw: redis.Redis) -> None:
    limits = ((2, 3600.0), (100, 86400.0))
    rl.hit("k", limits)
    rl.hit("k", limits)
    before = [raw.get(k) for k in rl.redis_keys("k", limits)]
    for _ in range(5):
        assert not rl.hit("k", limits).allowed
    assert [raw.get(k) for k in rl.redis_keys("k", limits)] == before


def test_redis_noscript_recovery(rl: RedisRateLimiter, raw: redis.Redis) -> None:
    assert rl.hit("k", HOURLY).remaining == 4
    raw.script_flush()
    assert raw.script_exists(_GCRA.sha) == [False]
    assert rl.hit("k", HOURLY).remaining == 3    # EVALSHA → NOSCRIPT → EVAL
    assert raw.script_exists(_GCRA.sha) == [True]
    assert rl.hit("k", HOURLY).remaining == 2


def test_redis_threads_are_atomic(rl: RedisRateLimiter) -> None:
    limits = ((30, 3600.0),)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: rl.hit("k", limits).allowed, range(100)))
    assert results.count(True) == 30


def test_redis_async_across_loops_and_gather(rl: RedisRateLimiter) -> None:
    async def some(n: int) -> list[int]:
        out = [(await rl.ahit("k", HOURLY)).remaining for _ in range(n)]
        await rl.aclose()
        return out

    assert asyncio.run(some(2)) == [4, 3]
    assert asyncio.run(some(2)) == [2, 1]   # a second loop gets its own client

    async def gathered() -> list[bool]:
        decisions = await asyncio.gather(*(rl.ahit("g", HOURLY) for _ in range(20)))
        return [d.allowed for d in decisions]

    assert asyncio.run(gathered()).count(True) == 5


def test_redis_down_is_store_unavailable_with_short_timeouts(redis_server: RedisServer) -> None:
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    limiter = RedisRateLimiter(url)
    redis_server.stop()
    with pytest.raises(StoreUnavailable) as info:
        limiter.hit("k", HOURLY)
    with pytest.raises(StoreUnavailable):
        asyncio.run(limiter.ahit("k", HOURLY))
    # Quickly: short timeouts and one retry, only after a dropped connection.
    pool_kwargs = limiter._client.connection_pool.connection_kwargs
    assert pool_kwargs["socket_timeout"] == pool_kwargs["socket_connect_timeout"] == 0.5
    assert limiter._client.get_retry()._retries == 1
    assert "hunter2" not in str(info.value) and f"127.0.0.1:{redis_server.port}" in str(info.value)
    assert info.value.status == 503
    assert "hunter2" not in repr(limiter)


def test_redis_recovers_after_restart(redis_server: RedisServer, rl: RedisRateLimiter) -> None:
    assert rl.hit("k", HOURLY).allowed
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        rl.hit("k", HOURLY)
    redis_server.start()
    assert rl.hit("k", HOURLY).remaining == 4  # no persistence: a fresh server
    assert rl.hit("k", HOURLY).remaining == 3


def test_redis_given_client_and_decoded_replies(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    limiter = RedisRateLimiter(redis_server.url, client=client, prefix="app1:")
    assert limiter.hit("k", HOURLY).remaining == 4
    limiter.close()
    assert client.ping()  # a given client is left open
    assert client.keys("*") == limiter.redis_keys("k", HOURLY)
    client.close()


@pytest.mark.parametrize("prefix", ["a{b", "a}b", "has space", "x" * 201])
def test_redis_prefix_is_checked(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisRateLimiter("redis://127.0.0.1:1/0", prefix=prefix)


def test_limiter_from_settings(redis_server: RedisServer) -> None:
    assert isinstance(limiter_from_settings(RateLimitsSettings()), MemoryRateLimiter)
    limiter = limiter_from_settings(RateLimitsSettings(store="redis",
                                                       redis_url=redis_server.url))
    assert isinstance(limiter, RedisRateLimiter)
    limiter.close()
    with pytest.raises(ConfigError, match="redis_url"):
        limiter_from_settings(RateLimitsSettings(store="redis"))
    other = limiter_from_settings(RateLimitsSettings(store="redis"), prefix="appP:",
                                  redis_url=redis_server.url)
    assert isinstance(other, RedisRateLimiter)
    assert other.redis_keys("r0:ip:x", ((1, 1.0),))[0].startswith("appP:rl:{")
    other.close()


def test_the_layer_of_an_app_uses_its_prefix_and_credential_paths(
        redis_server: RedisServer) -> None:
    settings = Settings.from_mapping({
        "session": {"redis_url": redis_server.url, "redis_key_prefix": "appQ:"},
        "regulation": {"paths": ["/signin"]},
        "rate_limits": {"store": "redis", "rules": [{"key": "ip", "limit": "1/second"}]}},
        environ={})
    layer = RateLimitLayer.for_app(settings)
    assert isinstance(layer.limiter, RedisRateLimiter)
    assert layer.limiter.redis_keys("k", ((1, 1.0),))[0].startswith("appQ:rl:")
    assert layer.credential_paths == {"/.auth/login", "/.auth/2fa", "/.auth/callback",
                                      "/signin"}
    layer.limiter.close()


def test_a_rule_protecting_credentials_cannot_fail_open() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"rate_limits": {"rules": [
            {"limit": "1/second", "protects_credentials": True, "fail_open": True}]}},
            environ={})
    assert "rate_limits.rules[0].fail_open" in str(info.value)


def test_many_threads_share_one_rate(rl: RedisRateLimiter) -> None:
    """Two limiters (two "processes") on one server share the same state."""
    other = RedisRateLimiter(rl._url)
    try:
        barrier = threading.Barrier(2)

        def run(limiter: RedisRateLimiter) -> int:
            barrier.wait()
            return sum(limiter.hit("shared", HOURLY).allowed for _ in range(5))

        with ThreadPoolExecutor(2) as pool:
            assert sum(pool.map(run, [rl, other])) == 5
    finally:
        other.close()


@pytest.mark.parametrize("reply", [[0, "0"], [1], [1, "x"], None, [1, "0", "0"]])
def test_redis_unexpected_replies_are_store_errors(reply: object) -> None:
    from secure_mw.guards.ratelimit import _plan

    with pytest.raises(StoreUnavailable):
        RedisRateLimiter._decision(_plan(HOURLY), 1, reply)


def test_sqlite_processes_share_one_rate_exactly(tmp_path: Path) -> None:
    """Two limiters on one file (two processes' connections) and 16 threads each: exactly
    the limit passes, whatever the interleaving (BEGIN IMMEDIATE). Each waits as long as it
    must for the write lock: what is tested is the count, not the default wait (0.5 s), which
    32 threads on a loaded machine can outlast."""
    path = tmp_path / "shared.sqlite3"
    a, b = Database(path, busy_timeout=30), Database(path, busy_timeout=30)
    a.check()
    limiters = [SqliteRateLimiter(a), SqliteRateLimiter(b)]
    limits = ((100, 3600.0),)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda n: limiters[n % 2].hit("k", limits).allowed,
                                range(400)))
    assert results.count(True) == 100


def test_sqlite_async_runs_in_a_thread_and_decides_alike(tmp_path: Path,
                                                         clock: Clock) -> None:
    db = Database(tmp_path / "s.sqlite3", clock=clock)
    db.check()
    limiter, twin = SqliteRateLimiter(db), MemoryRateLimiter(clock=clock)

    async def many() -> list[RateDecision]:
        return list(await asyncio.gather(*(limiter.ahit("k", TWO) for _ in range(6))))

    decisions = asyncio.run(many())
    expected = [twin.hit("k", TWO) for _ in range(6)]
    assert sorted(map(_shape, decisions)) == sorted(map(_shape, expected))


def test_sqlite_keys_are_hashed_and_rows_expire(tmp_path: Path, clock: Clock) -> None:
    db = Database(tmp_path / "s.sqlite3", clock=clock)
    db.check()
    SqliteRateLimiter(db).hit("r0:ip:203.0.113.9", TEN)
    rows = db.read("SELECT key, expires FROM ratelimit")
    assert len(rows) == 1 and "203.0.113.9" not in rows[0][0]
    assert rows[0][1] == pytest.approx(clock.now + 1.0)
    clock.advance(1.0)
    assert db.purge() == 1 and not db.read("SELECT key FROM ratelimit")


def test_limiter_from_settings_sqlite(tmp_path: Path) -> None:
    sqlite = SqliteSettings(path=str(tmp_path / "s.sqlite3"))
    assert isinstance(limiter_from_settings(RateLimitsSettings(), sqlite=sqlite),
                      SqliteRateLimiter)     # unset: follows [sqlite] path
    assert isinstance(limiter_from_settings(RateLimitsSettings(store="memory"),
                                            sqlite=sqlite), MemoryRateLimiter)
    with pytest.raises(ConfigError, match=r"sqlite\.path"):
        limiter_from_settings(RateLimitsSettings(store="sqlite"))


@pytest.mark.parametrize("limits", [TEN, HOURLY, ((1, 0.5),), TWO])
def test_memory_decides_as_sqlite_through_random_traffic(limits: tuple[tuple[int, float], ...],
                                                         tmp_path: Path, clock: Clock) -> None:
    """The in-memory limiter's hot path (one limit: no loop over limits) against the SQLite
    engine's general arithmetic, on one clock: 600 hits of random cost on three keys at
    random intervals (zero included) give the same decision every time."""
    import random

    db = Database(tmp_path / "s.sqlite3", clock=clock)
    db.check()
    sqlite, memory = SqliteRateLimiter(db), MemoryRateLimiter(clock=clock)
    rng = random.Random(13)
    smallest = min(count for count, _ in limits)
    outcomes = []
    for _ in range(600):
        key = f"r0:ip:192.0.2.{rng.randrange(3)}"
        cost = rng.choice([0, 1, 1, 1, min(2, smallest)])
        clock.advance(rng.choice([0.0, 0.0, 0.05, 0.3, 1.0, 7.0]))
        got, want = memory.hit(key, limits, cost), sqlite.hit(key, limits, cost)
        assert got._replace(reset_after=0.0, retry_after=0.0) == \
            want._replace(reset_after=0.0, retry_after=0.0)
        assert got.reset_after == pytest.approx(want.reset_after, abs=1e-9)
        assert got.retry_after == pytest.approx(want.retry_after, abs=1e-9)
        outcomes.append(got.allowed)
    assert True in outcomes and False in outcomes    # both kinds of decision were compared


def test_headers_of_a_decision_whose_policies_are_a_list() -> None:
    """A limiter of one's own may give ``policies`` as a list: the headers are the same as
    for the tuple (the texts are cached by policies, which must then be hashable)."""
    decision = MemoryRateLimiter().hit("k", TEN)
    listed = decision._replace(policies=list(decision.policies))
    assert rate_headers(listed) == rate_headers(decision)
