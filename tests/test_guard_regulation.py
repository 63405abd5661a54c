"""Regulation (reserve, then settle): both engines with an injected clock — memory, and Redis
against a real redis-server (the ``redis_server`` fixture) — including parallel attempts,
the pair/user/address/device budgets, the short life of single failures, the bounded memory,
listing and lifting bans, and the key prefix."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from secure_mw._sqlite import Database
from secure_mw.crypto import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.regulation import (
    _SCRIPT,
    Ban,
    MemoryRegulator,
    RedisRegulator,
    Refusal,
    Reservation,
    failure_ttl,
    label,
    regulator_from_settings,
)
from secure_mw.guards.regulation_sqlite import SqliteRegulator
from secure_mw.settings import RegulationSettings, Settings
from tests.clock import Clock
from tests.servers import RedisServer

T0 = 1_700_000_000.0
A1, A2 = "192.0.2.1", "198.51.100.7"


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis", "sqlite"])
def make(request: pytest.FixtureRequest, clock: Clock,
         tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Build a regulator of any engine, on the injected clock."""
    made: list[RedisRegulator] = []

    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("clock", clock)
        if request.param == "memory":
            return MemoryRegulator(**kwargs)
        if request.param == "sqlite":
            db = Database(tmp_path / "store.sqlite3", clock=kwargs.pop("clock"))
            db.check()
            return SqliteRegulator(db, **kwargs)
        server: RedisServer = request.getfixturevalue("redis_server")
        reg = RedisRegulator(server.url, **kwargs)
        made.append(reg)
        return reg

    yield build
    for reg in made:
        reg.close()


def reserved(outcome: Reservation | Refusal) -> Reservation:
    assert isinstance(outcome, Reservation), outcome
    return outcome


def guess(reg: Any, user: str | None, ip: str | None, *, ok: bool = False,
          device: str | None = None) -> Ban | Refusal | None:
    """One whole attempt: reserve, then settle; the refusal or the ban it caused."""
    turn = reg.reserve(user=user, ip=ip, device=device)
    if isinstance(turn, Refusal):
        return turn
    if ok:
        reg.succeed(turn)
        return None
    return reg.fail(turn)  # type: ignore[no-any-return]


# -- the budget of one subject ----------------------------------------------------------------


def test_the_third_failure_of_a_pair_bans_it(make: Any, clock: Clock) -> None:
    reg = make()
    assert guess(reg, "alice", A1) is None
    clock.advance(30)
    assert guess(reg, "alice", A1) is None
    clock.advance(29.9)
    assert guess(reg, "alice", A1) == Ban("pair", T0 + 59.9 + 300)
    assert reg.reserve(user="ALICE", ip=A1) == Refusal("pair", "banned", T0 + 359.9)
    assert isinstance(reg.reserve(user="alice", ip=A2), Reservation)   # another address
    assert isinstance(reg.reserve(user="bob", ip=A1), Reservation)     # another name


def test_attempts_in_flight_use_the_budget(make: Any) -> None:
    reg = make()
    turns = [reserved(reg.reserve(user="alice", ip=A1)) for _ in range(3)]
    assert reg.reserve(user="alice", ip=A1) == Refusal("pair", "busy")
    reg.release(turns[0])                          # not judged after all: frees its place
    turns[0] = reserved(reg.reserve(user="alice", ip=A1))
    reg.succeed(turns[1])
    assert isinstance(reg.reserve(user="alice", ip=A1), Reservation)
    assert Refusal("pair", "busy").retry_after(T0) == 1


def test_failures_in_flight_cannot_exceed_the_budget(make: Any) -> None:
    reg = make()
    turns = [reserved(reg.reserve(user="alice", ip=A1)) for _ in range(3)]
    assert [reg.fail(t) for t in turns[:2]] == [None, None]
    ban = reg.fail(turns[2])
    assert ban is not None and ban.subject == "pair"
    assert reg.reserve(user="alice", ip=A1) == Refusal("pair", "banned", ban.until)


def test_a_stale_reservation_expires_with_find_time(make: Any, clock: Clock) -> None:
    reg = make()
    for _ in range(3):
        reserved(reg.reserve(user="alice", ip=A1))      # a crashed process never settles
    assert reg.reserve(user="alice", ip=A1) == Refusal("pair", "busy")
    clock.advance(120)
    assert isinstance(reg.reserve(user="alice", ip=A1), Reservation)


def test_a_failure_whose_reservation_expired_still_counts(make: Any, clock: Clock) -> None:
    reg = make(max_retries=2)
    late = reserved(reg.reserve(user="alice", ip=A1))
    clock.advance(121)
    assert guess(reg, "alice", A1) is None
    assert reg.fail(late) == Ban("pair", T0 + 121 + 300)


def test_old_failures_do_not_count(make: Any, clock: Clock) -> None:
    reg = make()
    guess(reg, "alice", A1)
    clock.advance(50)
    guess(reg, "alice", A1)
    clock.advance(70)            # the first failure is exactly find_time old: out of the window
    assert guess(reg, "alice", A1) is None
    clock.advance(49)            # two failures in the last 120 s, plus this one
    assert guess(reg, "alice", A1) == Ban("pair", T0 + 169 + 300)


def test_a_single_failure_is_forgotten_early(make: Any, clock: Clock) -> None:
    reg = make()       # pair budget 3: one failure is kept find_time / 2
    assert failure_ttl(1, 3, 120.0) == 60.0 and failure_ttl(2, 3, 120.0) == 120.0
    assert failure_ttl(1, 10, 90.0) == 10.0 and failure_ttl(1, 2, 120.0) == 120.0
    guess(reg, "alice", A1)
    clock.advance(60)
    guess(reg, "alice", A1)         # the first is forgotten: one failure again
    clock.advance(59)
    assert guess(reg, "alice", A1) is None   # two held now, for a whole find_time
    clock.advance(59)
    assert guess(reg, "alice", A1) == Ban("pair", T0 + 178 + 300)


def test_the_slowest_rate_that_bans_is_unchanged(make: Any, clock: Clock) -> None:
    """Failures spaced find_time / (limit - 1) still end in a ban; a little slower, never."""
    reg = make()
    bans = [guess(reg, "alice", A1)]
    for _ in range(2):
        clock.advance(59.9)
        bans.append(guess(reg, "alice", A1))
    assert bans[:2] == [None, None] and bans[2] == Ban("pair", clock.now + 300)
    results = []
    for _ in range(20):
        results.append(guess(reg, "bob", A1))
        clock.advance(60)
    assert results == [None] * 20


def test_a_ban_lasts_ban_time_then_starts_afresh(make: Any, clock: Clock) -> None:
    reg = make()
    for _ in range(3):
        ban = guess(reg, "alice", A1)
    assert ban == Ban("pair", T0 + 300)
    clock.advance(299.999)
    assert reg.reserve(user="alice", ip=A1) == Refusal("pair", "banned", T0 + 300)
    clock.advance(0.001)
    assert guess(reg, "alice", A1) is None      # the count was cleared by the ban
    assert guess(reg, "alice", A1) is None
    assert guess(reg, "alice", A1) is not None


def test_failures_settled_during_a_ban_neither_count_nor_extend(make: Any,
                                                                clock: Clock) -> None:
    reg = make(max_retries=2)
    first, second = (reserved(reg.reserve(user="alice", ip=A1)) for _ in range(2))
    late = reserved(reg.reserve(user="alice", ip=A2))
    assert reg.fail(first) is None
    ban = reg.fail(second)
    assert ban == Ban("pair", T0 + 300)
    assert reg.fail(late) is None               # the A2 pair was not banned: one failure
    clock.advance(300)
    assert guess(reg, "alice", A1) is None


def test_success_clears_the_pair_and_the_user_not_the_address(make: Any) -> None:
    reg = make(user_max_retries=3, ip_max_retries=3)
    guess(reg, "alice", A1)
    guess(reg, "alice", A1)
    assert guess(reg, "alice", A1, ok=True) is None
    # the pair and the user name start afresh; the address keeps its two failures
    ban = guess(reg, "carol", A1)
    assert ban == Ban("ip", T0 + 300)
    assert isinstance(reg.reserve(user="alice", ip=A2), Reservation)


def test_a_success_does_not_lift_a_ban(make: Any) -> None:
    reg = make()
    in_flight = reserved(reg.reserve(user="alice", ip=A2))
    for _ in range(3):
        ban = guess(reg, "alice", A1)
    assert ban == Ban("pair", T0 + 300)
    reg.succeed(in_flight)                  # clears alice's failures, not the ban
    assert reg.reserve(user="alice", ip=A1) == Refusal("pair", "banned", T0 + 300)


# -- several subjects ---------------------------------------------------------------------


def test_a_user_name_from_many_addresses_bans_the_name(make: Any) -> None:
    reg = make()         # pair 3, user 10, ip 20
    results = [guess(reg, "alice", f"203.0.113.{n}") for n in range(4) for _ in range(3)]
    bans = [r for r in results if isinstance(r, Ban)]
    assert [b.subject for b in bans] == ["pair", "pair", "pair", "user"]
    refused = reg.reserve(user="alice", ip="203.0.113.200")
    assert isinstance(refused, Refusal) and refused.subject == "user"
    assert isinstance(reg.reserve(user="bob", ip="203.0.113.0"), Reservation)


def test_one_address_spraying_names_is_banned(make: Any) -> None:
    reg = make()
    results = [guess(reg, f"user{n}", A1) for n in range(20)]
    assert results[:19] == [None] * 19 and results[19] == Ban("ip", T0 + 300)
    refused = reg.reserve(user="nobody-yet", ip=A1)
    assert isinstance(refused, Refusal) and refused.subject == "ip"


def test_a_refusal_releases_what_was_reserved(make: Any) -> None:
    reg = make(ip_max_retries=1, user_max_retries=1)
    reserved(reg.reserve(user="alice", ip=A1))          # uses the address's whole budget
    assert reg.reserve(user="bob", ip=A1) == Refusal("ip", "busy")
    # bob's name was reserved before the address refused, then released: it is free
    assert isinstance(reg.reserve(user="bob", ip=A2), Reservation)


def test_a_device_passes_a_ban_of_its_name(make: Any) -> None:
    reg = make()
    for n in range(4):
        for _ in range(3):
            guess(reg, "alice", f"203.0.113.{n}")
    assert isinstance(reg.reserve(user="alice", ip=A1), Refusal)      # the name is banned
    turn = reserved(reg.reserve(user="alice", ip=A1, device="dev-1"))  # her own device
    assert [s.kind for s in turn.subjects] == ["device", "devices", "ip"]
    reg.succeed(turn)
    for _ in range(2):
        guess(reg, "alice", A1, device="dev-2")
    assert guess(reg, "alice", A1, device="dev-2") == Ban("device", T0 + 300)
    assert isinstance(reg.reserve(user="alice", ip=A1, device="dev-1"), Reservation)


def test_device_attempts_share_a_total_per_name_and_the_address_budget(make: Any) -> None:
    """However many device cookies an attacker holds for one name (the review minted one
    per login of an account of their own), their guesses stay under one total per name —
    ``user_max_retries`` — and under the address budget."""
    reg = make()
    results = [guess(reg, "alice", f"203.0.113.{n}", device=f"dev-{n}") for n in range(12)]
    assert results[:9] == [None] * 9 and results[9] == Ban("devices", T0 + 300)
    refused = reg.reserve(user="alice", ip="198.51.100.1", device="dev-new")
    assert isinstance(refused, Refusal) and refused.subject == "devices"
    assert isinstance(reg.reserve(user="alice", ip=A1), Reservation)   # not the name's
    spray = make(ip_max_retries=4)
    for n in range(4):
        guess(spray, f"user{n}", A2, device=f"d{n}")
    refused = spray.reserve(user="user9", ip=A2, device="d9")
    assert isinstance(refused, Refusal) and refused.subject == "ip"


def test_a_success_may_keep_the_failures_of_the_name(make: Any) -> None:
    """``clears=False`` (an app whose names do not compare as they are folded here): a
    success as ``ALICE`` forgets none of the failures counted for alice's spellings."""
    reg = make()
    guess(reg, "alice", A1)
    guess(reg, "alice", A1)
    own = reserved(reg.reserve(user="ALICE", ip=A1, clears=False))
    assert not any(s.clears_on_success for s in own.subjects)
    reg.succeed(own)
    assert guess(reg, "alice", A1) == Ban("pair", T0 + 300)
    device = reserved(reg.reserve(user="bob", ip=A1, device="d", clears=False))
    assert [s.clears_on_success for s in device.subjects] == [True, False, False]


def test_modes(make: Any) -> None:
    only_ip = make(modes=["ip"], ip_max_retries=3)
    for n in range(3):
        guess(only_ip, "alice", f"192.0.2.{n}")
    assert isinstance(only_ip.reserve(user="alice", ip="192.0.2.200"), Reservation)
    for n in range(3):
        guess(only_ip, f"u{n}", A2)
    assert isinstance(only_ip.reserve(user="x", ip=A2), Refusal)
    only_user = make(modes=["user"], user_max_retries=2)
    guess(only_user, "bob", A1)
    guess(only_user, "bob", A2)
    assert only_user.reserve(user="bob", ip="192.0.2.99") == Refusal("user", "banned",
                                                                     T0 + 300)
    with pytest.raises(ValueError, match="modes"):
        MemoryRegulator(modes=["user", "email"])


def test_names_are_normalized_and_ipv6_counts_per_64(make: Any) -> None:
    reg = make()
    for spelling in ("Alice", " ALICE ", "\uff41\uff4c\uff49\uff43\uff45"):
        guess(reg, spelling, A1)
    assert isinstance(reg.reserve(user="alice", ip=A1), Refusal)
    for host in ("2001:db8::1", "2001:db8::2", "2001:db8::ffff:1234"):
        guess(reg, "bob", host)
    assert isinstance(reg.reserve(user="bob", ip="2001:db8::abcd"), Refusal)
    assert isinstance(reg.reserve(user="bob", ip="2001:db8:0:1::1"), Reservation)
    for host in ("::ffff:192.0.2.9", "192.0.2.9", "::ffff:c000:209"):
        guess(reg, "carol", host)
    assert isinstance(reg.reserve(user="carol", ip="192.0.2.9"), Refusal)


def test_no_subject_is_a_no_op(make: Any) -> None:
    reg = make()
    for _ in range(5):
        assert guess(reg, None, None) is None


def test_both_engines_agree(redis_server: RedisServer) -> None:
    """The same random sequence of attempts, settlements and clock steps gives the same
    answers from both engines (they share the policy; the Lua steps mirror _step)."""
    for seed in range(12):
        rnd = random.Random(seed)
        clock = Clock(T0)
        options: dict[str, Any] = {"max_retries": 3, "user_max_retries": 5,
                                   "ip_max_retries": 7, "find_time": 100, "ban_time": 200,
                                   "clock": clock}
        mem = MemoryRegulator(**options)
        red = RedisRegulator(redis_server.url, prefix=f"agree{seed}:", **options)
        open_mem: list[Reservation] = []
        open_red: list[Reservation] = []
        try:
            for step in range(250):
                roll = rnd.random()
                if roll < 0.5:
                    who = (rnd.choice(["a", "b", "A", None]), rnd.choice([A1, A2, None]),
                           rnd.choice([None, None, "d1"]))
                    m = mem.reserve(user=who[0], ip=who[1], device=who[2])
                    r = red.reserve(user=who[0], ip=who[1], device=who[2])
                    assert type(m) is type(r), (seed, step)
                    if isinstance(m, Refusal):
                        assert m == r, (seed, step)
                    else:
                        assert isinstance(r, Reservation)
                        open_mem.append(m)
                        open_red.append(r)
                elif roll < 0.85 and open_mem:
                    i = rnd.randrange(len(open_mem))
                    op = rnd.choice(["fail", "fail", "succeed", "release"])
                    assert getattr(mem, op)(open_mem.pop(i)) == \
                        getattr(red, op)(open_red.pop(i)), (seed, step)
                else:
                    clock.advance(rnd.choice([1, 10, 30, 60, 150]))
            assert mem.bans() == red.bans()
        finally:
            red.close()


# -- concurrency ------------------------------------------------------------------------------


def test_parallel_attempts_reserve_at_most_the_budget(make: Any) -> None:
    reg = make()
    barrier = threading.Barrier(40)

    def attempt(_: int) -> Reservation | Refusal:
        barrier.wait()
        return reg.reserve(user="alice", ip=A1)  # type: ignore[no-any-return]

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(attempt, range(40)))
    turns = [r for r in results if isinstance(r, Reservation)]
    assert len(turns) == 3
    assert all(r == Refusal("pair", "busy") for r in results if isinstance(r, Refusal))
    with ThreadPoolExecutor(3) as pool:
        bans = list(pool.map(reg.fail, turns))
    assert sum(b is not None for b in bans) == 1


def test_parallel_attempts_from_many_addresses_respect_the_user_budget(make: Any) -> None:
    reg = make()
    barrier = threading.Barrier(60)

    def attempt(n: int) -> Reservation | Refusal:
        barrier.wait()
        return reg.reserve(user="alice", ip=f"203.0.113.{n}")  # type: ignore[no-any-return]

    with ThreadPoolExecutor(60) as pool:
        results = list(pool.map(attempt, range(60)))
    assert sum(isinstance(r, Reservation) for r in results) == 10


def test_gather_reserves_at_most_the_budget(redis_server: RedisServer, clock: Clock) -> None:
    reg = RedisRegulator(redis_server.url, clock=clock)

    async def run() -> list[Reservation | Refusal]:
        results = await asyncio.gather(*(reg.areserve(user="bob", ip=A1) for _ in range(30)))
        turns = [r for r in results if isinstance(r, Reservation)]
        bans = await asyncio.gather(*(reg.afail(t) for t in turns))
        assert sum(b is not None for b in bans) == 1
        await reg.asucceed(turns[0])
        await reg.arelease(turns[0])
        await reg.aclose()
        return list(results)

    try:
        results = asyncio.run(run())
    finally:
        reg.close()
    assert sum(isinstance(r, Reservation) for r in results) == 3


def test_memory_async_variants(clock: Clock) -> None:
    reg = MemoryRegulator(clock=clock)

    async def run() -> Reservation | Refusal:
        for _ in range(2):
            await reg.afail(reserved(await reg.areserve(user="a", ip=A1)))
        await reg.arelease(reserved(await reg.areserve(user="a", ip=A1)))
        await reg.asucceed(reserved(await reg.areserve(user="a", ip=A1)))
        for _ in range(3):
            await reg.afail(reserved(await reg.areserve(user="a", ip=A1)))
        return await reg.areserve(user="a", ip=A1)

    assert asyncio.run(run()) == Refusal("pair", "banned", T0 + 300)


# -- bounds, settings, listing ------------------------------------------------------------------


def test_memory_is_bounded_per_kind(clock: Clock) -> None:
    reg = MemoryRegulator(max_subjects=10, clock=clock)
    for n in range(100):        # a flood of distinct names from one address
        guess(reg, f"user{n}", f"10.0.{n}.1")
        assert all(len(t) <= 10 for t in reg._tables.values())
    # the flood of names never evicts the record of an address under ban
    for n in range(20):
        guess(reg, f"x{n}", "10.9.9.9")
    assert isinstance(reg.reserve(user="z", ip="10.9.9.9"), Refusal)
    for n in range(100):
        guess(reg, f"flood{n}", f"10.1.{n}.1")
    assert isinstance(reg.reserve(user="z", ip="10.9.9.9"), Refusal)
    with pytest.raises(ValueError):
        MemoryRegulator(max_subjects=0)


def test_memory_full_of_bans_refuses_rather_than_forget(clock: Clock) -> None:
    reg = MemoryRegulator(max_retries=1, max_subjects=3, modes=["user"],
                          user_max_retries=1, clock=clock)
    for n in range(3):
        guess(reg, f"banned{n}", None)
    with pytest.raises(StoreUnavailable):
        reg.reserve(user="newcomer", ip=None)
    clock.advance(300)                        # the bans are over: room again
    assert isinstance(reg.reserve(user="newcomer", ip=None), Reservation)


def test_a_full_table_of_mostly_finished_subjects_still_admits(clock: Clock) -> None:
    """The review: 64 bans at the front of the least-recently-used order, then the table
    filled with single failures; once those are finished, a new subject found no room
    (503) because only the 64 oldest were looked at. Bans are kept out of that order."""
    reg = MemoryRegulator(max_subjects=100, modes=["pair"], clock=clock)
    for n in range(64):
        for _ in range(3):
            guess(reg, f"victim{n}", f"2001:db8:0:{n}::1")
    for n in range(36):
        clock.advance(0.5)
        guess(reg, f"filler{n}", "192.0.2.50")
    assert len(reg._tables["pair"]) == 100
    clock.advance(90)                     # every filler is finished; the bans hold
    assert isinstance(reg.reserve(user="alice", ip="198.51.100.20"), Reservation)
    for n in range(35):                   # the other fillers make room in turn
        assert isinstance(reg.reserve(user=f"owner{n}", ip="198.51.100.21"), Reservation)
    assert len(reg._tables["pair"]) == 100
    assert sum(1 for s in reg._tables["pair"].values() if s.ban > clock()) == 64


def test_memory_never_evicts_a_subject_in_flight(clock: Clock) -> None:
    reg = MemoryRegulator(max_subjects=3, modes=["user"], clock=clock)
    held = [reserved(reg.reserve(user=f"slow{n}", ip=None)) for n in range(3)]
    with pytest.raises(StoreUnavailable):
        reg.reserve(user="newcomer", ip=None)
    reg.release(held[1])                  # settled: it may go now
    assert isinstance(reg.reserve(user="newcomer", ip=None), Reservation)
    assert set(reg._tables["user"]) == {"slow0", "slow2", "newcomer"}
    clock.advance(121)                    # stale reservations (a crash) expire
    assert isinstance(reg.reserve(user="late", ip=None), Reservation)


def test_a_ban_that_ended_can_be_evicted(clock: Clock) -> None:
    reg = MemoryRegulator(max_subjects=2, modes=["user"], user_max_retries=1, clock=clock)
    guess(reg, "a", None)
    guess(reg, "b", None)
    with pytest.raises(StoreUnavailable):
        reg.reserve(user="c", ip=None)
    reg.lift(user="a")                    # lifted: no longer kept
    assert isinstance(reg.reserve(user="c", ip=None), Reservation)
    clock.advance(301)                    # b's ban is over (and c's reservation stale)
    assert isinstance(reg.reserve(user="d", ip=None), Reservation)
    assert set(reg._tables["user"]) == {"d"}


def test_from_settings(clock: Clock, redis_server: RedisServer) -> None:
    settings = RegulationSettings(max_retries=2, user_max_retries=4, ip_max_retries=5,
                                  find_time=10.0, ban_time=20.0, modes=["ip"])
    mem = MemoryRegulator.from_settings(settings, clock=clock)
    guess(mem, "a", A1)
    assert mem.policy.ip_max_retries == 5
    for n in range(4):
        guess(mem, f"b{n}", A1)
    assert isinstance(mem.reserve(user="c", ip=A1), Refusal)
    app = Settings.from_mapping({"session": {"store": "redis", "redis_url": redis_server.url,
                                             "redis_key_prefix": "appP:"},
                                 "keys": {"encryption_keys": [KeyRing.new_key_text()]}},
                                environ={})
    reg = regulator_from_settings(app)
    assert isinstance(reg, RedisRegulator) and reg.redis_key(
        reg.policy.subjects("ivan", A1)[0]).startswith("appP:reg:{")
    reg.close()
    assert isinstance(regulator_from_settings(Settings()), MemoryRegulator)
    # A Redis URL is enough, whatever the session store: workers share the budgets.
    keys = {"encryption_keys": [KeyRing.new_key_text()]}
    for sections in ({"session": {"store": "cookie", "redis_url": redis_server.url}},
                     {"rate_limits": {"redis_url": redis_server.url}},
                     {"session": {"store": "memory", "redis_url": redis_server.url}}):
        reg = regulator_from_settings(Settings.from_mapping({"keys": keys, **sections},
                                                            environ={}))
        assert isinstance(reg, RedisRegulator), sections
        reg.close()


@pytest.mark.parametrize("kwargs", [{"max_retries": 0}, {"max_retries": True},
                                    {"user_max_retries": 0}, {"ip_max_retries": 1.5},
                                    {"find_time": 0}, {"ban_time": float("nan")},
                                    {"modes": "user"}])
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MemoryRegulator(**kwargs)  # type: ignore[arg-type]


def test_bans_are_listed_by_label_and_lifted_by_name(make: Any, clock: Clock) -> None:
    reg = make(user_max_retries=3)
    for n in range(3):
        guess(reg, "Ivan", f"203.0.113.{n}")       # the third bans the name
    for n in range(20):
        guess(reg, f"spray{n}", A2)
    entries = reg.bans()
    kinds = sorted(e.kind for e in entries)
    assert kinds == ["ip", "user"], entries
    user_ban = next(e for e in entries if e.kind == "user")
    assert user_ban.user == label("user", "ivan") and user_ban.ip == ""
    assert "ivan" not in repr(entries) and A2 not in repr(entries)
    assert reg.lift(user=" IVAN ") == 1
    assert isinstance(reg.reserve(user="ivan", ip="203.0.113.9"), Reservation)
    assert reg.lift(ip=A2) == 1 and reg.bans() == []
    assert reg.lift(user="nobody") == 0


# -- Redis only -------------------------------------------------------------------------------


def test_redis_keys_hide_names_carry_one_tag_and_expire(redis_server: RedisServer,
                                                        raw: redis.Redis) -> None:
    reg = RedisRegulator(redis_server.url)
    try:
        guess(reg, "alice@example.com", A1)
        keys = sorted(raw.keys("*"))
        assert len(keys) == 3 and not any("alice" in k or "192.0.2" in k for k in keys)
        for key in keys:
            assert re.fullmatch(r"secure_mw:reg:\{[A-Za-z0-9_-]{22}\}", key)
        ttls = sorted(raw.pttl(k) for k in keys)
        # a single failure: ip 120/19 s, user 120/9 s, pair 60 s
        assert 6000 < ttls[0] <= 6316 and 13000 < ttls[1] <= 13334 and \
            59000 < ttls[2] <= 60000
        guess(reg, "bob", A2, ok=True)               # a success leaves only its address
        assert len(raw.keys("*")) == 3
        assert raw.exists(reg.redis_key(reg.policy.subjects("bob", A2)[0])) == 0
    finally:
        reg.close()


def test_redis_prefix_keeps_apps_apart(redis_server: RedisServer, raw: redis.Redis,
                                       clock: Clock) -> None:
    one = RedisRegulator(redis_server.url, prefix="appA:", clock=clock)
    two = RedisRegulator(redis_server.url, prefix="appB:", clock=clock)
    try:
        for _ in range(3):
            guess(one, "ivan", A1)
        assert isinstance(one.reserve(user="ivan", ip=A1), Refusal)
        assert isinstance(two.reserve(user="ivan", ip=A1), Reservation)
        assert two.bans() == [] and len(one.bans()) == 1
        assert all(k.startswith(("appA:", "appB:")) for k in raw.keys("*"))
        assert two.lift(user="ivan") == 0 and one.lift(user="ivan") == 1
    finally:
        one.close()
        two.close()


def test_redis_noscript_recovery(redis_server: RedisServer, raw: redis.Redis) -> None:
    reg = RedisRegulator(redis_server.url)
    try:
        guess(reg, "alice", A1)
        raw.script_flush()
        guess(reg, "alice", A1)
        assert raw.script_exists(_SCRIPT.sha) == [True]
        assert guess(reg, "alice", A1) is not None
    finally:
        reg.close()


def test_redis_down_fails_closed(redis_server: RedisServer) -> None:
    reg = RedisRegulator(f"redis://:hunter2@127.0.0.1:{redis_server.port}/0")
    turn = reserved(reg.reserve(user="alice", ip=A1))
    redis_server.stop()
    calls: list[Callable[[], object]] = [
        lambda: reg.reserve(user="alice", ip=A1), lambda: reg.fail(turn),
        lambda: reg.succeed(turn), reg.bans, lambda: reg.lift(user="alice")]
    for call in calls:
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert "hunter2" not in str(info.value) and info.value.status == 503
    for acall in (lambda: reg.areserve(user="alice", ip=A1), lambda: reg.afail(turn)):
        with pytest.raises(StoreUnavailable):
            asyncio.run(acall())  # type: ignore[arg-type]
    reg.close()


def test_redis_out_of_memory_fails_closed(redis_server: RedisServer,
                                          raw: redis.Redis) -> None:
    reg = RedisRegulator(redis_server.url)
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable):
            reg.reserve(user="alice", ip=A1)
    finally:
        raw.config_set("maxmemory", "0")
        reg.close()
    assert raw.keys("*") == []


def test_redis_unexpected_replies_are_store_errors() -> None:
    for reply in (None, [], ["x", ""], [0, b"\xff"]):
        with pytest.raises(StoreUnavailable):
            RedisRegulator._reply(reply)
