"""The Redis engine of TOTP replay protection (see :mod:`secure_mw.login.totp`)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from secure_mw._encoding import b64url_encode
from secure_mw._redis import STORE_ERRORS, RedisClients, ttl_ms
from secure_mw.login.totp import _check_claim

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisUsedCodes"]


class RedisUsedCodes(RedisClients):
    """Claimed (user, step) pairs in Redis, shared by every process using the server: one
    ``SET key 1 NX PX ttl`` per claim, the key ``{prefix}totp:<base64url(SHA-256(user))>:
    <step>``. Any Redis failure raises StoreUnavailable naming only ``host:port``.
    ``client``/``aclient`` are used as given (and left open by :meth:`close`)."""

    __slots__ = ()

    def __init__(self, url: str, *, prefix: str = "secure_mw:", socket_timeout: float = 0.5,
                 client: redis.Redis | None = None,
                 aclient: redis.asyncio.Redis | None = None) -> None:
        super().__init__(url, what="TOTP replay store", prefix=prefix,
                         socket_timeout=socket_timeout, client=client, aclient=aclient)

    def redis_key(self, username: str, step: int) -> str:
        digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).digest()
        return f"{self._prefix}totp:{b64url_encode(digest)}:{step}"

    def claim(self, username: str, step: int, ttl: float) -> bool:
        """True the first time (``username``, ``step``) is claimed within ``ttl`` seconds, by
        any process sharing this Redis."""
        _check_claim(username, step, ttl)
        try:
            return bool(self._client.set(self.redis_key(username, step), b"1",
                                         px=ttl_ms(ttl) or 1, nx=True))
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def aclaim(self, username: str, step: int, ttl: float) -> bool:
        """:meth:`claim` for asyncio."""
        _check_claim(username, step, ttl)
        try:
            return bool(await self._async_client().set(self.redis_key(username, step), b"1",
                                                       px=ttl_ms(ttl) or 1, nx=True))
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
