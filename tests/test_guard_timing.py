"""LoginDelay: exact waits with an injected clock, and a real-time indistinguishability test."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import pytest

from secure_mw.crypto import PasswordHasher
from secure_mw.guards.timing import Attempt, LoginDelay


class FakeTime:
    """A clock that only moves when the code under test "works" or sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.asleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.asleeps.append(seconds)
        self.now += seconds

    def work(self, seconds: float) -> None:
        self.now += seconds


def make(ft: FakeTime, rng: float = 0.5, **kwargs: float) -> LoginDelay:
    return LoginDelay(clock=ft.clock, sleep=ft.sleep, asleep=ft.asleep, rng=lambda: rng,
                      **kwargs)  # type: ignore[arg-type]


# Values below are binary fractions (0.125, 0.0625, ...) so the waits compare exactly.


def test_first_attempt_waits_for_the_seed_plus_jitter() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.5, jitter=0.125)
    attempt = delay.start()
    ft.work(0.125)
    assert attempt.finish(success=False) == 1.0 + 0.0625 - 0.125
    assert ft.sleeps == [0.9375]
    assert ft.now == 1.0625  # the whole attempt, as a client sees it
    assert attempt.waited == 0.9375


def test_defaults_are_authelias() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.5)
    assert (delay.history, delay.floor, delay.jitter, delay.mean) == (10, 0.25, 0.085, 1.0)
    attempt = delay.start()
    ft.work(0.25)
    assert attempt.finish(success=False) == pytest.approx(1.0 + 0.0425 - 0.25, abs=1e-12)


def test_rng_bounds_the_jitter() -> None:
    for r, expected in ((0.0, 1.0), (0.999, 1.0 + 0.125 * 0.999)):
        ft = FakeTime()
        assert make(ft, rng=r, jitter=0.125).start().finish(success=False) == expected


def test_successes_feed_the_mean_with_the_time_before_waiting() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0)
    attempt = delay.start()
    ft.work(0.5)
    assert attempt.finish(success=True) == 0.5  # target 1.0 (seed), 0.5 already spent
    # The 0.5 s of waiting is not part of the recorded duration.
    assert delay.mean == (9 * 1.0 + 0.5) / 10
    for _ in range(9):
        attempt = delay.start()
        ft.work(0.5)
        attempt.finish(success=True)
    assert delay.mean == 0.5
    attempt = delay.start()
    ft.work(0.125)
    assert attempt.finish(success=False) == 0.375


def test_the_target_uses_the_history_before_this_attempt() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0, history=2, seed=0.5, floor=0.0)
    attempt = delay.start()
    ft.work(0.25)
    # Mean before: 0.5, so 0.25 is left, even though this success lowers the mean to 0.375.
    assert attempt.finish(success=True) == 0.25
    assert delay.mean == 0.375


def test_failures_never_change_the_history() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0)
    for work in (0.0, 0.125, 3.0):
        attempt = delay.start()
        ft.work(work)
        attempt.finish(success=False)
    assert delay.mean == 1.0


def test_the_floor_holds_when_successes_are_fast() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0, jitter=0.125)
    for _ in range(10):
        attempt = delay.start()
        ft.work(0.0625)
        attempt.finish(success=True)
    assert delay.mean == 0.0625
    assert delay.base == 0.25
    attempt = delay.start()
    assert attempt.finish(success=False) == 0.25


def test_no_wait_when_the_work_already_took_longer() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.5, jitter=0.125)
    attempt = delay.start()
    ft.work(2.0)
    assert attempt.finish(success=False) == 0.0
    assert ft.sleeps == []


def login(ft: FakeTime, delay: LoginDelay, outcome: str) -> bool:
    """A login endpoint whose exit paths do very different amounts of work."""
    with delay.start() as attempt:
        if outcome == "banned":
            return False  # refused before anything is looked up
        ft.work(0.0078125)  # user lookup
        if outcome == "unknown":
            return False
        if outcome == "disabled":
            return False
        if outcome == "error":
            raise ConnectionError("user store unreachable")
        ft.work(0.078125)  # password hash
        attempt.success = outcome == "success"
        return attempt.success
    raise AssertionError("unreachable")


@pytest.mark.parametrize("outcome", ["success", "unknown", "wrong", "disabled", "banned",
                                     "error"])
def test_every_exit_path_takes_the_same_time(outcome: str) -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.5, jitter=0.125)
    if outcome == "error":
        with pytest.raises(ConnectionError):
            login(ft, delay, outcome)
    else:
        assert login(ft, delay, outcome) is (outcome == "success")
    assert ft.now == 1.0625
    assert delay.mean == ((9 + 0.0859375) / 10 if outcome == "success" else 1.0)


def test_context_manager_records_success_only_when_set_and_not_raised() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0, floor=0.0, seed=0.5, history=1)
    with delay.start() as attempt:
        ft.work(0.125)
    assert attempt.finished and not attempt.success and attempt.waited == 0.375
    assert delay.mean == 0.5
    with pytest.raises(ValueError), delay.start() as attempt:
        ft.work(0.125)
        attempt.success = True
        raise ValueError("after success was set")
    assert not attempt.success and delay.mean == 0.5
    with delay.start() as attempt:
        ft.work(0.125)
        attempt.success = True
    assert delay.mean == 0.125


def test_explicit_finish_inside_with_is_not_repeated_and_double_finish_raises() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0)
    with delay.start() as attempt:
        attempt.finish(success=False)
    assert ft.sleeps == [1.0]
    with pytest.raises(RuntimeError, match="already finished"):
        attempt.finish(success=False)


def test_cancellation_and_interrupts_are_not_held() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.0)
    with pytest.raises(KeyboardInterrupt), delay.start() as attempt:
        raise KeyboardInterrupt
    assert attempt.finished and attempt.waited == 0.0 and ft.sleeps == []

    attempts: list[Attempt] = []

    async def cancelled() -> None:
        async with delay.start() as attempt:
            attempts.append(attempt)
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())
    assert attempts[0].finished and ft.asleeps == [] and delay.mean == 1.0


def test_async_finish_awaits_and_never_blocks() -> None:
    ft = FakeTime()
    delay = make(ft, rng=0.5, jitter=0.125)

    async def main() -> tuple[float, Attempt]:
        attempt = delay.start()
        ft.work(0.5)
        waited = await attempt.afinish(success=True)
        async with delay.start() as second:
            ft.work(0.25)
        return waited, second

    waited, second = asyncio.run(main())
    assert waited == 0.5625
    assert second.waited == 0.0625 + (9 * 1.0 + 0.5) / 10 - 0.25
    assert ft.sleeps == [] and ft.asleeps == [0.5625, second.waited]


def test_history_is_thread_safe() -> None:
    local = threading.local()
    delay = LoginDelay(clock=lambda: getattr(local, "now", 0.0), sleep=lambda _s: None,
                       rng=lambda: 0.0)
    barrier = threading.Barrier(8)

    def worker(duration: float) -> None:
        barrier.wait()
        for _ in range(500):
            local.now = 0.0
            attempt = delay.start()
            local.now = duration
            attempt.finish(success=True)

    threads = [threading.Thread(target=worker, args=(0.5,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert delay.mean == 0.5  # 4000 records, the deque still holds exactly the last 10


@pytest.mark.parametrize("kwargs", [{"history": 0}, {"history": True}, {"floor": -0.1},
                                    {"jitter": math.nan}, {"seed": math.inf}])
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoginDelay(**kwargs)  # type: ignore[arg-type]


# --- statistics -----------------------------------------------------------------------------


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    xs, ys = sorted(a), sorted(b)
    n, m = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        v = min(xs[i], ys[j])
        while i < n and xs[i] == v:  # step over ties together
            i += 1
        while j < m and ys[j] == v:
            j += 1
        d = max(d, abs(i / n - j / m))
    return d  # past the end of either sample the gap only shrinks


def ks_critical(n: int, m: int, alpha: float) -> float:
    """The asymptotic critical value: reject "same distribution" when D exceeds it."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def test_ks_statistic() -> None:
    assert ks_statistic([1, 2, 3], [3, 2, 1]) == 0.0
    assert ks_statistic([1, 2], [3, 4, 5]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert ks_statistic([1, 1, 2], [1, 2, 2]) == pytest.approx(1 / 3)
    assert ks_critical(60, 60, 0.001) == pytest.approx(0.3559, abs=1e-4)


def test_ks_threshold_false_alarm_rate_is_below_alpha() -> None:
    # Exact null distribution of D for two independent samples of 60 (Gnedenko-Korolyuk):
    # the asymptotic threshold is slightly conservative here.
    n, alpha = 60, 0.001
    k = math.floor(ks_critical(n, n, alpha) * n) + 1  # D takes values i/n: D > crit iff D >= k/n
    p = 2 * sum((-1) ** (j - 1) * math.comb(2 * n, n - j * k) for j in range(1, n // k + 1))
    assert p / math.comb(2 * n, n) < alpha


SAMPLES = 60
ALPHA = 0.001
MAX_MEDIAN_GAP = 0.003  # s
FLOOR = 0.020  # s; the wrong-password path's Argon2id verify takes ~5 ms
JITTER = 0.010


def _calibrated_hasher() -> PasswordHasher:
    """A cheap Argon2id (2 MiB, 1 lane) whose verify takes at least ~5 ms on this machine.

    Its time grows linearly with the number of passes (~1 ms each on a 2020s x86 core); the
    fastest probe is this machine's uncontended speed, so CPU contention only makes it slower.
    """
    probe = PasswordHasher(time_cost=1, memory_cost=2048, parallelism=1)
    phc = probe.hash("correct horse")
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        probe.verify(phc, "wrong")
        runs.append(time.perf_counter() - t0)
    passes = math.ceil(0.005 / min(runs))
    return PasswordHasher(time_cost=max(1, min(32, passes)), memory_cost=2048, parallelism=1)


def _paired_jitter(seed: int) -> Callable[[], float]:
    """Uniform draws, each returned twice: the two attempts of a pair share their jitter."""
    rnd = random.Random(seed)

    def values() -> Iterator[float]:
        while True:
            r = rnd.random()
            yield r
            yield r

    return values().__next__


Login = Callable[[str, str], Awaitable[bool]]


async def _measure(login: Login, seed: int) -> tuple[list[float], list[float]]:
    """Timings (the client's view: one login's wall time) of the unknown-user and
    wrong-password paths, interleaved in pairs of random order so that drift in the machine's
    load hits both paths alike."""
    order = random.Random(seed)
    unknown: list[float] = []
    wrong: list[float] = []
    for _ in range(SAMPLES):
        for path in order.sample(["unknown", "wrong"], 2):
            user = "mallory" if path == "unknown" else "alice"
            t0 = time.perf_counter()
            assert await login(user, "not the password") is False
            (unknown if path == "unknown" else wrong).append(time.perf_counter() - t0)
    return unknown, wrong


def _verdict(unknown: list[float], wrong: list[float]) -> tuple[bool, str]:
    """(indistinguishable?, details): KS at ALPHA and the median gap."""
    d = ks_statistic(unknown, wrong)
    crit = ks_critical(len(unknown), len(wrong), ALPHA)
    m_unknown, m_wrong = statistics.median(unknown), statistics.median(wrong)
    same = d <= crit and abs(m_wrong - m_unknown) < MAX_MEDIAN_GAP
    return same, (f"KS D={d:.3f} (critical {crit:.3f}), medians unknown={m_unknown * 1e3:.2f} ms"
                  f" wrong={m_wrong * 1e3:.2f} ms")


@pytest.mark.slow
def test_unknown_user_and_wrong_password_are_indistinguishable() -> None:
    """Real time, short parameters: ~3.8 s (hence slow). 60 + 60 logins through an async
    endpoint, as an ASGI app runs them: the Argon2id verify (~5 ms) in a worker thread.

    Why a false failure is negligible, even on a noisy 2-core machine:
    - With the delay both paths end max(floor, mean of successes) + jitter after their start.
      The history is warmed with real successful logins (~5 ms, under the 20 ms floor), so the
      target is the floor: the hashing stays hidden until CPU contention slows it 4x, and then
      only in the samples it slowed (and a slower history raises the target with it).
    - The two attempts of a pair draw the same jitter (common random numbers) and run back to
      back in random order, so drift in the machine's load hits both paths alike. With
      independent jitter, two samples of one distribution exceed the KS threshold with
      probability ~alpha (exactly 5.6e-4 here, see
      test_ks_threshold_false_alarm_rate_is_below_alpha); with shared jitter the delayed
      timings differ only by OS noise, so D stays near 0 while the delay works. To fail, one
      path must be *systematically* later, by ~0.36 * JITTER = 3.6 ms in over a third of the
      pairs; one preempted sample moves D by only 1/60, and the medians ignore it too.
      Sharing the jitter keeps the power against a real leak: a constant leak of d seconds
      still moves D by ~d / JITTER (an injected 4 ms leak fails this test: D ~0.5).
    - The hash runs in a worker thread (as it must in an async app anyway). If the thread that
      sleeps has just burned the CPU, Linux's EEVDF scheduler wakes it later than an idle one
      under CPU overload (it carries negative lag): with 3 CPU hogs on 2 cores, a sync
      endpoint's wrong-password path ended 1-8 ms later, enough to fail. With the work in a
      worker thread: no load, D 0.10-0.13 (the event loop's 1 ms timer granularity) and
      median gaps <= 0.7 ms; 2 or 3 hogs, D <= 0.22 and gaps <= 1.5 ms (~30 runs).
    - The control runs the same verdict on the bare endpoint and must see the leak (D = 1,
      gap >= 5 ms), so the test can fail.
    """
    hasher = _calibrated_hasher()
    users = {"alice": hasher.hash("correct horse")}
    delay = LoginDelay(floor=FLOOR, jitter=JITTER, seed=FLOOR, rng=_paired_jitter(1))

    async def delayed_login(user: str, password: str) -> bool:
        async with delay.start() as attempt:
            phc = users.get(user)
            if phc is None:
                return False  # unknown user: no work at all
            attempt.success = await asyncio.to_thread(hasher.verify, phc, password)
            return attempt.success

    async def bare_login(user: str, password: str) -> bool:
        phc = users.get(user)
        return phc is not None and await asyncio.to_thread(hasher.verify, phc, password)

    async def run() -> tuple[tuple[list[float], list[float]], tuple[list[float], list[float]]]:
        for _ in range(10):  # real successes replace the seed in the history
            assert await delayed_login("alice", "correct horse")
        return await _measure(delayed_login, seed=2), await _measure(bare_login, seed=3)

    (unknown, wrong), (bare_unknown, bare_wrong) = asyncio.run(run())
    assert min(unknown + wrong) >= FLOOR  # every attempt was held
    same, details = _verdict(unknown, wrong)
    assert same, "the delayed paths are told apart: " + details

    # Control: the same verdict on the bare endpoint tells the paths apart, on both counts.
    same, details = _verdict(bare_unknown, bare_wrong)
    assert not same, "the control failed to see the leak: " + details
    assert ks_statistic(bare_unknown, bare_wrong) > ks_critical(SAMPLES, SAMPLES, ALPHA), details
    assert statistics.median(bare_wrong) - statistics.median(bare_unknown) >= 0.003, details
