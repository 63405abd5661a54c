from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import RedisServer


@pytest.fixture(scope="session")
def _redis_process() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(_redis_process: RedisServer) -> Iterator[RedisServer]:
    """A real redis-server, emptied for each test (and restarted if a test stopped it)."""
    _redis_process.start()
    _redis_process.flush()
    yield _redis_process
    _redis_process.start()
