"""Regulation (bans after repeated failures): memory with an injected clock, and Redis against
a real redis-server (the ``redis_server`` fixture), including parallel failures."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from secure_mw.errors import StoreUnavailable
from secure_mw.guards.regulation import _FAIL, Ban, MemoryRegulator, RedisRegulator
from secure_mw.settings import RegulationSettings
from tests.clock import Clock
from tests.servers import RedisServer

T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def mem(clock: Clock) -> MemoryRegulator:
    return MemoryRegulator(clock=clock)  # 3 retries in 120 s, 300 s ban, user and ip


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def reg(redis_server: RedisServer) -> Iterator[RedisRegulator]:
    r = RedisRegulator(redis_server.url)
    yield r
    r.close()


# -- memory ---------------------------------------------------------------------------------


def test_third_failure_within_find_time_bans(mem: MemoryRegulator, clock: Clock) -> None:
    assert mem.fail(user="alice", ip=None) is None
    clock.advance(60)
    assert mem.fail(user="alice", ip=None) is None
    assert mem.check(user="alice", ip=None) is None
    clock.advance(59.9)
    assert mem.fail(user="alice", ip=None) == Ban("user", T0 + 119.9 + 300)
    assert mem.check(user="alice", ip="192.0.2.1") == Ban("user", T0 + 419.9)
    assert mem.check(user="bob", ip="192.0.2.1") is None


def test_old_failures_do_not_count(mem: MemoryRegulator, clock: Clock) -> None:
    mem.fail(user="alice", ip=None)
    clock.advance(60)
    mem.fail(user="alice", ip=None)
    clock.advance(60)  # the first failure is exactly find_time old: out of the window
    assert mem.fail(user="alice", ip=None) is None
    clock.advance(59)  # two failures in the last 120 s (at +60 and +120), plus this one
    assert mem.fail(user="alice", ip=None) == Ban("user", T0 + 179 + 300)


def test_ban_lasts_ban_time_then_starts_afresh(mem: MemoryRegulator, clock: Clock) -> None:
    for _ in range(3):
        ban = mem.fail(user="alice", ip=None)
    assert ban == Ban("user", T0 + 300)
    clock.advance(299.999)
    assert mem.check(user="alice", ip=None) == ban
    clock.advance(0.001)
    assert mem.check(user="alice", ip=None) is None
    assert mem.fail(user="alice", ip=None) is None  # the count was cleared by the ban
    assert mem.fail(user="alice", ip=None) is None
    assert mem.fail(user="alice", ip=None) is not None


def test_failures_during_a_ban_neither_count_nor_extend(mem: MemoryRegulator,
                                                        clock: Clock) -> None:
    for _ in range(3):
        ban = mem.fail(user="alice", ip=None)
    for _ in range(10):
        clock.advance(10)
        assert mem.fail(user="alice", ip=None) is None   # only the causing call reports it
        assert mem.check(user="alice", ip=None) == ban
    clock.advance(200)
    assert mem.check(user="alice", ip=None) is None
    assert mem.fail(user="alice", ip=None) is None


def test_user_and_ip_are_counted_separately(mem: MemoryRegulator) -> None:
    mem.fail(user="alice", ip="192.0.2.1")
    mem.fail(user="bob", ip="192.0.2.1")
    assert mem.fail(user="carol", ip="192.0.2.1") == Ban("ip", T0 + 300)
    assert mem.check(user="dave", ip="192.0.2.1") == Ban("ip", T0 + 300)
    assert mem.check(user="alice", ip="198.51.100.7") is None


def test_both_banned_reports_the_longer(mem: MemoryRegulator, clock: Clock) -> None:
    for _ in range(3):
        mem.fail(user=None, ip="192.0.2.1")
    clock.advance(5)
    for _ in range(3):
        mem.fail(user="alice", ip=None)
    assert mem.check(user="alice", ip="192.0.2.1") == Ban("user", T0 + 305)


def test_success_resets_the_user_not_the_address(mem: MemoryRegulator) -> None:
    mem.fail(user="alice", ip="192.0.2.1")
    mem.fail(user="alice", ip="192.0.2.1")
    mem.succeed(user="alice", ip="192.0.2.1")
    # the address has three failures now; alice only one since her success
    assert mem.fail(user="alice", ip="192.0.2.1") == Ban("ip", T0 + 300)
    assert mem.check(user="alice", ip=None) is None
    mem.fail(user="alice", ip=None)
    assert mem.fail(user="alice", ip=None) == Ban("user", T0 + 300)


def test_success_does_not_lift_a_ban(mem: MemoryRegulator) -> None:
    for _ in range(3):
        mem.fail(user="alice", ip=None)
    mem.succeed(user="alice", ip=None)
    assert mem.check(user="alice", ip=None) is not None


def test_modes(clock: Clock) -> None:
    only_user = MemoryRegulator(modes=["user"], clock=clock)
    for i in range(5):
        only_user.fail(user=f"u{i}", ip="192.0.2.1")
    assert only_user.check(user="x", ip="192.0.2.1") is None
    only_ip = MemoryRegulator(modes=["ip"], clock=clock)
    for i in range(3):
        only_ip.fail(user="alice", ip=f"192.0.2.{i}")
    assert only_ip.check(user="alice", ip="192.0.2.200") is None
    with pytest.raises(ValueError, match="modes"):
        MemoryRegulator(modes=["user", "email"])


def test_user_names_are_case_insensitive(mem: MemoryRegulator) -> None:
    mem.fail(user="Alice", ip=None)
    mem.fail(user="ALICE", ip=None)
    assert mem.fail(user="alice", ip=None) is not None
    assert mem.check(user="aLiCe", ip=None) is not None


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4(mem: MemoryRegulator) -> None:
    mem.fail(user=None, ip="2001:db8::1")
    mem.fail(user=None, ip="2001:db8::2")
    assert mem.fail(user=None, ip="2001:db8::ffff:1234") is not None
    assert mem.check(user=None, ip="2001:db8::abcd") is not None
    assert mem.check(user=None, ip="2001:db8:0:1::1") is None     # another /64
    mem.fail(user=None, ip="::ffff:192.0.2.9")
    mem.fail(user=None, ip="192.0.2.9")
    assert mem.fail(user=None, ip="::ffff:c000:209") is not None
    assert mem.check(user=None, ip="192.0.2.9") is not None


def test_no_subject_is_a_no_op(mem: MemoryRegulator) -> None:
    for _ in range(5):
        assert mem.fail(user=None, ip=None) is None
    assert mem.check(user=None, ip=None) is None
    assert len(mem) == 0


def test_memory_is_bounded(clock: Clock) -> None:
    mem = MemoryRegulator(max_subjects=10, clock=clock)
    for i in range(100):
        mem.fail(user=f"user{i}", ip=f"10.0.0.{i}")
        assert len(mem) <= 10
    for _ in range(3):
        mem.fail(user="user99", ip=None)
    assert mem.check(user="user99", ip=None) is not None
    with pytest.raises(ValueError):
        MemoryRegulator(max_subjects=0)


def test_memory_threads_ban_exactly_once() -> None:
    mem = MemoryRegulator()
    barrier = threading.Barrier(20)

    def attempt(_: int) -> Ban | None:
        barrier.wait()
        return mem.fail(user="alice", ip=None)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    bans = [b for b in results if b is not None]
    assert len(bans) == 1 and results.count(None) == 19
    assert mem.check(user="alice", ip=None) == bans[0]


def test_memory_async_variants(mem: MemoryRegulator) -> None:
    async def run() -> Ban | None:
        await mem.afail(user="alice", ip=None)
        await mem.asucceed(user="alice", ip=None)
        for _ in range(3):
            await mem.afail(user="alice", ip=None)
        return await mem.acheck(user="alice", ip=None)

    assert asyncio.run(run()) == Ban("user", T0 + 300)


def test_from_settings(clock: Clock) -> None:
    settings = RegulationSettings(max_retries=2, find_time=10.0, ban_time=20.0, modes=["ip"])
    mem = MemoryRegulator.from_settings(settings, clock=clock)
    mem.fail(user="a", ip="192.0.2.1")
    assert mem.fail(user="b", ip="192.0.2.1") == Ban("ip", T0 + 20)


@pytest.mark.parametrize("kwargs", [{"max_retries": 0}, {"max_retries": True},
                                    {"find_time": 0}, {"ban_time": float("nan")},
                                    {"modes": "user"}])
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MemoryRegulator(**kwargs)  # type: ignore[arg-type]


# -- Redis -----------------------------------------------------------------------------------


def test_redis_bans_on_the_third_failure(reg: RedisRegulator) -> None:
    before = time.time()
    assert reg.fail(user="alice", ip="192.0.2.1") is None
    assert reg.fail(user="alice", ip="192.0.2.1") is None
    assert reg.check(user="alice", ip="192.0.2.1") is None
    ban = reg.fail(user="alice", ip=None)
    assert ban is not None and ban.subject == "user"
    assert before + 300 <= ban.until + 0.01 <= time.time() + 300 + 1
    assert reg.check(user="ALICE", ip="198.51.100.1") == ban
    assert reg.check(user=None, ip="192.0.2.1") is None  # the address has two failures


def test_redis_twenty_threads_ban_exactly_once(reg: RedisRegulator) -> None:
    barrier = threading.Barrier(20)

    def attempt(_: int) -> Ban | None:
        barrier.wait()
        return reg.fail(user="alice", ip=None)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(attempt, range(20)))
    bans = [b for b in results if b is not None]
    assert len(bans) == 1 and results.count(None) == 19
    for _ in range(3):
        assert reg.check(user="alice", ip=None) == bans[0]


def test_redis_gather_bans_exactly_once(reg: RedisRegulator) -> None:
    async def run() -> tuple[list[Ban | None], Ban | None]:
        results = await asyncio.gather(*(reg.afail(user="bob", ip=None) for _ in range(20)))
        return list(results), await reg.acheck(user="bob", ip=None)

    results, check = asyncio.run(run())
    bans = [b for b in results if b is not None]
    assert len(bans) == 1 and check == bans[0] and check.subject == "user"

    async def both() -> list[Ban | None]:
        return list(await asyncio.gather(*(reg.afail(user="eve", ip="192.0.2.7")
                                           for _ in range(20))))

    # each subject is banned by exactly one call (one call may cause both: it reports one)
    assert 1 <= sum(b is not None for b in asyncio.run(both())) <= 2
    assert reg.check(user="eve", ip=None) is not None
    assert reg.check(user=None, ip="192.0.2.7") is not None


def test_redis_old_failures_do_not_count(redis_server: RedisServer) -> None:
    reg = RedisRegulator(redis_server.url, find_time=0.3)
    try:
        reg.fail(user="alice", ip=None)
        reg.fail(user="alice", ip=None)
        time.sleep(0.35)
        assert reg.fail(user="alice", ip=None) is None
        assert reg.fail(user="alice", ip=None) is None
        assert reg.fail(user="alice", ip=None) is not None
    finally:
        reg.close()


def test_redis_ban_expires(redis_server: RedisServer) -> None:
    reg = RedisRegulator(redis_server.url, max_retries=1, ban_time=0.3)
    try:
        ban = reg.fail(user="alice", ip=None)
        assert ban is not None
        assert reg.check(user="alice", ip=None) == ban
        assert reg.fail(user="alice", ip=None) is None   # banned: not counted, not extended
        time.sleep(max(0.0, ban.until - time.time()) + 0.05)
        assert reg.check(user="alice", ip=None) is None
    finally:
        reg.close()


def test_redis_success_resets_the_user_not_the_address(reg: RedisRegulator) -> None:
    reg.fail(user="alice", ip="192.0.2.1")
    reg.fail(user="alice", ip="192.0.2.1")
    reg.succeed(user="alice", ip="192.0.2.1")
    ban = reg.fail(user="alice", ip="192.0.2.1")
    assert ban is not None and ban.subject == "ip"
    assert reg.check(user="alice", ip=None) is None


def test_redis_keys_ttls_and_hash_tags(reg: RedisRegulator, raw: redis.Redis) -> None:
    reg.fail(user="alice@example.com", ip="192.0.2.1")
    keys = raw.keys("*")
    assert len(keys) == 2 and not any("alice" in k or "192.0.2" in k for k in keys)
    for key in keys:
        assert re.fullmatch(r"secure_mw:reg:\{[A-Za-z0-9_-]{22}\}:fails", str(key))
        assert 0 < raw.pttl(key) <= 120_000
    ban_key, fails_key = reg.redis_keys("user", "alice@example.com")
    assert fails_key in keys
    assert ban_key.split(":")[2] == fails_key.split(":")[2]   # one hash tag per subject
    reg.fail(user="alice@example.com", ip=None)
    reg.fail(user="alice@example.com", ip=None)
    assert raw.exists(fails_key) == 0
    assert 299_000 < raw.pttl(ban_key) <= 300_000


def test_redis_noscript_recovery(reg: RedisRegulator, raw: redis.Redis) -> None:
    reg.fail(user="alice", ip=None)
    raw.script_flush()
    reg.fail(user="alice", ip=None)
    assert raw.script_exists(_FAIL.sha) == [True]
    assert reg.fail(user="alice", ip=None) is not None


def test_redis_down_fails_closed(redis_server: RedisServer) -> None:
    reg = RedisRegulator(f"redis://:hunter2@127.0.0.1:{redis_server.port}/0")
    redis_server.stop()
    started = time.monotonic()
    for call in (reg.check, reg.fail, reg.succeed):
        with pytest.raises(StoreUnavailable) as info:
            call(user="alice", ip="192.0.2.1")
        assert "hunter2" not in str(info.value) and info.value.status == 503
    for acall in (reg.acheck, reg.afail, reg.asucceed):
        with pytest.raises(StoreUnavailable):
            asyncio.run(acall(user="alice", ip="192.0.2.1"))
    assert time.monotonic() - started < 2.0


def test_redis_recovers_after_restart(redis_server: RedisServer, reg: RedisRegulator) -> None:
    reg.fail(user="alice", ip=None)
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        reg.check(user="alice", ip=None)
    redis_server.start()
    assert reg.check(user="alice", ip=None) is None
    assert reg.fail(user="alice", ip=None) is None


def test_redis_async_across_two_loops(reg: RedisRegulator) -> None:
    async def fail_twice() -> list[Ban | None]:
        out = [await reg.afail(user="carol", ip=None) for _ in range(2)]
        await reg.aclose()
        return out

    assert asyncio.run(fail_twice()) == [None, None]

    async def third() -> tuple[Ban | None, Ban | None]:
        return await reg.afail(user="carol", ip=None), await reg.acheck(user="carol", ip=None)

    ban, check = asyncio.run(third())
    assert ban is not None and ban == check

    async def succeed() -> None:
        await reg.asucceed(user="dave", ip=None)

    asyncio.run(succeed())


def test_redis_and_memory_agree(reg: RedisRegulator, mem: MemoryRegulator) -> None:
    steps = [("fail", "alice", "192.0.2.1"), ("fail", "bob", "192.0.2.1"),
             ("succeed", "alice", "192.0.2.1"), ("fail", "alice", "192.0.2.2"),
             ("fail", "carol", "192.0.2.1"), ("fail", "alice", "192.0.2.2"),
             ("fail", "alice", "192.0.2.3"), ("fail", "Bob", None), ("fail", "BOB", None)]
    for op, user, ip in steps:
        r, m = getattr(reg, op)(user=user, ip=ip), getattr(mem, op)(user=user, ip=ip)
        assert (r and r.subject) == (m and m.subject), (op, user, ip)
        for who, where in (("alice", None), ("bob", None), (None, "192.0.2.1"),
                           (None, "192.0.2.2")):
            rc, mc = reg.check(user=who, ip=where), mem.check(user=who, ip=where)
            assert (rc and rc.subject) == (mc and mc.subject)


def test_redis_from_settings(redis_server: RedisServer) -> None:
    reg = RedisRegulator.from_settings(RegulationSettings(max_retries=1, modes=["ip"]),
                                       redis_server.url, prefix="app:")
    try:
        assert reg.fail(user="x", ip="192.0.2.1") == reg.check(user=None, ip="192.0.2.1")
        assert reg.check(user=None, ip="192.0.2.1") is not None
        assert reg.redis_keys("ip", "192.0.2.1")[0].startswith("app:reg:{")
    finally:
        reg.close()
