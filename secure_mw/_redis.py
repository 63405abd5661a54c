"""What every Redis-backed store shares: one asyncio client per event loop.

redis.asyncio connections belong to the loop that opened them, and a process may run
several loops (tests, ``asyncio.run`` per job): a client is made lazily per running loop,
with one immediate retry on a dropped connection (a restarted server), and clients of closed
loops are forgotten.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["LoopClients"]


class LoopClients:
    """Mixin: ``_async_client()`` for the running loop. The class sets ``_url``,
    ``_kwargs``, ``_aclient`` (a client given by the caller, or None), ``_aclients`` (a dict)
    and ``_lock``."""

    _url: str
    _kwargs: dict[str, Any]
    _aclient: redis.asyncio.Redis | None
    _aclients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis]
    _lock: threading.Lock

    def _async_client(self) -> redis.asyncio.Redis:
        if self._aclient is not None:
            return self._aclient
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._lock:
                client = self._aclients.get(loop)
                if client is None:
                    self._drop_closed_loops()
                    client = redis.asyncio.Redis.from_url(
                        self._url,
                        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                        **self._kwargs,
                    )
                    self._aclients[loop] = client
        return client

    def _drop_closed_loops(self) -> None:
        """Forget the asyncio clients of closed loops (their sockets close when collected)."""
        for old in [loop for loop in self._aclients if loop.is_closed()]:
            del self._aclients[old]
