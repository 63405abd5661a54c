"""The Redis engine of regulation (see :mod:`secure_mw.guards.regulation`): bans and
failure counts shared by every process using the server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from secure_mw._redis import STORE_ERRORS, RedisClients, Script, tag
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.regulation import _MODES, Ban, _latest, _Policy

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from secure_mw.settings import RegulationSettings

__all__ = ["RedisRegulator"]

# KEYS: the subject's ban key and failures key. ARGV: max_retries, find_time, ban_time
# (seconds). Returns {1, until} when this failure started a ban, {0, until} when a ban was
# already in force (nothing recorded), {0, ''} when the failure was counted.
_FAIL: Final = Script("""\
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local max_retries = tonumber(ARGV[1])
local find_time = tonumber(ARGV[2])
local ban_time = tonumber(ARGV[3])
local banned = redis.call('GET', KEYS[1])
if banned then return {0, banned} end
local count = 1
local horizon = now - find_time
if max_retries > 1 then
  for _, at in ipairs(redis.call('LRANGE', KEYS[2], 0, max_retries - 2)) do
    if tonumber(at) > horizon then count = count + 1 end
  end
end
if count >= max_retries then
  local ban_until = string.format('%.17g', now + ban_time)
  redis.call('SET', KEYS[1], ban_until, 'PX', math.max(1, math.ceil(ban_time * 1000)))
  redis.call('DEL', KEYS[2])
  return {1, ban_until}
end
redis.call('LPUSH', KEYS[2], string.format('%.17g', now))
redis.call('LTRIM', KEYS[2], 0, max_retries - 2)
redis.call('PEXPIRE', KEYS[2], math.max(1, math.ceil(find_time * 1000)))
return {0, ''}
""")


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class RedisRegulator(RedisClients):
    """Regulation in Redis, shared by every process using the server; see the module
    docstring. ``client``/``aclient`` are used as given (and left open by :meth:`close`)."""

    __slots__ = ("_policy",)

    def __init__(self, url: str, *, max_retries: int = 3, find_time: float = 120.0,
                 ban_time: float = 300.0, modes: Sequence[str] = _MODES,
                 prefix: str = "secure_mw:", socket_timeout: float = 0.5,
                 client: redis.Redis | None = None,
                 aclient: redis.asyncio.Redis | None = None) -> None:
        self._policy = _Policy(max_retries=max_retries, find_time=find_time,
                               ban_time=ban_time, modes=modes)
        super().__init__(url, what="regulation store", prefix=prefix,
                         socket_timeout=socket_timeout, client=client, aclient=aclient)

    @classmethod
    def from_settings(cls, settings: RegulationSettings, url: str,
                      **kwargs: Any) -> RedisRegulator:
        return cls(url, max_retries=settings.max_retries, find_time=settings.find_time,
                   ban_time=settings.ban_time, modes=settings.modes, **kwargs)

    def redis_keys(self, kind: str, subject: str) -> tuple[str, str]:
        """The ban key and the failures key of a normalized subject (one hash tag)."""
        base = f"{self._prefix}reg:{{{tag(f'{kind}:{subject}')}}}"
        return f"{base}:ban", f"{base}:fails"

    def _args(self) -> list[str | int]:
        p = self._policy
        return [p.max_retries, repr(p.find_time), repr(p.ban_time)]

    def _caused(self, kind: str, reply: Any) -> Ban | None:
        try:
            if int(reply[0]) != 1:
                return None
            return Ban(kind, float(_text(reply[1])))
        except (TypeError, ValueError, IndexError, UnicodeDecodeError):
            raise StoreUnavailable("regulation store gave an unexpected reply") from None

    @staticmethod
    def _bans(subjects: Sequence[tuple[str, str]], values: Sequence[Any]) -> Ban | None:
        try:
            return _latest(Ban(kind, float(_text(value)))
                           for (kind, _), value in zip(subjects, values, strict=True)
                           if value is not None)
        except (TypeError, ValueError, UnicodeDecodeError):
            raise StoreUnavailable("regulation store gave an unexpected reply") from None

    def check(self, *, user: str | None, ip: str | None) -> Ban | None:
        """The ban in force for the user or the address (the longer of two), or None: one
        round trip."""
        subjects = self._policy.subjects(user, ip)
        if not subjects:
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            for kind, subject in subjects:
                pipe.get(self.redis_keys(kind, subject)[0])
            values = pipe.execute()
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._bans(subjects, values)

    def fail(self, *, user: str | None, ip: str | None) -> Ban | None:
        """Record a failed attempt; the ban it caused (the longer of two), or None."""
        bans = [self._caused(kind, self._run(_FAIL, self.redis_keys(kind, subject),
                                             self._args()))
                for kind, subject in self._policy.subjects(user, ip)]
        return _latest(b for b in bans if b is not None)

    def succeed(self, *, user: str | None, ip: str | None) -> None:
        """Clear the user's failures (not the address's; a ban stays)."""
        for kind, subject in self._policy.subjects(user, None):
            try:
                self._client.delete(self.redis_keys(kind, subject)[1])
            except STORE_ERRORS as exc:
                raise self._unavailable(exc) from exc

    async def acheck(self, *, user: str | None, ip: str | None) -> Ban | None:
        """:meth:`check` for asyncio."""
        subjects = self._policy.subjects(user, ip)
        if not subjects:
            return None
        try:
            pipe = self._async_client().pipeline(transaction=False)
            for kind, subject in subjects:
                pipe.get(self.redis_keys(kind, subject)[0])
            values = await pipe.execute()
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return self._bans(subjects, values)

    async def afail(self, *, user: str | None, ip: str | None) -> Ban | None:
        """:meth:`fail` for asyncio."""
        bans = [self._caused(kind, await self._arun(_FAIL, self.redis_keys(kind, subject),
                                                    self._args()))
                for kind, subject in self._policy.subjects(user, ip)]
        return _latest(b for b in bans if b is not None)

    async def asucceed(self, *, user: str | None, ip: str | None) -> None:
        """:meth:`succeed` for asyncio."""
        for kind, subject in self._policy.subjects(user, None):
            try:
                await self._async_client().delete(self.redis_keys(kind, subject)[1])
            except STORE_ERRORS as exc:
                raise self._unavailable(exc) from exc
