"""``GET {auth_prefix}health``: whether the stores the application depends on answer.

The answer is ``200 {"status": "ok", "checks": {...}}``, or ``503`` with ``Retry-After``
when a store (the session Redis, the regulation's or the rate limits' Redis) does not answer
a PING within ``metrics.health_timeout``. ``checks`` names each store and says ``ok`` or
``unavailable``: no URL, host, version or error text. An answer is reused for
``metrics.health_cache`` seconds, and the flavours let one check run at a time, so a flood of
probes reaches each store at most once per that interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secure_mw._driver import Flow, Op
from secure_mw.errors import StoreUnavailable
from secure_mw.http import Reply, json_reply
from secure_mw.settings import Settings

__all__ = ["HealthCheck", "store_urls"]


def store_urls(settings: Settings) -> dict[str, str]:
    """The stores outside this process that ``settings`` make the app depend on: name ->
    Redis URL (the URLs stay private to the check)."""
    found: dict[str, str] = {}
    if settings.session.store == "redis" and settings.session.redis_url:
        found["session"] = settings.session.redis_url
    shared = settings.rate_limits.redis_url or settings.session.redis_url
    local_login = settings.oidc is None or Path(settings.local_users.file).exists()
    if shared and (local_login or settings.regulation.paths):
        found["regulation"] = shared
    if settings.rate_limits.store == "redis" and settings.rate_limits.rules and shared:
        found["rate_limits"] = shared
    return found


class HealthCheck:
    """The health answer of an application; ``targets`` (default: one Redis client per
    distinct URL of :func:`store_urls`) are objects with ``ping()`` and ``aping()`` that
    raise :class:`StoreUnavailable`; ``clock`` (monotonic seconds) ages the cached answer."""

    def __init__(self, settings: Settings, *,
                 targets: list[tuple[tuple[str, ...], Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = f"{settings.server.auth_prefix}health"
        self.timeout = settings.metrics.health_timeout
        self.cache = settings.metrics.health_cache
        self.clock = clock
        self.targets = targets if targets is not None else self._redis_targets(settings)
        self._answer: tuple[float, Reply] | None = None

    def _redis_targets(self, settings: Settings) -> list[tuple[tuple[str, ...], Any]]:
        by_url: dict[str, list[str]] = {}
        for name, url in store_urls(settings).items():
            by_url.setdefault(url, []).append(name)
        if not by_url:
            return []
        try:
            from secure_mw._redis import RedisClients
        except ImportError:      # the stores themselves report the missing extra
            return []

        return [(tuple(names), _Bounded(RedisClients(
                    url, what="health check", prefix="", socket_timeout=self.timeout,
                    client=None, aclient=None), self.timeout))
                for url, names in by_url.items()]

    def applies(self, method: str, path: str) -> bool:
        return path == self.path and method in ("GET", "HEAD")

    def cached(self) -> Reply | None:
        """The last answer while it is fresh."""
        answer = self._answer
        if answer is not None and self.clock() - answer[0] < self.cache:
            return answer[1]
        return None

    def check(self) -> Flow[Reply]:
        """PING every store (one at a time) and keep the answer."""
        checks: dict[str, str] = {}
        healthy = True
        for names, target in self.targets:
            try:
                yield Op(target.ping, target.aping)
                state = "ok"
            except StoreUnavailable:
                state = "unavailable"
                healthy = False
            for name in names:
                checks[name] = state
        if healthy:
            reply = json_reply(200, {"status": "ok", "checks": checks})
        else:
            reply = json_reply(503, {"status": "unavailable", "checks": checks},
                               headers=[("retry-after", str(max(1, round(self.cache))))])
        self._answer = (self.clock(), reply)
        return reply


class _Bounded:
    """A Redis client's PING, bounded by ``timeout`` under asyncio too."""

    def __init__(self, clients: Any, timeout: float) -> None:
        self.clients = clients
        self.timeout = timeout

    def ping(self) -> None:
        self.clients.ping()

    async def aping(self) -> None:
        import asyncio

        try:
            await asyncio.wait_for(self.clients.aping(), self.timeout)
        except asyncio.TimeoutError:
            raise StoreUnavailable("health check: no answer in time") from None
