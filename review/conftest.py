"""The review's tests use the suite's fixtures (a real redis-server, ...)."""

from tests.conftest import _redis_process, redis_server  # noqa: F401
