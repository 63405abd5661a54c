"""What every Redis-backed store shares, and the only module that imports redis-py.

redis is an optional dependency (``pip install 'secure-mw[redis]'``): the modules of the
Redis engines import this one, and nothing else in the package imports them until a Redis
store is asked for, so a plain install imports and runs without it.

* :class:`RedisClients`: one synchronous client and, lazily, one asyncio client per running
  event loop (redis.asyncio connections belong to the loop that opened them; clients of
  closed loops are forgotten); one immediate retry after a dropped connection (a restarted
  server); every failure becomes :class:`~secure_mw.errors.StoreUnavailable` naming only
  ``host:port``; Lua scripts run with EVALSHA (EVAL after NOSCRIPT).
* Three topologies, told by the URL's scheme: one server (``redis://``, ``rediss://``,
  ``unix://``), a Redis Cluster (``redis+cluster://`` / ``rediss+cluster://`` and one node's
  address; the others are discovered) and Sentinel (``redis+sentinel://`` /
  ``rediss+sentinel://`` with the sentinels' addresses comma-separated and the master's name
  as the path). The ``[redis]`` section of the settings composes these URLs
  (:func:`compose_url`); query parameters ``socket_timeout``, ``socket_connect_timeout``,
  ``max_connections`` and (Sentinel) ``sentinel_password`` tune them.
* :func:`server_label`, :func:`ttl_ms`, :func:`tag`, :class:`Script`: small helpers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlsplit

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.sentinel
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, RedisClusterException
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised by the plain-install test
    raise ImportError(
        "the Redis stores need redis-py, which secure_mw installs with its 'redis' extra: "
        "pip install 'secure-mw[redis]'"
    ) from exc

from secure_mw._encoding import b64url_encode
from secure_mw._redis_url import Topology, compose_url
from secure_mw.errors import StoreUnavailable

__all__ = ["HEALTH_CHECK_INTERVAL", "STORE_ERRORS", "RedisClients", "Script", "Topology",
           "compose_url", "server_label", "sync_client", "tag", "ttl_ms"]

_log = logging.getLogger("secure_mw.redis")

#: Errors that mean "the store cannot answer" (asyncio.TimeoutError differs from the
#: built-in TimeoutError on Python 3.10; a Cluster that cannot be reached raises a
#: RedisClusterException, which is no RedisError).
STORE_ERRORS: Final = (redis.RedisError, RedisClusterException, OSError, asyncio.TimeoutError)
#: Seconds a pooled connection may stay idle before it is PINGed ahead of the next command.
HEALTH_CHECK_INTERVAL: Final = 30
#: Connections to one Redis server per event loop; a request beyond waits for one to be free
#: (at most the socket timeout, then the store is unavailable: 503).
MAX_CONNECTIONS: Final = 64
#: Printable ASCII without spaces or braces: a brace would move the Cluster hash tag.
_PREFIX: Final = re.compile(r"[!-z|~]{0,200}")


def server_label(url: str) -> str:
    """``host:port`` (or ``unix:/path``, ``cluster host:port``, ``sentinel NAME``) of a Redis
    URL; raises ValueError without the URL."""
    return Topology.parse(url).label


def sync_client(url: str, *, socket_timeout: float = 10.0) -> Any:
    """A synchronous redis-py client for ``url`` (any topology), for the command line."""
    clients = RedisClients(url, what="redis", prefix="", socket_timeout=socket_timeout,
                           client=None, aclient=None)
    return clients._client


def ttl_ms(ttl: float) -> int | None:
    """Milliseconds for a TTL in seconds, rounded up; None when ``ttl <= 0``."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("ttl must be a number of seconds")
    if not math.isfinite(ttl):
        raise ValueError("ttl must be finite")
    if ttl <= 0:
        return None
    return max(1, math.ceil(ttl * 1000))


def tag(key: str) -> str:
    """The hash tag of ``key``: 22 base64url characters (132 bits) of its SHA-256."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return b64url_encode(digest)[:22]


class Script:
    """A Lua script and its SHA-1 (as Redis names it in EVALSHA)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _check_client(client: Any, what: str) -> None:
    if client.get_connection_kwargs().get("decode_responses"):
        raise ValueError(f"{what} must not use decode_responses: session values are bytes")


class RedisClients:
    """The clients of one Redis-backed store; see the module docstring.

    ``client``/``aclient`` are used as given (and left open by :meth:`close`); they must not
    use ``decode_responses`` when the store keeps bytes (``keeps_bytes``). ``tls`` holds
    redis-py's ``ssl_*`` options (rediss:// only).
    """

    __slots__ = ("_aclient", "_aclients", "_given_aclient", "_given_client",
                 "_kwargs", "_label", "_lock", "_max_connections", "_prefix", "_sync",
                 "_topology", "_url", "_what")

    def __init__(self, url: str, *, what: str, prefix: str, socket_timeout: float,
                 client: redis.Redis | None, aclient: redis.asyncio.Redis | None,
                 tls: dict[str, str] | None = None, keeps_bytes: bool = False) -> None:
        topology = Topology.parse(url)
        self._topology = topology
        self._url = url  # kept private (another client of the same store); never shown
        self._label = topology.label
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ValueError("the key prefix must be at most 200 printable ASCII characters "
                             "without spaces or braces")
        if not (isinstance(socket_timeout, int | float) and not isinstance(socket_timeout, bool)
                and socket_timeout > 0 and math.isfinite(socket_timeout)):
            raise ValueError("socket_timeout must be a positive number of seconds")
        self._what = what
        self._prefix = prefix
        timeout = topology.options.get("socket_timeout", socket_timeout)
        self._kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": topology.options.get("socket_connect_timeout", timeout),
            "health_check_interval": HEALTH_CHECK_INTERVAL,
        }
        self._max_connections: int = topology.options.get("max_connections", MAX_CONNECTIONS)
        if tls:
            if not topology.tls:
                raise ValueError("TLS files are given but the Redis URL is not rediss://")
            self._kwargs.update(tls)
        self._lock = threading.Lock()
        self._aclients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._given_client = client is not None
        self._given_aclient = aclient is not None
        if keeps_bytes:
            if client is not None:
                _check_client(client, "client")
            if aclient is not None:
                _check_client(aclient, "aclient")
        # Made when first used: a Cluster client connects as it is made, and start-up must
        # not fail because the store is down (requests answer 503 until it is back).
        self._sync: Any = client
        self._aclient = aclient

    @property
    def _client(self) -> Any:
        client = self._sync
        if client is None:
            with self._lock:
                client = self._sync
                if client is None:
                    client = self._sync = self._new_sync_client()
        return client

    def _sentinel_kwargs(self) -> dict[str, Any]:
        extra = {"socket_timeout": self._kwargs["socket_timeout"],
                 "socket_connect_timeout": self._kwargs["socket_connect_timeout"]}
        password = self._topology.options.get("sentinel_password")
        if password:
            extra["password"] = password
        return extra

    def _data_kwargs(self) -> dict[str, Any]:
        """The connection options the URL itself holds (credentials, db, TLS), for the
        Sentinel clients, which are not made from a URL."""
        parts = urlsplit(self._topology.plain)
        kwargs: dict[str, Any] = {"db": int(parts.path.strip("/") or 0)}
        if parts.username:
            kwargs["username"] = parts.username
        if parts.password:
            kwargs["password"] = parts.password
        if self._topology.tls:
            kwargs["ssl"] = True
        kwargs.update(self._topology.extra)   # ssl_ca_certs and the like, as from_url does
        return kwargs

    def _new_sync_client(self) -> Any:
        top = self._topology
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if top.kind == "cluster":
            return redis.cluster.RedisCluster.from_url(
                top.plain, retry=retry, max_connections=self._max_connections,
                **self._kwargs)
        if top.kind == "sentinel":
            sentinel = redis.sentinel.Sentinel(list(top.nodes),
                                               sentinel_kwargs=self._sentinel_kwargs())
            return sentinel.master_for(top.master, retry=retry, **self._data_kwargs(),
                                       **self._kwargs)
        return redis.Redis.from_url(top.plain, retry=retry, **self._kwargs)

    def _new_async_client(self) -> Any:
        top = self._topology
        retry = AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if top.kind == "cluster":
            return redis.asyncio.cluster.RedisCluster.from_url(
                top.plain, retry=retry, max_connections=self._max_connections,
                **self._kwargs)
        if top.kind == "sentinel":
            sentinel = redis.asyncio.sentinel.Sentinel(list(top.nodes),
                                                       sentinel_kwargs=self._sentinel_kwargs())
            return sentinel.master_for(top.master, retry=retry, **self._data_kwargs(),
                                       **self._kwargs)
        # A bounded pool that waits (up to the socket timeout) for a free connection: the
        # default one raises at once beyond its size, so a burst of concurrent requests got
        # 503 while Redis was idle.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            top.plain, max_connections=self._max_connections,
            timeout=self._kwargs["socket_timeout"], retry=retry, **self._kwargs)
        return redis.asyncio.Redis(connection_pool=pool)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(server={self._label!r}, prefix={self._prefix!r})"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        _log.debug("%s %s: %s", self._what, self._label, type(exc).__name__)
        return StoreUnavailable(f"{self._what} unavailable: {self._label}")

    def _async_client(self) -> Any:
        if self._aclient is not None:
            return self._aclient
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._lock:
                client = self._aclients.get(loop)
                if client is None:
                    self._drop_closed_loops()
                    client = self._new_async_client()
                    self._aclients[loop] = client
        return client

    def _drop_closed_loops(self) -> None:
        """Forget the asyncio clients of closed loops (their sockets close when collected)."""
        for old in [loop for loop in self._aclients if loop.is_closed()]:
            del self._aclients[old]

    def _run(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            client = self._client
            try:
                return client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:  # flushed, restarted or failed over: EVAL caches it again
                return client.eval(script.text, len(keys), *keys, *args)
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def _arun(self, script: Script, keys: Sequence[str],
                    args: Sequence[str | int]) -> Any:
        try:
            client = self._async_client()
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return await client.eval(script.text, len(keys), *keys, *args)
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def ping(self) -> None:
        """PING the server (the health check); :class:`StoreUnavailable` when it does not
        answer."""
        try:
            self._client.ping()
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def aping(self) -> None:
        """:meth:`ping` with the running loop's client."""
        try:
            await self._async_client().ping()
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        """Close the synchronous connections opened here (they reopen if used again) and
        forget the asyncio clients of closed loops; :meth:`aclose` closes the others."""
        with self._lock:
            self._drop_closed_loops()
        if not self._given_client and self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close the connections of the running loop's client (they reopen if used again)."""
        if self._given_aclient:
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.pop(loop, None)
            self._drop_closed_loops()
        if client is not None:
            closer = getattr(client, "aclose", None) or client.close  # aclose: redis >= 5.0.1
            await closer()
