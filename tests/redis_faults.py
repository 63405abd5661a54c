"""Faults of a real redis-server, for the fail-closed tests: memory full (``maxmemory`` with
``noeviction``: every write is refused), writes paused (``CLIENT PAUSE WRITE``: scripts hang
until the client's timeout) and the server stopped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.servers import RedisServer

FAULTS = ("maxmemory", "paused", "stopped")


@contextmanager
def fault(server: RedisServer, kind: str) -> Iterator[None]:
    """The server misbehaves as ``kind`` says inside the block, and recovers after it."""
    if kind == "stopped":
        server.stop()
        try:
            yield
        finally:
            server.start()
        return
    client = redis.Redis.from_url(server.url)
    try:
        if kind == "maxmemory":
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")
        elif kind == "paused":
            client.execute_command("CLIENT", "PAUSE", "600000", "WRITE")
        else:
            raise ValueError(kind)
        try:
            yield
        finally:
            if kind == "maxmemory":
                client.config_set("maxmemory", "0")
            else:
                client.execute_command("CLIENT", "UNPAUSE")
    finally:
        client.close()
