"""An injectable clock for tests: time moves only when a test says so (never sleep)."""

from __future__ import annotations

import time


class Clock:
    """Callable returning ``now``; ``advance(seconds)`` moves it. Starts at the real time
    unless given a start (tokens from a real provider need a realistic ``now``)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
