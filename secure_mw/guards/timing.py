"""Enumeration-resistant timing for authentication endpoints.

A login that answers "no such user" in 2 ms and "wrong password" in 80 ms (the password hash
was checked) tells an attacker which user names exist. :class:`LoginDelay` removes that signal
the way Authelia does: every attempt, whatever its outcome, is held until

    max(mean duration of the last ``history`` successful attempts, ``floor``) + U(0, ``jitter``)

seconds have passed since it started. The mean follows the real cost of a successful login (so
the delay adapts to the password hash and the user store), the floor keeps a fast backend from
shrinking the delay to nothing, and the jitter blurs what noise is left. The history starts
filled with ``seed`` (1 s), so the first logins after a start wait about a second until real
successes replace it. Only the time an attempt took *before* waiting is recorded, and only for
successes: failures can't drag the mean down, and waiting never feeds back into it.

Usage::

    delay = LoginDelay()

    def login(user: str, password: str) -> bool:
        with delay.start() as attempt:
            record = users.get(user)
            if record is None:
                return False  # waits too: same timing as a wrong password
            ok = hasher.verify(record.phc, password)
            attempt.success = ok
            return ok

or, without a ``with`` block, ``attempt = delay.start()`` then ``attempt.finish(success=...)``
(``await attempt.afinish(success=...)`` in async code; ``async with`` works too) on every exit
path. An attempt ended by an exception waits like a failure. An attempt ended by a
``BaseException`` that is not an ``Exception`` (task cancellation, ``KeyboardInterrupt``,
``SystemExit``) is not held: no response reaches a client then, so there is nothing to hide.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

__all__ = ["Attempt", "LoginDelay"]

_SYSTEM_RANDOM = secrets.SystemRandom()


class LoginDelay:
    """Holds every authentication attempt to a common, adaptive duration (thread-safe).

    :param history: how many successful attempts the moving mean covers.
    :param floor: the least base delay, in seconds, whatever the mean.
    :param jitter: the random extra delay is uniform in ``[0, jitter)`` seconds.
    :param seed: the duration the history starts filled with, in seconds.
    :param clock: monotonic seconds; ``sleep``/``asleep`` wait; ``rng`` returns a float in
        ``[0, 1)``. All four are injectable so tests need not wait.
    """

    def __init__(
        self,
        *,
        history: int = 10,
        floor: float = 0.25,
        jitter: float = 0.085,
        seed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = _SYSTEM_RANDOM.random,
        max_record: float = 5.0,
    ) -> None:
        if not max_record > 0:
            raise ValueError("max_record must be positive")
        self.max_record = float(max_record)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError("history must be a positive integer")
        for name, value in (("floor", floor), ("jitter", jitter), ("seed", seed)):
            if not isinstance(value, int | float) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds >= 0")
        self.history = history
        self.floor = float(floor)
        self.jitter = float(jitter)
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
        self._rng = rng
        self._lock = threading.Lock()
        self._durations: deque[float] = deque([float(seed)] * history, maxlen=history)

    @property
    def mean(self) -> float:
        """The mean duration of the last ``history`` successful attempts (or seeds)."""
        with self._lock:
            return sum(self._durations) / len(self._durations)

    @property
    def base(self) -> float:
        """The target an attempt finishing now would get, before the jitter."""
        return max(self.mean, self.floor)

    def start(self) -> Attempt:
        """Begin an attempt: the target duration is measured from now."""
        return Attempt(self, self._clock())

    def _settle(self, started: float, success: bool) -> float:
        """Seconds left to wait for an attempt that began at ``started``; records a success."""
        elapsed = max(0.0, self._clock() - started)
        with self._lock:
            # The target uses the history as it was before this attempt, like Authelia.
            base = max(sum(self._durations) / len(self._durations), self.floor)
            if success:   # capped: a slow client must not be able to slow every login
                self._durations.append(min(elapsed, self.max_record))
        target = base + self.jitter * min(max(self._rng(), 0.0), 1.0)
        return max(0.0, target - elapsed)


class Attempt:
    """One authentication attempt of a :class:`LoginDelay`; finish it exactly once.

    As a context manager it finishes on exit with ``success=attempt.success`` (False unless
    set, and False when the block raised).
    """

    __slots__ = ("_delay", "_finished", "started", "success", "waited")

    def __init__(self, delay: LoginDelay, started: float) -> None:
        self._delay = delay
        self._finished = False
        self.started = started
        #: The outcome the context manager reports on exit; set it when the login succeeds.
        self.success = False
        #: Seconds this attempt waited (0.0 until finished).
        self.waited = 0.0

    @property
    def finished(self) -> bool:
        return self._finished

    def _begin_finish(self, success: bool) -> float:
        if self._finished:
            raise RuntimeError("this login attempt is already finished")
        self._finished = True
        self.success = success
        self.waited = self._delay._settle(self.started, success)
        return self.waited

    def finish(self, *, success: bool) -> float:
        """Sleep until the attempt's target; record it if successful. Returns seconds waited."""
        wait = self._begin_finish(success)
        if wait > 0:
            self._delay._sleep(wait)
        return wait

    async def afinish(self, *, success: bool) -> float:
        """:meth:`finish` for async code: awaits instead of blocking the event loop."""
        wait = self._begin_finish(success)
        if wait > 0:
            await self._delay._asleep(wait)
        return wait

    def _abandon(self) -> None:
        """End without waiting or recording (cancellation, interpreter exit)."""
        self._finished = True
        self.success = False

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if exc is not None and not isinstance(exc, Exception):
            self._abandon()
            return
        self.finish(success=self.success and exc is None)

    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if exc is not None and not isinstance(exc, Exception):
            self._abandon()
            return
        await self.afinish(success=self.success and exc is None)
