"""The Redis engine of the rate limiter (see :mod:`secure_mw.guards.ratelimit`): GCRA in
one atomic Lua script per decision, shared by every process using the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from secure_mw._redis import RedisClients, Script, tag
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.ratelimit import (
    EPSILON,
    Limits,
    RateDecision,
    _decide,
    _Plan,
    _plan,
    _prepare,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["RedisRateLimiter"]

# KEYS: one per limit. ARGV: cost, epsilon, then count and period of each limit.
# Returns {1 if it passed else 0, the seconds owed per limit before the request, ...}; the
# debts travel as '%.17g' strings (a Lua number in a reply would be truncated to an integer)
# and round-trip exactly, so the client derives the same decision as MemoryRateLimiter.
_GCRA: Final = Script("""\
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local eps = tonumber(ARGV[2])
local tats = redis.call('MGET', unpack(KEYS))
local reply = {1}
local owed = {}
for i = 1, #KEYS do
  local period = tonumber(ARGV[2 * i + 2])
  local interval = period / tonumber(ARGV[2 * i + 1])
  local debt = 0
  if tats[i] then debt = math.max(tonumber(tats[i]) - now, 0) end
  owed[i] = debt + cost * interval
  if period - owed[i] + eps < 0 then reply[1] = 0 end
  reply[i + 1] = string.format('%.17g', debt)
end
if reply[1] == 1 and cost > 0 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.17g', now + owed[i]),
               'PX', math.max(1, math.ceil(owed[i] * 1000)))
  end
end
return reply
""")


class RedisRateLimiter(RedisClients):
    """GCRA in Redis, shared by every process using the server; see the module docstring.

    ``client``/``aclient`` are used as given (and left open by :meth:`close`).
    """

    __slots__ = ()

    def __init__(self, url: str, *, prefix: str = "secure_mw:", socket_timeout: float = 0.5,
                 client: redis.Redis | None = None,
                 aclient: redis.asyncio.Redis | None = None) -> None:
        super().__init__(url, what="rate limit store", prefix=prefix,
                         socket_timeout=socket_timeout, client=client, aclient=aclient)

    def redis_keys(self, key: str, limits: Limits) -> list[str]:
        """The Redis keys of ``key`` under ``limits``: one per limit, one hash tag."""
        if not isinstance(key, str):
            raise TypeError("a rate limit key must be a string")
        return self._keys(key, len(_plan(limits).limits))

    def _keys(self, key: str, count: int) -> list[str]:
        base = f"{self._prefix}rl:{{{tag(key)}}}:"
        return [f"{base}{i}" for i in range(count)]

    def _args(self, plan: _Plan, cost: int) -> list[str | int]:
        return [cost, repr(EPSILON), *plan.args]

    @staticmethod
    def _decision(plan: _Plan, cost: int, reply: Any) -> RateDecision:
        try:
            allowed = int(reply[0]) == 1
            debts = [float(x) for x in reply[1:]]
        except (TypeError, ValueError, IndexError):
            raise StoreUnavailable("rate limit store gave an unexpected reply") from None
        if len(debts) != len(plan.limits):
            raise StoreUnavailable("rate limit store gave an unexpected reply")
        return _decide(plan, cost, debts, allowed)

    def hit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision:
        """Count a request of ``cost`` for ``key``: one EVALSHA round trip."""
        plan = _prepare(key, limits, cost)
        reply = self._run(_GCRA, self._keys(key, len(plan.limits)), self._args(plan, cost))
        return self._decision(plan, cost, reply)

    async def ahit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision:
        """:meth:`hit` for asyncio."""
        plan = _prepare(key, limits, cost)
        reply = await self._arun(_GCRA, self._keys(key, len(plan.limits)),
                                 self._args(plan, cost))
        return self._decision(plan, cost, reply)
