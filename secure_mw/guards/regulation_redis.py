"""The Redis engine of regulation (see :mod:`secure_mw.guards.regulation`): budgets, failures
and bans shared by every process using the server, one atomic Lua script per subject."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from secure_mw._redis import STORE_ERRORS, RedisClients, Script, tag
from secure_mw.errors import StoreUnavailable
from secure_mw.guards.regulation import (
    BANNED,
    BUSY,
    MODES,
    STARTED,
    Ban,
    BanEntry,
    Refusal,
    Reservation,
    Subject,
    _entry,
    _latest,
    _Policy,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from secure_mw.settings import RegulationSettings

__all__ = ["RedisRegulator"]

# One subject's hash: b (ban end), bl (its label), f (failure times, comma-separated), fu
# (when they are forgotten), p:<id> (a reservation and its time). KEYS: the hash. ARGV: op
# (reserve, fail, succeed, release), now ('' for the server's TIME), limit, find_time,
# ban_time, reservation id, 1 when a success clears failures, the subject's label.
# The steps are those of regulation._step; the hash is rewritten (HSET first, so a server
# over maxmemory refuses it) and expires when nothing in it matters any more.
# Returns {code, ban end or ''}.
_SCRIPT: Final = Script("""\
local key = KEYS[1]
local op = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[2])
end
local limit = tonumber(ARGV[3])
local ft = tonumber(ARGV[4])
local bt = tonumber(ARGV[5])
local rid = ARGV[6]
local clear = ARGV[7] == '1'
local label = ARGV[8]
local function fmt(x) return string.format('%.17g', x) end
local ban, bl, forget, fstr = 0, '', 0, nil
local live, npend = {}, 0
local horizon = now - ft
local h = redis.call('HGETALL', key)
for i = 1, #h, 2 do
  local k, v = h[i], h[i + 1]
  if k == 'b' then ban = tonumber(v)
  elseif k == 'bl' then bl = v
  elseif k == 'f' then fstr = v
  elseif k == 'fu' then forget = tonumber(v)
  elseif string.sub(k, 1, 2) == 'p:' then
    local at = tonumber(v)
    if at > horizon then live[string.sub(k, 3)] = at; npend = npend + 1 end
  end
end
local banned = ban > now
if not banned then ban = 0; bl = '' end
local fails = {}
if fstr and forget > now then
  for at in string.gmatch(fstr, '[^,]+') do
    local x = tonumber(at)
    if x > horizon then fails[#fails + 1] = x end
  end
end
local code, value = 0, ''
if op == 'reserve' then
  if banned then code = 2; value = fmt(ban)
  elseif #fails + npend >= limit then code = 1
  else live[rid] = now end
else
  live[rid] = nil
  if op == 'fail' then
    if not banned then
      fails[#fails + 1] = now
      if #fails >= limit then
        ban = now + bt; bl = label; fails = {}; forget = 0
        code = 3; value = fmt(ban)
      elseif limit <= 2 then forget = now + ft
      else forget = now + math.min(ft, ft * #fails / (limit - 1)) end
    end
  elseif op == 'succeed' and clear then fails = {} end
end
local fields, deadline = {}, 0
if ban > now then
  fields[#fields + 1] = 'b'; fields[#fields + 1] = fmt(ban)
  fields[#fields + 1] = 'bl'; fields[#fields + 1] = bl
  deadline = ban
end
if #fails > 0 then
  local parts = {}
  for i, x in ipairs(fails) do parts[i] = fmt(x) end
  fields[#fields + 1] = 'f'; fields[#fields + 1] = table.concat(parts, ',')
  fields[#fields + 1] = 'fu'; fields[#fields + 1] = fmt(forget)
  deadline = math.max(deadline, forget)
end
for id, at in pairs(live) do
  fields[#fields + 1] = 'p:' .. id; fields[#fields + 1] = fmt(at)
  deadline = math.max(deadline, at + ft)
end
if #fields > 0 and deadline > now then
  -- HSET first: under maxmemory it is refused before anything is written
  redis.call('HSET', key, unpack(fields))
  local kept = {}
  for i = 1, #fields, 2 do kept[fields[i]] = true end
  for i = 1, #h, 2 do
    if not kept[h[i]] then redis.call('HDEL', key, h[i]) end
  end
  redis.call('PEXPIRE', key, math.max(1, math.ceil((deadline - now) * 1000)))
elseif #h > 0 then
  redis.call('DEL', key)
end
return {code, value}
""")

# KEYS: a subject's hash. ARGV: a user label or '', an address label or ''. Ends the ban
# (and forgets the failures) when its label names either; returns 1 when it did.
_LIFT: Final = Script("""\
local bl = redis.call('HGET', KEYS[1], 'bl')
if not bl then return 0 end
local _, u, i = string.match(bl, '^([^|]*)|([^|]*)|([^|]*)$')
if (ARGV[1] ~= '' and u == ARGV[1]) or (ARGV[2] ~= '' and i == ARGV[2]) then
  redis.call('HDEL', KEYS[1], 'b', 'bl', 'f', 'fu')
  if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
  return 1
end
return 0
""")

_GLOB = re.compile(r"([*?\[\]\\])")


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class RedisRegulator(RedisClients):
    """Regulation in Redis, shared by every process using the server; see the module
    docstring. Times are the server's clock unless ``clock`` is given (tests).
    ``client``/``aclient`` are used as given (and left open by :meth:`close`)."""

    __slots__ = ("_now", "_policy")
    nonblocking = False
    shared = True       # every process sees the same bans

    def __init__(self, url: str, *, max_retries: int = 3, find_time: float = 120.0,
                 ban_time: float = 300.0, modes: Sequence[str] = MODES,
                 user_max_retries: int = 10, ip_max_retries: int = 20,
                 prefix: str = "secure_mw:", socket_timeout: float = 0.5,
                 clock: Callable[[], float] | None = None,
                 client: redis.Redis | None = None,
                 aclient: redis.asyncio.Redis | None = None) -> None:
        self._policy = _Policy(max_retries=max_retries, find_time=find_time,
                               ban_time=ban_time, modes=modes,
                               user_max_retries=user_max_retries,
                               ip_max_retries=ip_max_retries)
        self._now = clock
        super().__init__(url, what="regulation store", prefix=prefix,
                         socket_timeout=socket_timeout, client=client, aclient=aclient)

    @classmethod
    def from_settings(cls, settings: RegulationSettings, url: str,
                      **kwargs: Any) -> RedisRegulator:
        return cls(url, max_retries=settings.max_retries, find_time=settings.find_time,
                   ban_time=settings.ban_time, modes=settings.modes,
                   user_max_retries=settings.user_max_retries,
                   ip_max_retries=settings.ip_max_retries, **kwargs)

    @property
    def policy(self) -> _Policy:
        return self._policy

    def redis_key(self, subject: Subject) -> str:
        """The hash of a subject (its own hash tag: one Cluster slot per script)."""
        return f"{self._prefix}reg:{{{tag(f'{subject.kind}:{subject.key}')}}}"

    def _args(self, op: str, rid: str, subject: Subject) -> list[str | int]:
        p = self._policy
        now = "" if self._now is None else repr(float(self._now()))
        return [op, now, subject.limit, repr(p.find_time), repr(p.ban_time), rid,
                1 if subject.clears_on_success else 0, subject.label]

    @staticmethod
    def _reply(reply: Any) -> tuple[int, float]:
        try:
            code = int(reply[0])
            value = _text(reply[1])
            return code, float(value) if value else 0.0
        except (TypeError, ValueError, IndexError, UnicodeDecodeError):
            raise StoreUnavailable("regulation store gave an unexpected reply") from None

    # -- synchronous ---------------------------------------------------------------------

    def _call(self, op: str, rid: str, subject: Subject) -> tuple[int, float]:
        return self._reply(self._run(_SCRIPT, [self.redis_key(subject)],
                                     self._args(op, rid, subject)))

    def reserve(self, *, user: str | None, ip: str | None,
                device: str | None = None,
                clears: bool = True) -> Reservation | Refusal:
        """Count an attempt before it is judged, one script per subject; when a later
        subject refuses, the earlier reservations are released."""
        reservation = Reservation(_new_id(),
                                  self._policy.subjects(user, ip, device, clears=clears))
        done: list[Subject] = []
        try:
            for subject in reservation.subjects:
                code, until = self._call("reserve", reservation.id, subject)
                if code in (BANNED, BUSY):
                    self._undo(reservation, done)
                    return Refusal(subject.kind, "banned" if code == BANNED else "busy",
                                   until if code == BANNED else None)
                done.append(subject)
        except StoreUnavailable:
            self._undo(reservation, done)
            raise
        return reservation

    def _undo(self, reservation: Reservation, done: list[Subject]) -> None:
        for subject in done:
            with contextlib.suppress(StoreUnavailable):   # else it expires with find_time
                self._call("release", reservation.id, subject)

    def _settle(self, op: str, reservation: Reservation) -> Ban | None:
        bans = []
        for subject in reservation.subjects:
            code, until = self._call(op, reservation.id, subject)
            if code == STARTED:
                bans.append(Ban(subject.kind, until))
        return _latest(bans)

    def fail(self, reservation: Reservation) -> Ban | None:
        """The attempt failed; the ban it started (the longest), or None."""
        return self._settle("fail", reservation)

    def succeed(self, reservation: Reservation) -> None:
        """The attempt succeeded (frees it, clears its user's failures)."""
        self._settle("succeed", reservation)

    def release(self, reservation: Reservation) -> None:
        """The attempt was not judged after all."""
        self._settle("release", reservation)

    # -- asyncio ----------------------------------------------------------------------------

    async def _acall(self, op: str, rid: str, subject: Subject) -> tuple[int, float]:
        return self._reply(await self._arun(_SCRIPT, [self.redis_key(subject)],
                                            self._args(op, rid, subject)))

    async def areserve(self, *, user: str | None, ip: str | None,
                       device: str | None = None,
                       clears: bool = True) -> Reservation | Refusal:
        """:meth:`reserve` for asyncio."""
        reservation = Reservation(_new_id(),
                                  self._policy.subjects(user, ip, device, clears=clears))
        done: list[Subject] = []
        try:
            for subject in reservation.subjects:
                code, until = await self._acall("reserve", reservation.id, subject)
                if code in (BANNED, BUSY):
                    await self._aundo(reservation, done)
                    return Refusal(subject.kind, "banned" if code == BANNED else "busy",
                                   until if code == BANNED else None)
                done.append(subject)
        except StoreUnavailable:
            await self._aundo(reservation, done)
            raise
        return reservation

    async def _aundo(self, reservation: Reservation, done: list[Subject]) -> None:
        for subject in done:
            with contextlib.suppress(StoreUnavailable):
                await self._acall("release", reservation.id, subject)

    async def _asettle(self, op: str, reservation: Reservation) -> Ban | None:
        bans = []
        for subject in reservation.subjects:
            code, until = await self._acall(op, reservation.id, subject)
            if code == STARTED:
                bans.append(Ban(subject.kind, until))
        return _latest(bans)

    async def afail(self, reservation: Reservation) -> Ban | None:
        """:meth:`fail` for asyncio."""
        return await self._asettle("fail", reservation)

    async def asucceed(self, reservation: Reservation) -> None:
        """:meth:`succeed` for asyncio."""
        await self._asettle("succeed", reservation)

    async def arelease(self, reservation: Reservation) -> None:
        """:meth:`release` for asyncio."""
        await self._asettle("release", reservation)

    # -- administration (the ``secure-mw bans`` command) -----------------------------------

    def _scan(self) -> list[str]:
        pattern = _GLOB.sub(r"\\\1", self._prefix) + "reg:{*}"
        try:
            return [_text(k) for k in self._client.scan_iter(match=pattern, count=1000)]
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _time(self) -> float:
        if self._now is not None:
            return float(self._now())
        try:
            seconds, micros = self._client.time()
        except STORE_ERRORS as exc:
            raise self._unavailable(exc) from exc
        return float(seconds) + float(micros) / 1_000_000

    def bans(self) -> list[BanEntry]:
        """Every ban in force under this prefix, soonest end first (SCAN, so it sees every
        process's bans)."""
        keys = self._scan()
        now = self._time()
        found: list[BanEntry] = []
        for start in range(0, len(keys), 500):
            batch = keys[start:start + 500]
            try:
                pipe = self._client.pipeline(transaction=False)
                for key in batch:
                    pipe.hmget(key, "b", "bl")
                rows = pipe.execute()
            except STORE_ERRORS as exc:
                raise self._unavailable(exc) from exc
            for until, ban_label in rows:
                if until is None or ban_label is None:
                    continue
                try:
                    end = float(_text(until))
                except (ValueError, UnicodeDecodeError):
                    continue
                entry = _entry(_text(ban_label), end)
                if entry is not None and end > now:
                    found.append(entry)
        return sorted(found, key=lambda e: (e.until, e.kind, e.user, e.ip))

    def lift(self, *, user: str | None = None, ip: str | None = None) -> int:
        """End every ban of ``user`` and/or ``ip`` (see the memory engine); the number
        lifted."""
        user_label, ip_label = _Policy.lift_labels(user, ip)
        if not user_label and not ip_label:
            return 0
        lifted = 0
        for key in self._scan():
            lifted += int(self._run(_LIFT, [key], [user_label, ip_label]) or 0)
        return lifted


def _new_id() -> str:
    return secrets.token_urlsafe(12)
