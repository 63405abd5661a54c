"""Fixtures of the project's test suite, for the review's reproductions."""

from tests.conftest import _redis_process, redis_server

__all__ = ["_redis_process", "redis_server"]
