"""The one place the request paths tell an observer what happened, with no dependency.

When metrics or tracing are configured, the outermost layer puts a :class:`Observation` in
the :data:`current` context variable for the request; :mod:`secure_mw._driver` then times
each store call of the request's flows and :mod:`secure_mw.audit` hands it each audit event.
Until an observer is built in the process, :data:`active` is False and both skip the lookup,
so an application without metrics pays nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Protocol

__all__ = ["Observation", "Observer", "active", "current", "decided"]


class Observer(Protocol):
    """What :mod:`secure_mw.metrics` implements."""

    def store_call(self, sync: Any, seconds: float, error: BaseException | None) -> None: ...

    def audited(self, seen: Observation, event: str, fields: Mapping[str, object]) -> None: ...

    def decided(self, seen: Observation, layer: str, outcome: str) -> None: ...


class Observation:
    """One request: its observer, whether (and how long) the wrapped app ran, its span."""

    __slots__ = ("app_seconds", "observer", "reached_app", "span")

    def __init__(self, observer: Observer, span: Any = None) -> None:
        self.observer = observer
        self.app_seconds = 0.0
        self.reached_app = False
        self.span = span


current: ContextVar[Observation | None] = ContextVar("secure_mw_observation", default=None)

#: True once an observer exists in this process (set by :mod:`secure_mw.metrics`).
active = False


def decided(layer: str, outcome: str) -> None:
    """A decision no audit line records (a request let in): ``layer`` and ``outcome`` are
    literals of the caller. Callers check :data:`active` first."""
    seen = current.get()
    if seen is not None:
        seen.observer.decided(seen, layer, outcome)


def activate() -> None:
    global active  # noqa: PLW0603 - one flag read on the hot path without a lookup
    active = True
