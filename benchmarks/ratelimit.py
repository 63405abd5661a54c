"""Decisions per second of the GCRA rate limiters, against references in the same run.

Memory (one thread, 10,000 client keys taken in turn, as per-address rules see them):

  (a) limits MovingWindowRateLimiter + MemoryStorage, 600/minute         baseline
  (b) secure_mw MemoryRateLimiter, 600/minute
  (c) limits, 20/second and 600/minute: one hit() per limit, stopping at a refusal
  (d) secure_mw MemoryRateLimiter, "20/second;600/minute" in one call

Redis (a real redis-server from tests.servers.RedisServer, one client, one connection):

  (e) redis-benchmark -c 1: EVALSHA of the limiter's own script, same key and arguments
  (f) redis-py: client.evalsha(...) of the same script, no decision built    Python baseline
  (f2) the same EVALSHA through the limiter's own client (its socket timeout and retry)
  (g) secure_mw RedisRateLimiter.hit (sync): EVALSHA plus the decision
  (h) secure_mw RedisRateLimiter.ahit in one asyncio loop

Every case of a section is timed in the same repeat loop, in alternating order, so machine
noise hits them alike; each figure is the median of the repeats and every ratio is against a
reference measured in the same run. Needs the `limits` package (`pip install limits`) and,
for the Redis section, redis-server and redis-benchmark (skipped with a note otherwise).

Run from the repository root::

    python -m benchmarks.ratelimit          # or: python benchmarks/ratelimit.py
    python -m benchmarks.ratelimit --quick  # a smoke test of a few seconds
    python -m benchmarks.ratelimit --no-redis
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from secure_mw.guards.ratelimit import _GCRA, EPSILON, MemoryRateLimiter, RedisRateLimiter
from secure_mw.settings import parse_rate_limit

KEYS = 10_000
ONE = "600/minute"
TWO = "20/second;600/minute"
REDIS_LIMITS = ((10**9, 3600.0),)   # never refuses: every decision writes (the longer path)

Timed = Callable[[int], float]      # makes n decisions, returns the seconds they took


@dataclass
class Case:
    tag: str
    label: str
    run: Timed
    allowed: Callable[[], float] | None = None   # share of allowed decisions in a sample


def client_keys() -> list[str]:
    return [f"rule0:ip:10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(KEYS)]


# -- memory ---------------------------------------------------------------------------------

def limits_case(tag: str, label: str, text: str) -> Case:
    items = [limits.parse(part) for part in text.split(";")]
    storage = MemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    keys = itertools.cycle(client_keys())

    if len(items) == 1:
        item = items[0]

        def decide() -> bool:
            return limiter.hit(item, next(keys))
    else:
        def decide() -> bool:
            key = next(keys)
            return all(limiter.hit(it, key) for it in items)

    if len(items) == 1:
        def timed(n: int) -> float:
            hit, nxt = limiter.hit, keys.__next__
            start = time.perf_counter()
            for _ in range(n):
                hit(item, nxt())
            return time.perf_counter() - start
    else:
        def timed(n: int) -> float:
            hit, nxt = limiter.hit, keys.__next__
            start = time.perf_counter()
            for _ in range(n):
                key = nxt()
                for it in items:
                    if not hit(it, key):
                        break
            return time.perf_counter() - start

    def run(n: int) -> float:
        # MemoryStorage expires entries in a threading.Timer fired 10 ms after a hit; wait
        # for it outside the timed span, so that it never runs inside another case's run.
        elapsed = timed(n)
        storage.timer.join()
        return elapsed

    return Case(tag, label, run, lambda: sum(decide() for _ in range(KEYS)) / KEYS)


def secure_mw_case(tag: str, label: str, text: str) -> Case:
    rule = parse_rate_limit(text)
    limiter = MemoryRateLimiter()
    keys = itertools.cycle(client_keys())

    def run(n: int) -> float:
        hit, nxt = limiter.hit, keys.__next__
        start = time.perf_counter()
        for _ in range(n):
            hit(nxt(), rule)
        return time.perf_counter() - start

    def allowed() -> float:
        return sum(limiter.hit(next(keys), rule).allowed for _ in range(KEYS)) / KEYS

    return Case(tag, label, run, allowed)


def memory_cases() -> list[Case]:
    return [
        limits_case("a", f"limits moving window, {ONE}", ONE),
        secure_mw_case("b", f"secure_mw memory GCRA, {ONE}", ONE),
        limits_case("c", f"limits moving window, {TWO}", TWO),
        secure_mw_case("d", f"secure_mw memory GCRA, {TWO}", TWO),
    ]


# -- Redis ----------------------------------------------------------------------------------

class RedisBench:
    """A redis-server, the limiter and the references that run against it."""

    def __init__(self) -> None:
        from tests.servers import RedisServer

        self.server: Any = None
        self.notes: list[str] = []
        self.cases: list[Case] = []
        self.limiter: RedisRateLimiter | None = None
        self.loop = asyncio.new_event_loop()
        self.program = shutil.which("redis-benchmark")
        try:
            server = RedisServer()
            self.server = server
            server.start()
        except BaseException as exc:   # pytest.skip() (no redis-server) is a BaseException
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.notes.append(f"redis cases skipped: {exc}")
            self.server = None
            return
        if self.program is None:
            self.notes.append("redis-benchmark not installed: case (e) skipped")

    def build(self, requests: int) -> None:
        if self.server is None:
            return
        import redis

        limiter = RedisRateLimiter(self.server.url)
        self.limiter = limiter
        key = "rule0:ip:203.0.113.9"
        rkeys = limiter.redis_keys(key, REDIS_LIMITS)
        args: list[str | int] = [1, repr(EPSILON), str(REDIS_LIMITS[0][0]),
                                 repr(REDIS_LIMITS[0][1])]
        raw = redis.Redis.from_url(self.server.url)
        self.raw = raw
        raw.script_load(_GCRA.text)
        argv = ["EVALSHA", _GCRA.sha, str(len(rkeys)), *rkeys, *map(str, args)]
        assert raw.evalsha(_GCRA.sha, len(rkeys), *rkeys, *args)[0] == 1
        self.argv = argv

        program = self.program
        if program is not None:
            port = str(self.server.port)

            def bench(n: int) -> float:
                out = subprocess.run(
                    [program, "-h", "127.0.0.1", "-p", port, "-n", str(n), "-c", "1",
                     "-q", *argv],
                    capture_output=True, text=True, check=True, timeout=300,
                ).stdout
                found = re.findall(r"([\d.]+) requests per second", out)
                if not found:
                    raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")
                return n / float(found[-1])

            self.cases.append(Case("e", "redis-benchmark -c 1, EVALSHA (C client)", bench))

        def evalsha(n: int) -> float:
            call, sha, nk = raw.evalsha, _GCRA.sha, len(rkeys)
            start = time.perf_counter()
            for _ in range(n):
                call(sha, nk, *rkeys, *args)
            return time.perf_counter() - start

        def evalsha_own(n: int) -> float:
            call, sha, nk = limiter._client.evalsha, _GCRA.sha, len(rkeys)
            start = time.perf_counter()
            for _ in range(n):
                call(sha, nk, *rkeys, *args)
            return time.perf_counter() - start

        def hit(n: int) -> float:
            h = limiter.hit
            start = time.perf_counter()
            for _ in range(n):
                h(key, REDIS_LIMITS)
            return time.perf_counter() - start

        async def ahits(n: int) -> float:
            h = limiter.ahit
            start = time.perf_counter()
            for _ in range(n):
                await h(key, REDIS_LIMITS)
            return time.perf_counter() - start

        self.cases += [
            Case("f", "redis-py evalsha, same script (no decision)", evalsha),
            Case("f2", "  the same via the limiter's client", evalsha_own),
            Case("g", "secure_mw RedisRateLimiter.hit (sync)", hit),
            Case("h", "secure_mw RedisRateLimiter.ahit (asyncio)",
                 lambda n: self.loop.run_until_complete(ahits(n))),
        ]
        assert limiter.hit(key, REDIS_LIMITS).allowed

    def commands_per_decision(self, decisions: int = 1000) -> dict[str, float]:
        """Commands the server ran per decision, from INFO commandstats (script inside)."""
        assert self.limiter is not None

        def calls() -> dict[str, int]:
            stats = self.raw.info("commandstats")
            return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

        before = calls()
        for _ in range(decisions):
            self.limiter.hit("rule0:ip:198.51.100.1", REDIS_LIMITS)
        after = calls()
        out = {name: (after[name] - before.get(name, 0)) / decisions for name in after}
        return {name: v for name, v in out.items() if v >= 0.5 and name != "info"}

    def close(self) -> None:
        try:
            if self.limiter is not None:
                self.loop.run_until_complete(self.limiter.aclose())
                self.limiter.close()
                self.raw.close()
        finally:
            if self.server is not None:
                self.server.stop()
                shutil.rmtree(self.server.dir, ignore_errors=True)
            self.loop.close()


# -- measuring ------------------------------------------------------------------------------

def calibrate(run: Timed, run_seconds: float) -> int:
    """Decisions per timed run so that one run takes about ``run_seconds``."""
    number = 16
    while True:
        elapsed = run(number)
        if elapsed >= run_seconds / 4 or number >= 1 << 22:
            return max(1, int(number * run_seconds / max(elapsed, 1e-9)))
        number *= 4


def measure(cases: list[Case], repeats: int, numbers: dict[str, int]) -> dict[str, float]:
    """Median seconds per decision of each case; cases alternate within a repeat."""
    samples: dict[str, list[float]] = {c.tag: [] for c in cases}
    for r in range(repeats):
        order = cases if r % 2 == 0 else cases[::-1]
        for case in order:
            n = numbers[case.tag]
            samples[case.tag].append(case.run(n) / n)
    return {tag: statistics.median(times) for tag, times in samples.items()}


def table(cases: list[Case], sec: dict[str, float]) -> None:
    print(f"  {'':5}{'case':46}{'decisions/s':>13}{'us/decision':>13}")
    for c in cases:
        print(f"  {'(' + c.tag + ')':5}{c.label:46}{1 / sec[c.tag]:>13,.0f}"
              f"{sec[c.tag] * 1e6:>13.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per memory case")
    parser.add_argument("--run-ms", type=float, default=40.0, help="length of one memory run")
    parser.add_argument("--redis-repeats", type=int, default=5, help="timed runs per Redis case")
    parser.add_argument("--redis-requests", type=int, default=20_000,
                        help="decisions per Redis run (redis-benchmark -n)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis cases")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms = 5, 5.0
        args.redis_repeats, args.redis_requests = 3, 2_000

    began = time.perf_counter()
    print(f"secure_mw rate limit benchmark; limits {limits.__version__}; "
          f"Python {sys.version.split()[0]}")

    cases = memory_cases()
    for case in cases:        # warm-up
        case.run(2000)
    numbers = {c.tag: calibrate(c.run, args.run_ms / 1000) for c in cases}
    sec = measure(cases, args.repeats, numbers)
    print()
    print(f"memory: one thread, {KEYS:,} keys in turn; median of {args.repeats} interleaved "
          f"runs of ~{args.run_ms:g} ms")
    table(cases, sec)
    rate = {tag: 1 / s for tag, s in sec.items()}
    print(f"  (b)/(a) secure_mw / limits, one limit   {rate['b'] / rate['a']:>6.2f}")
    print(f"  (d)/(c) secure_mw / limits, two limits  {rate['d'] / rate['c']:>6.2f}")
    shares = ", ".join(f"({c.tag}) {c.allowed():.0%}" for c in cases if c.allowed)
    print(f"  allowed in a sample of {KEYS:,} further decisions: {shares}")

    if not args.no_redis:
        bench = RedisBench()
        try:
            bench.build(args.redis_requests)
            if bench.cases:
                for case in bench.cases:   # warm-up: connections, script cache
                    case.run(200)
                n = {c.tag: args.redis_requests for c in bench.cases}
                rsec = measure(bench.cases, args.redis_repeats, n)
                print()
                print(f"redis: one client, loopback, limit {REDIS_LIMITS[0][0]}/"
                      f"{REDIS_LIMITS[0][1]:g}s (every decision writes); median of "
                      f"{args.redis_repeats} interleaved runs of {args.redis_requests:,}")
                table(bench.cases, rsec)
                r = {tag: 1 / s for tag, s in rsec.items()}
                if "e" in r:
                    print(f"  (g)/(e) secure_mw sync / redis-benchmark  {r['g'] / r['e']:>6.2f}")
                    print(f"  (f)/(e) redis-py / redis-benchmark        {r['f'] / r['e']:>6.2f}")
                print(f"  (g)/(f) secure_mw sync / redis-py evalsha  {r['g'] / r['f']:>6.2f}")
                print(f"  (g)/(f2) the same, both on the limiter's client {r['g'] / r['f2']:>6.2f}")
                print(f"  (h)/(f) secure_mw asyncio / redis-py sync  {r['h'] / r['f']:>6.2f}")
                per = bench.commands_per_decision()
                print("  commands per decision (INFO commandstats): "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items())))
            for note in bench.notes:
                print(f"  {note}")
        finally:
            bench.close()
    print(f"\n  ({time.perf_counter() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
