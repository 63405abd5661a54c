"""Server-side session values in Redis, encrypted at rest.

::

    store = RedisSessionStore("rediss://:pw@redis.internal:6380/0", keyring=KeyRing.generate())
    store.save(session_id, value, ttl=3600)        # or: await store.asave(...)
    store.load(session_id)                         # the bytes saved, or None

The store keeps opaque bytes (the caller serializes the session) and talks to Redis with
redis-py, synchronously (:class:`redis.Redis`) and with asyncio (:class:`redis.asyncio.Redis`).

* **Keys.** A session id is a bearer secret (the cookie value), so it never reaches Redis:
  the key is ``prefix + "session:" + base64url(SHA-256(session_id))``. A dump of the
  database or ``MONITOR`` shows no live cookie value.
* **Values.** Each value is encrypted by the key ring with its Redis key as associated data:
  a value copied under another session's key, changed, or made by a key no longer in the
  ring does not decrypt, and :meth:`RedisSessionStore.load` returns None (deleting nothing,
  logging nothing secret; auditing is the caller's). Values written by an older key of the
  ring still decrypt; re-encrypting them is the caller's business.
* **One key per command.** Every operation is a single command on a single key (GET,
  SET ... PX, PEXPIRE, DEL): no transactions, scripts, multi-key commands, KEYS or SCAN, so
  the store works unchanged behind Redis Cluster or a proxy that shards by key.
* **Failures.** A connection error, a timeout or an error reply raises
  :class:`~secure_mw.errors.StoreUnavailable` (status 503) naming only ``host:port``:
  never the URL's password, a key or a value. There is no fallback to memory (fail closed).
  Each command is retried at most once, and only after a connection error, so a pooled
  connection left dead by a restarted server is replaced transparently.
* **URLs.** ``redis://``, ``rediss://`` (TLS; CA, certificate and key files may be given) and
  ``unix://``, with the query options redis-py understands. Clients passed in as ``client``
  or ``aclient`` are used as they are (and are left open by :meth:`close`); they must not
  use ``decode_responses``.
* **asyncio.** redis.asyncio connections belong to the event loop that opened them, so the
  store keeps one asyncio client per running loop, made on first use in that loop. Call
  :meth:`RedisSessionStore.aclose` in a loop before it ends to close that loop's connections;
  the client of a loop found closed later is dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import threading
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from secure_mw._encoding import b64url_encode
from secure_mw._redis import LoopClients
from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import ConfigError, ConfigProblem, DecryptError, StoreUnavailable

if TYPE_CHECKING:
    from secure_mw.settings import SessionSettings

__all__ = ["RedisSessionStore"]

_log = logging.getLogger("secure_mw.session.redis")

#: Errors that mean "the store cannot answer" (asyncio.TimeoutError differs from the
#: built-in TimeoutError on Python 3.10).
_STORE_ERRORS: Final = (RedisError, OSError, asyncio.TimeoutError)
_SCHEMES: Final = ("redis", "rediss", "unix")
_PREFIX: Final = re.compile(r"[!-~]{0,200}")  # printable ASCII without spaces
#: Seconds a pooled connection may stay idle before it is PINGed ahead of the next command.
HEALTH_CHECK_INTERVAL: Final = 30


def _server_label(url: str) -> str:
    """``host:port`` (or ``unix:/path``) of a Redis URL; raises ValueError without the URL."""
    if not isinstance(url, str):
        raise TypeError("the Redis URL must be a string")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("the Redis URL is malformed (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError("the Redis URL must start with redis://, rediss:// or unix://")
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs a socket path")
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port or 6379}"


def _ttl_ms(ttl: float) -> int | None:
    """Milliseconds for a TTL in seconds, rounded up; None when ``ttl <= 0``."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError("ttl must be a number of seconds")
    if not math.isfinite(ttl):
        raise ValueError("ttl must be finite")
    if ttl <= 0:
        return None
    return max(1, math.ceil(ttl * 1000))


def _check_client(client: Any, what: str) -> None:
    if client.get_connection_kwargs().get("decode_responses"):
        raise ValueError(f"{what} must not use decode_responses: session values are bytes")


class RedisSessionStore(LoopClients):
    """Encrypted session values in Redis; see the module docstring."""

    __slots__ = ("_aclient", "_aclients", "_client", "_given_aclient", "_given_client",
                 "_keyring", "_kwargs", "_label", "_lock", "_prefix", "_url")

    def __init__(
        self,
        url: str,
        *,
        keyring: KeyRing,
        prefix: str = "secure_mw:",
        socket_timeout: float = 2.0,
        ssl_ca_file: str | None = None,
        ssl_cert_file: str | None = None,
        ssl_key_file: str | None = None,
        client: redis.Redis | None = None,
        aclient: redis.asyncio.Redis | None = None,
    ) -> None:
        self._label = _server_label(url)
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ValueError("the key prefix must be at most 200 printable ASCII characters "
                             "without spaces")
        if not (isinstance(socket_timeout, int | float) and socket_timeout > 0
                and math.isfinite(socket_timeout)):
            raise ValueError("socket_timeout must be a positive number of seconds")
        kwargs: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
        }
        tls = {"ssl_ca_certs": ssl_ca_file, "ssl_certfile": ssl_cert_file,
               "ssl_keyfile": ssl_key_file}
        given_tls = {k: v for k, v in tls.items() if v is not None}
        if given_tls:
            if not url.lower().startswith("rediss://"):
                raise ValueError("TLS files are given but the Redis URL is not rediss://")
            kwargs.update(given_tls)
        self._keyring = keyring
        self._prefix = prefix
        self._url = url  # kept private for the asyncio clients; never shown
        self._kwargs = kwargs
        self._lock = threading.Lock()
        self._aclients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}
        self._given_client = client is not None
        self._given_aclient = aclient is not None
        if client is not None:
            _check_client(client, "client")
        if aclient is not None:
            _check_client(aclient, "aclient")
        self._client: redis.Redis = client if client is not None else redis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **kwargs,
        )
        self._aclient = aclient

    @classmethod
    def from_settings(cls, session: SessionSettings, keyring: KeyRing) -> RedisSessionStore:
        """The store ``session.redis_url`` and ``session.redis_key_prefix`` describe."""
        if not session.redis_url:
            raise ConfigError([ConfigProblem("session.redis_url",
                                             "required when session.store = 'redis'")])
        return cls(session.redis_url, keyring=keyring, prefix=session.redis_key_prefix)

    def __repr__(self) -> str:
        return f"RedisSessionStore(server={self._label!r}, prefix={self._prefix!r})"

    # -- helpers --------------------------------------------------------------------------

    def redis_key(self, session_id: str) -> str:
        """The Redis key of ``session_id``: the prefix and a hash, never the id itself."""
        if not isinstance(session_id, str):
            raise TypeError("session_id must be a string")
        digest = hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()
        return f"{self._prefix}session:{b64url_encode(digest)}"

    def _once_key(self, token: str) -> str:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        return f"{self._prefix}once:{b64url_encode(digest)}"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        _log.debug("session store %s: %s", self._label, type(exc).__name__)
        return StoreUnavailable(f"session store unavailable: {self._label}")

    def _open(self, key: str, blob: object) -> bytes | None:
        if blob is None:
            return None
        if not isinstance(blob, bytes):
            _log.debug("session value rejected: not bytes")
            return None
        try:
            return self._keyring.decrypt_bytes(blob, aad=key.encode("ascii"))
        except DecryptError as exc:
            _log.debug("session value rejected: %s", exc.reason)
            return None

    def _seal(self, key: str, value: bytes) -> bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError("a session value must be bytes")
        return self._keyring.encrypt_bytes(bytes(value), aad=key.encode("ascii"))

    # -- synchronous ----------------------------------------------------------------------

    def load(self, session_id: str) -> bytes | None:
        """The value saved for ``session_id``; None when missing, expired or not authentic."""
        key = self.redis_key(session_id)
        try:
            blob = self._client.get(key)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._open(key, blob)

    def save(self, session_id: str, value: bytes, ttl: float, *,
             only_if_exists: bool = False) -> bool:
        """Store ``value`` for ``ttl`` seconds (SET with PX, one round trip); ``ttl <= 0``
        deletes instead. With ``only_if_exists`` (SET XX) a value deleted meanwhile — a
        logout racing this request — stays deleted; returns whether it was written."""
        key = self.redis_key(session_id)
        ms = _ttl_ms(ttl)
        if ms is None:
            self.delete(session_id)
            return False
        blob = self._seal(key, value)
        try:
            return bool(self._client.set(key, blob, px=ms, xx=only_if_exists))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def claim_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is claimed within ``ttl`` seconds (SET NX PX), by
        any process sharing this Redis."""
        try:
            return bool(self._client.set(self._once_key(token), b"1", px=_ttl_ms(ttl) or 1,
                                         nx=True))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def touch(self, session_id: str, ttl: float) -> None:
        """Set the time to live of an existing value (PEXPIRE); a missing one stays missing.
        ``ttl <= 0`` deletes."""
        key = self.redis_key(session_id)
        ms = _ttl_ms(ttl)
        try:
            if ms is None:
                self._client.delete(key)
            else:
                self._client.pexpire(key, ms)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def delete(self, session_id: str) -> None:
        key = self.redis_key(session_id)
        try:
            self._client.delete(key)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        """Close the synchronous connections the store opened (they reopen if used again)
        and forget the asyncio clients of closed loops; :meth:`aclose` closes the others."""
        with self._lock:
            self._drop_closed_loops()
        if not self._given_client:
            self._client.close()

    # -- asyncio --------------------------------------------------------------------------

    async def aload(self, session_id: str) -> bytes | None:
        """:meth:`load` for asyncio."""
        key = self.redis_key(session_id)
        try:
            blob = await self._async_client().get(key)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._open(key, blob)

    async def asave(self, session_id: str, value: bytes, ttl: float, *,
                    only_if_exists: bool = False) -> bool:
        """:meth:`save` for asyncio."""
        key = self.redis_key(session_id)
        ms = _ttl_ms(ttl)
        if ms is None:
            await self.adelete(session_id)
            return False
        blob = self._seal(key, value)
        try:
            return bool(await self._async_client().set(key, blob, px=ms, xx=only_if_exists))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def aclaim_once(self, token: str, ttl: float) -> bool:
        """:meth:`claim_once` for asyncio."""
        try:
            return bool(await self._async_client().set(
                self._once_key(token), b"1", px=_ttl_ms(ttl) or 1, nx=True))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def atouch(self, session_id: str, ttl: float) -> None:
        """:meth:`touch` for asyncio."""
        key = self.redis_key(session_id)
        ms = _ttl_ms(ttl)
        try:
            if ms is None:
                await self._async_client().delete(key)
            else:
                await self._async_client().pexpire(key, ms)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def adelete(self, session_id: str) -> None:
        """:meth:`delete` for asyncio."""
        key = self.redis_key(session_id)
        try:
            await self._async_client().delete(key)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

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
