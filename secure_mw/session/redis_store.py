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
  a value copied under another session's key, changed, or made by keys not in the ring
  (another application's, or a retired key) does not decrypt, and
  :meth:`RedisSessionStore.load` raises :class:`~secure_mw.errors.DecryptError` (deleting
  nothing, logging nothing secret; auditing is the caller's). Values written by an older key
  of the ring still decrypt; re-encrypting them is the caller's business.
* **Marks.** ``claim_once`` (SET NX PX) and ``release`` (DEL) for single-use tokens and
  refresh claims; ``revoke`` (SET PX) and ``is_revoked`` (EXISTS) for ended sessions of the
  cookie store. Their keys are hashes too (``once:``, ``revoked:``).
* **Back-channel logout.** ``save_indexed`` writes a new record and adds its *key* (a hash,
  never the id) to a sorted set per provider session and per subject (``index:{<tag>}``,
  the tag a hash of the name; scored by when the session can last be alive, members long
  past it dropped as new ones come), in one pipeline (MULTI/EXEC on one server);
  ``end_indexed`` deletes the records a set lists (each its own slot on a Cluster), then
  takes them off the set. For the cookie store, ``mark_ended`` keeps when a provider session or a
  subject was signed out (``ended:{<tag of the client>}:<hash>``: every mark of one client
  on one slot) and ``is_ended`` reads the session's revocation mark and those in one MGET:
  one round trip (on a Cluster one per node holding them, at most two).
* **One slot per command.** Every other operation is a single command on a single key (GET,
  SET ... PX, PEXPIRE, DEL) and every script touches one key; no KEYS or SCAN, so the store
  works behind Redis Cluster or a proxy that shards by key.
* **Failures.** A connection error, a timeout or an error reply raises
  :class:`~secure_mw.errors.StoreUnavailable` (status 503) naming only ``host:port``:
  never the URL's password, a key or a value. There is no fallback to memory (fail closed).
  Each command is retried at most once, and only after a connection error, so a pooled
  connection left dead by a restarted server is replaced transparently.
* **Local cache.** On one server, :meth:`load` keeps what it read for ``cache_ttl`` seconds
  in a :class:`~secure_mw.session.cache_redis.TrackedCache`, kept correct by Redis
  invalidations (docs/sessions.md); Cluster, Sentinel and given clients read Redis each time.
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
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from secure_mw._encoding import b64url_encode
from secure_mw._redis import STORE_ERRORS as _STORE_ERRORS
from secure_mw._redis import RedisClients, Script
from secure_mw._redis import tag as _tag
from secure_mw._redis import ttl_ms as _ttl_ms
from secure_mw.crypto.keyring import KeyRing
from secure_mw.errors import ConfigError, ConfigProblem
from secure_mw.session._sealed import open_value, seal_value
from secure_mw.session.cache_redis import TrackedCache, tracking_connections

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from secure_mw.settings import SessionSettings

__all__ = ["RedisSessionStore"]

_log = logging.getLogger("secure_mw.session.redis")
#: How long past its session's last possible moment a list member is kept (other clocks).
_INDEX_MARGIN_MS = 10 * 60 * 1000



#: An ended-at mark only ever moves later (instances' clocks differ; a second logout of the
#: same name must not bring back sessions the first one ended).
_MARK_LATEST = Script("local c = tonumber(redis.call('GET', KEYS[1])) "
                      "if c == nil or c < tonumber(ARGV[1]) then "
                      "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
                      "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then "
                      "redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")


class RedisSessionStore(RedisClients):
    """Encrypted session values in Redis; see the module docstring."""

    __slots__ = ("_cache", "_keyring")

    indexes = True   # save_indexed and end_indexed: back-channel logout

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
        cache_ttl: float = 1.0,
        cache_entries: int = 10_000,
        cache_bytes: int = 8 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        tls = {"ssl_ca_certs": ssl_ca_file, "ssl_certfile": ssl_cert_file,
               "ssl_keyfile": ssl_key_file}
        super().__init__(url, what="session store", prefix=prefix,
                         socket_timeout=socket_timeout, client=client, aclient=aclient,
                         tls={k: v for k, v in tls.items() if v is not None},
                         keeps_bytes=True)
        self._keyring = keyring
        # The local cache (docs/sessions.md): one server only, and only with our own clients
        # (a Cluster or Sentinel reads Redis every time).
        self._cache: TrackedCache | None = None
        if cache_ttl > 0 and self._topology.kind == "server" and client is None \
                and aclient is None:
            options = {k: self._kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")}
            options.update({k: v for k, v in tls.items() if v is not None})
            self._cache = TrackedCache(tracking_connections(self._topology.plain, options),
                                       prefix=prefix, ttl=cache_ttl,
                                       max_entries=cache_entries, max_bytes=cache_bytes,
                                       clock=clock)

    @classmethod
    def from_settings(cls, session: SessionSettings, keyring: KeyRing) -> RedisSessionStore:
        """The store ``session.redis_url`` and ``session.redis_key_prefix`` describe."""
        if not session.redis_url:
            raise ConfigError([ConfigProblem("session.redis_url",
                                             "required when session.store = 'redis'")])
        return cls(session.redis_url, keyring=keyring, prefix=session.redis_key_prefix,
                   cache_ttl=session.redis_cache_ttl)

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

    def _revoked_key(self, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        return f"{self._prefix}revoked:{b64url_encode(digest)}"

    def _index_key(self, name: str) -> str:
        return f"{self._prefix}index:{{{_tag(name)}}}"

    def _ended_key(self, name: str) -> str:
        # index_name() is "kind\0client\0value": the client's marks share one slot.
        client = name.split("\x00")[1] if name.count("\x00") >= 2 else ""
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
        return f"{self._prefix}ended:{{{_tag(client)}}}:{b64url_encode(digest)}"

    def _pipeline(self) -> Any:
        # MULTI/EXEC on one server; a Cluster pipeline (keys of several slots) is not atomic.
        return self._client.pipeline(transaction=self._topology.kind != "cluster")

    def _apipeline(self) -> Any:
        return self._async_client().pipeline(transaction=self._topology.kind != "cluster")

    def _index_commands(self, pipe: Any, key: str, blob: bytes, ms: int, *,
                        index: Collection[str], index_ms: int) -> None:
        # The lists first: a record is never written without them (a failure raises, and
        # the login that wrote it sets no cookie).
        # Each list is a sorted set scored by when its session can last be alive: members
        # past that (with a margin for the clocks of other instances) are dropped as a new
        # one comes, so one user's many sign-ins never grow a list without bound.
        life = max(index_ms, ms)
        now = int(time.time() * 1000)
        for name in index:
            set_key = self._index_key(name)
            pipe.zremrangebyscore(set_key, "-inf", f"({now - _INDEX_MARGIN_MS}")
            pipe.zadd(set_key, {key: now + life})
            pipe.pexpire(set_key, life)
        pipe.set(key, blob, px=ms)

    def _session_members(self, members: object) -> list[str]:
        """The session keys of an index set (anything else in it is ignored)."""
        start = f"{self._prefix}session:"
        out = []
        for member in members if isinstance(members, set | list) else ():
            text = member.decode("ascii", "replace") if isinstance(member, bytes) else ""
            if text.startswith(start) and len(text) <= len(start) + 43:
                out.append(text)
        return out

    def _marks_get(self, keys: list[str]) -> Any:
        if self._topology.kind == "cluster":    # keys of several slots: one per node
            return self._client.mget_nonatomic(keys)
        return self._client.mget(keys)

    def _open(self, key: str, blob: object) -> bytes | None:
        return None if blob is None else open_value(self._keyring, key, blob)

    def _seal(self, key: str, value: bytes) -> bytes:
        return seal_value(self._keyring, key, value)

    # -- synchronous ----------------------------------------------------------------------

    def load(self, session_id: str) -> bytes | None:
        """The value saved for ``session_id``; None when missing or expired; a value that is
        not authentic raises :class:`~secure_mw.errors.DecryptError`."""
        key = self.redis_key(session_id)
        cache = self._cache
        if cache is None:
            try:
                blob = self._client.get(key)
            except _STORE_ERRORS as exc:
                raise self._unavailable(exc) from exc
            return self._open(key, blob)
        if cache.due():
            cache.establish()
        value, token = cache.lookup(key)
        if value is not None:
            return value
        try:     # GET and PTTL in one round trip: an entry never outlives its record
            blob, pttl = self._client.pipeline(transaction=False).get(key).pttl(key).execute()
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        value = self._open(key, blob)
        if value is not None:
            cache.keep(key, value, int(pttl), token)
        return value

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
        finally:
            self._forget(key)

    def claim_once(self, token: str, ttl: float) -> bool:
        """True the first time ``token`` is claimed within ``ttl`` seconds (SET NX PX), by
        any process sharing this Redis."""
        try:
            return bool(self._client.set(self._once_key(token), b"1", px=_ttl_ms(ttl) or 1,
                                         nx=True))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def release(self, token: str) -> None:
        """Give up a claim (DEL): only the holder calls this, before the claim's TTL ends."""
        try:
            self._client.delete(self._once_key(token))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def revoke(self, key: str, ttl: float, *, owner: str = "") -> None:
        """Remember for ``ttl`` seconds, for every process, that session ``key`` has ended
        (``owner`` is not needed: Redis keeps every mark until its TTL)."""
        ms = _ttl_ms(ttl)
        if ms is None:
            return
        try:
            self._client.set(self._revoked_key(key), b"1", px=ms)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def is_revoked(self, key: str) -> bool:
        try:
            return bool(self._client.exists(self._revoked_key(key)))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def save_indexed(self, session_id: str, value: bytes, ttl: float,
                     index: Collection[str], keep: float) -> bool:
        """:meth:`save` of a new record, with its key added to a set per name of ``index``
        (its provider session, its subject) in the same pipeline; each set then lives
        ``keep`` seconds (the longest a session lives)."""
        key = self.redis_key(session_id)
        ms = _ttl_ms(ttl)
        if ms is None:
            return False
        blob = self._seal(key, value)
        try:
            pipe = self._pipeline()
            self._index_commands(pipe, key, blob, ms, index=index,
                                index_ms=_ttl_ms(keep) or ms)
            pipe.execute()
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._forget(key)
        return True

    def end_indexed(self, name: str) -> int:
        """Delete every session record listed under ``name`` (key by key: on a Redis Cluster
        they live on other slots), then take them off the list; how many records there
        were. The list is read, not emptied, first: if a delete fails the provider's retry
        still finds every record."""
        set_key = self._index_key(name)
        members: list[str] = []
        try:
            members = self._session_members(self._client.zrange(set_key, 0, -1))
            if not members:
                return 0
            pipe = self._client.pipeline(transaction=False)
            for member in members:
                pipe.delete(member)
            pipe.zrem(set_key, *members)
            deleted = pipe.execute()
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._forget(*members)
        return sum(int(n) for n in deleted[:-1])

    def mark_ended(self, name: str, at: float, ttl: float) -> None:
        """Remember for ``ttl`` seconds, for every process, that the sessions of ``name``
        created up to ``at`` have ended (the cookie store)."""
        ms = _ttl_ms(ttl)
        if ms is None:
            return
        self._run(_MARK_LATEST, [self._ended_key(name)], [repr(float(at)), ms])

    def is_ended(self, key: str, names: Collection[str], created: float) -> bool:
        """:meth:`is_revoked` of ``key`` or a :meth:`mark_ended` of one of ``names`` made at
        or after ``created``, in one MGET (one round trip; on a Cluster one per node)."""
        keys = [self._revoked_key(key), *(self._ended_key(n) for n in names)]
        try:
            values = self._marks_get(keys)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return _ended(values, created)

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
        finally:
            self._forget(key)

    def delete(self, session_id: str) -> None:
        key = self.redis_key(session_id)
        try:
            self._client.delete(key)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._forget(key)

    # -- asyncio --------------------------------------------------------------------------

    async def aload(self, session_id: str) -> bytes | None:
        """:meth:`load` for asyncio."""
        key = self.redis_key(session_id)
        cache = self._cache
        if cache is None:
            try:
                blob = await self._async_client().get(key)
            except _STORE_ERRORS as exc:
                raise self._unavailable(exc) from exc
            return self._open(key, blob)
        if cache.due():
            await asyncio.to_thread(cache.establish)
        value, token = cache.lookup(key)
        if value is not None:
            return value
        try:
            pipe = self._async_client().pipeline(transaction=False)
            blob, pttl = await pipe.get(key).pttl(key).execute()
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        value = self._open(key, blob)
        if value is not None:
            cache.keep(key, value, int(pttl), token)
        return value

    def _forget(self, *keys: str) -> None:
        """This instance wrote or deleted ``keys``: out of the local cache at once."""
        if self._cache is not None:
            for key in keys:
                self._cache.forget(key)

    @property
    def cache(self) -> TrackedCache | None:
        """The local cache of session records (None: every read goes to Redis)."""
        return self._cache

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
        finally:
            self._forget(key)

    async def aclaim_once(self, token: str, ttl: float) -> bool:
        """:meth:`claim_once` for asyncio."""
        try:
            return bool(await self._async_client().set(
                self._once_key(token), b"1", px=_ttl_ms(ttl) or 1, nx=True))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def arelease(self, token: str) -> None:
        """:meth:`release` for asyncio."""
        try:
            await self._async_client().delete(self._once_key(token))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def arevoke(self, key: str, ttl: float, *, owner: str = "") -> None:
        """:meth:`revoke` for asyncio."""
        ms = _ttl_ms(ttl)
        if ms is None:
            return
        try:
            await self._async_client().set(self._revoked_key(key), b"1", px=ms)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def ais_revoked(self, key: str) -> bool:
        """:meth:`is_revoked` for asyncio."""
        try:
            return bool(await self._async_client().exists(self._revoked_key(key)))
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def asave_indexed(self, session_id: str, value: bytes, ttl: float,
                            index: Collection[str], keep: float) -> bool:
        """:meth:`save_indexed` for asyncio."""
        key = self.redis_key(session_id)
        ms = _ttl_ms(ttl)
        if ms is None:
            return False
        blob = self._seal(key, value)
        try:
            pipe = self._apipeline()
            self._index_commands(pipe, key, blob, ms, index=index,
                                index_ms=_ttl_ms(keep) or ms)
            await pipe.execute()
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._forget(key)
        return True

    async def aend_indexed(self, name: str) -> int:
        """:meth:`end_indexed` for asyncio."""
        set_key = self._index_key(name)
        client = self._async_client()
        members: list[str] = []
        try:
            members = self._session_members(await client.zrange(set_key, 0, -1))
            if not members:
                return 0
            pipe = client.pipeline(transaction=False)
            for member in members:
                pipe.delete(member)
            pipe.zrem(set_key, *members)
            deleted = await pipe.execute()
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._forget(*members)
        return sum(int(n) for n in deleted[:-1])

    async def amark_ended(self, name: str, at: float, ttl: float) -> None:
        """:meth:`mark_ended` for asyncio."""
        ms = _ttl_ms(ttl)
        if ms is None:
            return
        await self._arun(_MARK_LATEST, [self._ended_key(name)], [repr(float(at)), ms])

    async def ais_ended(self, key: str, names: Collection[str], created: float) -> bool:
        """:meth:`is_ended` for asyncio."""
        keys = [self._revoked_key(key), *(self._ended_key(n) for n in names)]
        client = self._async_client()
        try:
            if self._topology.kind == "cluster":
                values = await client.mget_nonatomic(keys)
            else:
                values = await client.mget(keys)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return _ended(values, created)

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
        finally:
            self._forget(key)

    async def adelete(self, session_id: str) -> None:
        """:meth:`delete` for asyncio."""
        key = self.redis_key(session_id)
        try:
            await self._async_client().delete(key)
        except _STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._forget(key)


def _ended(values: object, created: float) -> bool:
    """Whether an MGET of (revocation mark, ended marks...) ends a session made at
    ``created``: the first is set, or one of the others holds a time at or after it."""
    if not isinstance(values, list) or not values:
        return True      # an answer we do not understand: fail closed
    if values[0] is not None:
        return True
    for value in values[1:]:
        if value is None:
            continue
        try:
            at = float(value)
        except (TypeError, ValueError):
            return True
        if created <= at:
            return True
    return False
