"""The default session store: this process's memory, bounded and expiring.

Records are kept as immutable :class:`~secure_mw.session.model.Session` objects (nothing is
at rest outside the process, so nothing is encrypted here). At most ``max_sessions`` are kept;
beyond that the least recently used one is dropped. Expired records are dropped when read and
in small batches on every write, so memory never holds more than the bound.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from secure_mw.session.model import Session

__all__ = ["MemorySessionStore"]

_SHARED: dict[str, MemorySessionStore] = {}
_SHARED_LOCK = threading.Lock()


class MemorySessionStore:
    holds_objects = True
    nonblocking = True   # never waits on I/O: called inline under ASGI

    def __init__(self, *, max_sessions: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        if max_sessions <= 0:
            raise ValueError("max_sessions must be positive")
        self.max_sessions = max_sessions
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Session]] = OrderedDict()
        self._once: OrderedDict[str, float] = OrderedDict()   # claimed tokens, oldest first
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, name: str, *, max_sessions: int = 100_000) -> MemorySessionStore:
        """The process-wide store for cookie ``name``: every middleware (and
        :func:`secure_mw.testing.session_cookie`) in this process that uses the memory store
        with that cookie name sees the same sessions."""
        with _SHARED_LOCK:
            store = _SHARED.get(name)
            if store is None:
                store = _SHARED[name] = cls(max_sessions=max_sessions)
            return store

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"MemorySessionStore(max_sessions={self.max_sessions})"

    def load(self, session_id: str) -> Session | None:
        with self._lock:
            item = self._items.get(session_id)
            if item is None:
                return None
            if item[0] <= self._clock():
                del self._items[session_id]
                return None
            self._items.move_to_end(session_id)
            return item[1]

    def save(self, session_id: str, session: Session, ttl: float, *,
             only_if_exists: bool = False) -> bool:
        """Keep ``session`` for ``ttl`` seconds; with ``only_if_exists`` a record deleted
        meanwhile (a logout racing this request) stays deleted. Returns whether it was kept."""
        with self._lock:
            if ttl <= 0:
                self._items.pop(session_id, None)
                return False
            now = self._clock()
            if only_if_exists:
                current = self._items.get(session_id)
                if current is None or current[0] <= now:
                    return False
            self._items[session_id] = (now + ttl, session)
            self._items.move_to_end(session_id)
            self._sweep(now)
            return True

    def claim_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is claimed within ``ttl`` seconds (in this process)."""
        with self._lock:
            now = self._clock()
            once = self._once
            while once and next(iter(once.values())) <= now:
                once.popitem(last=False)
            if token in once:
                return False
            once[token] = now + ttl
            while len(once) > self.max_sessions:
                once.popitem(last=False)
            return True

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._items.pop(session_id, None)

    def _sweep(self, now: float) -> None:
        items = self._items
        while len(items) > self.max_sessions:
            items.popitem(last=False)
        # Drop a few expired records from the cold end: amortized O(1) per write.
        for _ in range(4):
            if not items:
                break
            key, (deadline, _session) = next(iter(items.items()))
            if deadline > now:
                break
            del items[key]

    async def aload(self, session_id: str) -> Session | None:
        return self.load(session_id)

    async def asave(self, session_id: str, session: Session, ttl: float, *,
                    only_if_exists: bool = False) -> bool:
        return self.save(session_id, session, ttl, only_if_exists=only_if_exists)

    async def aclaim_once(self, token: str, ttl: float) -> bool:
        return self.claim_once(token, ttl)

    async def adelete(self, session_id: str) -> None:
        self.delete(session_id)
