"""LoginDelay: exact waits with an injected clock (the real-time indistinguishability
measurement is ``python -m benchmarks.login_timing``)."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

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
