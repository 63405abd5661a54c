"""The default session store: this process's memory, bounded and expiring.

Records are kept as immutable :class:`~secure_mw.session.model.Session` objects (nothing is
at rest outside the process, so nothing is encrypted here). At most ``max_sessions`` are kept;
beyond that the least recently used one is dropped. Expired records are dropped when read and
in small batches on every write, so memory never holds more than the bound. Single-use claims
and revocation marks each expire at their own deadline (a heap orders them), are bounded by
``max_sessions`` too (beyond it the one closest to its end goes first), and claims can be
released.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from secure_mw.session.model import Session

__all__ = ["MemorySessionStore"]

_SHARED: dict[str, MemorySessionStore] = {}
_SHARED_LOCK = threading.Lock()


class _Deadlines:
    """Keys that each live until their own deadline; not thread-safe (the store locks)."""

    __slots__ = ("_heap", "_limit", "_until")

    def __init__(self, limit: int) -> None:
        self._until: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []   # may hold stale entries; rebuilt when big
        self._limit = limit

    def __len__(self) -> int:
        return len(self._until)

    def live(self, key: str, now: float) -> bool:
        deadline = self._until.get(key)
        return deadline is not None and deadline > now

    def add(self, key: str, deadline: float, now: float) -> None:
        self._until[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        self.sweep(now)

    def discard(self, key: str) -> None:
        self._until.pop(key, None)

    def sweep(self, now: float) -> None:
        heap, until = self._heap, self._until
        while heap and (heap[0][0] <= now or len(until) > self._limit):
            deadline, key = heapq.heappop(heap)
            if until.get(key) == deadline:
                del until[key]
        if len(heap) > 2 * len(until) + 64:    # released or re-added keys left stale entries
            self._heap = [(d, k) for k, d in until.items()]
            heapq.heapify(self._heap)


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
        self._once = _Deadlines(max_sessions)       # claimed single-use tokens
        self._revoked = _Deadlines(max_sessions)    # ended sessions (the cookie store)
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
        """True the first time ``token`` is claimed within ``ttl`` seconds (in this process),
        or after the claim was released."""
        with self._lock:
            now = self._clock()
            if self._once.live(token, now):
                return False
            self._once.add(token, now + ttl, now)
            return True

    def release(self, token: str) -> None:
        """Give up a claim (the next :meth:`claim_once` of ``token`` succeeds)."""
        with self._lock:
            self._once.discard(token)

    def revoke(self, key: str, ttl: float) -> None:
        """Remember for ``ttl`` seconds that the session ``key`` names has ended."""
        with self._lock:
            now = self._clock()
            if ttl > 0 and not self._revoked.live(key, now + ttl):
                self._revoked.add(key, now + ttl, now)

    def is_revoked(self, key: str) -> bool:
        # One dict look-up, atomic by itself: no lock on the path of every cookie-store read.
        return self._revoked.live(key, self._clock())

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

    async def arelease(self, token: str) -> None:
        self.release(token)

    async def arevoke(self, key: str, ttl: float) -> None:
        self.revoke(key, ttl)

    async def ais_revoked(self, key: str) -> bool:
        return self.is_revoked(key)

    async def adelete(self, session_id: str) -> None:
        self.delete(session_id)
