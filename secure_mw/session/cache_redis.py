"""A short-lived local cache of session records, kept correct by Redis client-side caching.

One connection of its own speaks RESP3 and asks Redis for ``CLIENT TRACKING ON BCAST PREFIX
<prefix>session:``: every write, delete or expiry of a session key on any instance pushes an
invalidation to it, in the socket before the writer has its reply. Before an entry is
served, the pending invalidations are drained without blocking; while that connection is
missing or lost the cache is empty and unused (reads go to Redis). Entries are bounded in
number and bytes, live at most ``ttl`` seconds (and never past the record's own TTL), and a
miss is never cached. docs/sessions.md tells the bound on staleness.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from secure_mw._redis import STORE_ERRORS

__all__ = ["TrackedCache", "tracking_connections"]

#: Token of a lookup whose answer must not be stored.
_NO_STORE = -1


class TrackedCache:
    """Opened session values by Redis key; see the module docstring.

    ``connect`` makes a new, unconnected redis-py connection speaking RESP3 (protocol=3).
    """

    __slots__ = ("_bytes", "_clock", "_conn", "_connect", "_entries", "_heard", "_lock",
                 "_max_bytes", "_max_entries", "_next_try", "_pid", "_pinged", "_prefix",
                 "_retry", "_seq", "_ttl")

    def __init__(self, connect: Callable[[], Any], *, prefix: str, ttl: float,
                 max_entries: int = 10_000, max_bytes: int = 8 << 20,
                 retry: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl > 0 or max_entries < 1 or max_bytes < 1:
            raise ValueError("the cache needs a positive ttl and bounds")
        self._connect = connect
        self._prefix = prefix
        self._ttl = float(ttl)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = 0
        self._heard = float("-inf")   # when Redis last answered on that connection
        self._pinged = False
        self._next_try = float("-inf")
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._bytes = 0
        self._seq = 0   # invalidations seen and local forgets: a read spanning one is not kept

    # -- the invalidation connection --------------------------------------------------------

    @property
    def tracking(self) -> bool:
        """Whether the invalidation connection is established (the cache is in use)."""
        return self._conn is not None

    def due(self) -> bool:
        """Whether :meth:`establish` should be tried now (no connection, retry time come)."""
        return self._conn is None and self._clock() >= self._next_try

    def establish(self) -> bool:
        """Open the invalidation connection and turn tracking on (blocking: a thread of its
        own under asyncio); False when Redis refused or did not answer (retried later)."""
        with self._lock:
            if self._conn is not None:
                return True
            if self._clock() < self._next_try:
                return False
            self._next_try = self._clock() + self._retry
            conn = self._connect()
            try:
                conn.connect()
                conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX",
                                  f"{self._prefix}session:")
                if conn.read_response() not in (b"OK", "OK"):
                    raise ConnectionError("CLIENT TRACKING refused")
            except (*STORE_ERRORS, ConnectionError):
                conn.disconnect()
                return False
            conn._parser.set_invalidation_push_handler(_keep)
            self._clear()
            self._conn = conn
            self._pid = os.getpid()
            self._heard = self._clock()
            self._pinged = False
            return True

    def close(self) -> None:
        """Drop the connection and every entry (a later request establishes it again)."""
        with self._lock:
            self._lost()

    def _lost(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*STORE_ERRORS):
                self._conn.disconnect()
        self._conn = None
        self._clear()

    def _drain(self) -> bool:
        """Apply every invalidation already received; False (and the cache emptied) when the
        connection is missing or lost. Call with the lock held."""
        conn = self._conn
        if conn is None:
            return False
        if self._pid != os.getpid():   # a forked worker: the socket is the parent's
            self._conn = None
            self._clear()
            return False
        try:
            if conn._sock is None:     # redis-py dropped it: tracking is gone with it
                raise ConnectionError("invalidation connection closed")
            while conn.can_read(timeout=0):
                self._apply(conn.read_response(push_request=True))
            if not self._pinged and self._clock() - self._heard > self._ttl / 2:
                conn.send_command("PING")     # a few bytes; its PONG is read by a later drain
                self._pinged = True
        except (*STORE_ERRORS, ConnectionError):
            self._lost()
            return False
        return True

    def _alive(self) -> bool:
        """Whether Redis answered on the connection within ``ttl``: a server frozen or cut
        off stops the cache within that time (its invalidations could be missing)."""
        return self._clock() - self._heard <= self._ttl

    def _apply(self, message: object) -> None:
        if message in (b"PONG", "PONG"):
            self._heard = self._clock()
            self._pinged = False
            return
        if not isinstance(message, list) or not message:
            return
        kind = message[0]
        if kind not in (b"invalidate", "invalidate"):
            return
        self._seq += 1
        keys = message[1] if len(message) > 1 else None
        if not isinstance(keys, list):      # FLUSHALL / FLUSHDB: everything
            self._clear()
            return
        for key in keys:
            self._pop(key.decode("ascii", "replace") if isinstance(key, bytes) else str(key))

    # -- entries ------------------------------------------------------------------------------

    def lookup(self, key: str) -> tuple[bytes | None, int]:
        """(the cached value of ``key`` or None, a token for :meth:`keep`). Pending
        invalidations are applied first; without the connection nothing is served."""
        with self._lock:
            if not self._drain() or not self._alive():
                return None, _NO_STORE
            entry = self._entries.get(key)
            if entry is not None:
                if self._clock() < entry[1]:
                    return entry[0], _NO_STORE
                self._pop(key)
            return None, self._seq

    def keep(self, key: str, value: bytes, ttl_ms: int, token: int) -> None:
        """Cache ``value`` read from Redis after :meth:`lookup` gave ``token``, for the
        shorter of the cache's TTL and the record's (``ttl_ms``, PTTL's answer); not when
        an invalidation came meanwhile, the record has no TTL left, or it is too big."""
        if token == _NO_STORE or ttl_ms == -2 or 0 <= ttl_ms < 1 or len(value) > self._max_bytes:
            return
        with self._lock:
            if not self._drain() or self._seq != token or not self._alive():
                return
            life = self._ttl if ttl_ms < 0 else min(self._ttl, ttl_ms / 1000)
            self._pop(key)
            self._entries[key] = (value, self._clock() + life)
            self._bytes += len(value)
            while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
                self._pop(next(iter(self._entries)))     # the oldest first

    def forget(self, key: str) -> None:
        """Drop ``key`` (this instance wrote or deleted it); a read in flight is not kept."""
        with self._lock:
            self._seq += 1
            self._pop(key)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes of the values held."""
        return self._bytes

    def _pop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0])

    def _clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def _keep(message: object) -> object:
    return message


def tracking_connections(url: str, options: dict[str, Any]) -> Callable[[], Any]:
    """A maker of unconnected RESP3 connections to the one server of ``url`` (``redis://``,
    ``rediss://``, ``unix://``) with redis-py's ``options`` (timeouts, TLS files)."""
    pool = redis.ConnectionPool.from_url(url, protocol=3, **options)
    cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
    return lambda: cls(**kwargs)
