"""Rate limiting with GCRA (the generic cell rate algorithm), in memory or in Redis.

::

    limiter = MemoryRateLimiter()                    # or RedisRateLimiter("redis://...")
    limits = parse_rate_limit("20/second;600/minute")
    decision = limiter.hit(f"rule0:ip:{client_ip}", limits)   # await limiter.ahit(...)
    if not decision.allowed:
        ...  # 429 with rate_headers(decision)

Both limiters expose the same synchronous and asynchronous methods, so a request flow can
yield ``Op(limiter.hit, limiter.ahit, key, limits)`` and run under WSGI or ASGI alike.

**The algorithm.** A limit of ``n`` per ``period`` seconds has an emission interval
``T = period / n``. For each key and limit the state is one number, the *theoretical arrival
time* (TAT): the moment at which the key's bucket would be empty again. A request of cost
``c`` at time ``now`` owes ``d = max(TAT - now, 0)`` seconds already and would owe
``d + c·T``; it passes when that is at most ``period`` (so ``n`` requests may arrive at once,
then one every ``T`` seconds), and the TAT becomes ``now + d + c·T``. A rule with several
limits (``"20/second;600/minute"``) passes only when every limit passes, and a refused
request consumes nothing from any of them. One decision costs O(number of limits) time and
the state is a float per limit: no timestamps lists, no window counters.

**The decision** (:class:`RateDecision`) reports the limit that decided: when allowed, the
one with the least quota left (ties: the one that takes longest to refill); when refused,
the one that makes the client wait longest. ``remaining`` is the quota left after this
request (when refused: the quota available now, less than the cost), ``reset_after`` the
seconds until that limit's full quota is back, ``retry_after`` the seconds until the same
request would pass (0 when allowed).

**Keys** must name the rule as well as the client (``"login:ip:203.0.113.9"``): the state
of a key is per limit *index*, so two rules sharing a key would share state.

**Memory** (:class:`MemoryRateLimiter`): one dict in least-recently-used order per key
prefix (the text before the first ``:``, the rule: ``"r0"``), each bounded by ``max_keys``,
so a flood of distinct keys in one rule (user names, say) cannot evict another rule's state;
each decision also drops the least recently used key of its prefix if its state has fully
drained, and the least recently used key is evicted when the dict is full (that key starts
afresh: size ``max_keys`` above the number of keys active within the longest period).
Thread-safe; the clock is injectable.

**Redis** (:class:`RedisRateLimiter`): one atomic Lua script per decision, sent with EVALSHA
(EVAL when the server answers NOSCRIPT, which also caches the script again). The script
reads the server's clock (``TIME``), so every application process shares one time base;
scripts replicate by their effects, the only mode of Redis 7 and the default since 5.0
(the minimum version). Commands per decision: ``TIME``, one ``MGET`` of the rule's keys
and, when the request passes with a cost above zero, one ``SET ... PX`` per limit — 2 + k
for a rule of k limits (2 when refused). The keys of one decision are
``{prefix}rl:{<tag>}:<index>`` with ``<tag> = base64url(SHA-256(key))[:22]``: the client's
key never reaches Redis and all keys of one decision share one hash tag, so one Cluster
slot. Each key expires when its state has drained (``PX`` = the seconds the limit is owed,
at most its period), so Redis memory is bounded by the active keys. Errors raise
:class:`~secure_mw.errors.StoreUnavailable` naming only ``host:port``; whether a rule then
fails open or closed is the caller's choice.

**Headers** (:func:`rate_headers`): ``RateLimit-Policy`` and ``RateLimit`` as in
draft-ietf-httpapi-ratelimit-headers-11 (May 2026), plus ``Retry-After`` when refused.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from secure_mw.errors import ConfigError, ConfigProblem, StoreUnavailable

if TYPE_CHECKING:
    from secure_mw.guards.ratelimit_redis import RedisRateLimiter
    from secure_mw.guards.ratelimit_sqlite import SqliteRateLimiter
    from secure_mw.settings import RateLimitsSettings, SqliteSettings

__all__ = [
    "MemoryRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "limiter_from_settings",
    "rate_headers",
    "rate_lines",
]

_log = logging.getLogger("secure_mw.guards.ratelimit")

Limits = tuple[tuple[int, float], ...]

#: Slack in seconds for the float arithmetic: a request may pass this much early. The stored
#: times are absolute (seconds since the epoch in Redis), whose doubles resolve ~0.24 µs.
EPSILON: Final = 1e-6
#: Key prefixes with a table of their own in the memory limiter.
_MAX_PREFIXES: Final = 256


# ---------------------------------------------------------------------------------------------
# the decision


class RateDecision(NamedTuple):
    """The outcome of one :meth:`~MemoryRateLimiter.hit`; see the module docstring.

    ``policy`` is the deciding limit as a RateLimit-Policy list member
    (``"20/1s";q=20;w=1``); ``policies`` are all limits of the rule, in order. Immutable
    (a named tuple: built on every request, so it must cost nothing to make).
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    policy: str
    policies: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Limit:
    count: int
    period: float
    interval: float
    window: int          # whole seconds, for the headers
    policy: str          # '"20/1s";q=20;w=1'


@dataclass(frozen=True)
class _Plan:
    limits: tuple[_Limit, ...]
    policies: tuple[str, ...]
    smallest: int        # the least count: no cost above it can ever pass
    zeros: tuple[float, ...]  # the debts of a key never seen
    args: tuple[str, ...]  # the script's per-limit arguments: count, period, ...


@functools.lru_cache(maxsize=512)
def _plan(limits: Limits) -> _Plan:
    """Validate ``limits`` once and precompute what each decision needs (cached)."""
    if not isinstance(limits, tuple) or not limits:
        raise ValueError("limits must be a non-empty tuple of (count, period seconds) pairs")
    out = []
    args: list[str] = []
    for item in limits:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ValueError("each limit must be a (count, period seconds) pair")
        count, period = item
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError("a limit's count must be a positive integer")
        if (isinstance(period, bool) or not isinstance(period, int | float)
                or not math.isfinite(period) or period <= 0):
            raise ValueError("a limit's period must be a positive number of seconds")
        period = float(period)
        window = max(1, math.ceil(period))
        policy = f'"{count}/{window}s";q={count};w={window}'
        out.append(_Limit(count, period, period / count, window, policy))
        args += (str(count), repr(period))
    return _Plan(tuple(out), tuple(x.policy for x in out), min(x.count for x in out),
                 (0.0,) * len(out), tuple(args))


def plan_of(limits: Limits) -> _Plan:
    """``limits`` validated and prepared once, for :meth:`MemoryRateLimiter.hit_planned`
    (ValueError when they are not valid limits)."""
    return _prepare("", limits, 1)


def _prepare(key: object, limits: Limits, cost: object) -> _Plan:
    if not isinstance(key, str):
        raise TypeError("a rate limit key must be a string")
    try:
        plan = _plan(limits)
    except TypeError:  # unhashable: a list given for the tuple
        raise ValueError("limits must be a tuple of (count, period seconds) pairs") from None
    if type(cost) is not int or cost < 0:  # not a bool either
        raise ValueError("cost must be a non-negative integer")
    if cost > plan.smallest:
        raise ValueError(f"cost {cost} exceeds the limit of {plan.smallest}: it could never pass")
    return plan


def _passes(limit: _Limit, owed: float) -> bool:
    """Whether a limit owing ``owed`` seconds (after the request) lets it through."""
    return limit.period - owed + EPSILON >= 0


def _decide(plan: _Plan, cost: int, debts: Sequence[float], allowed: bool) -> RateDecision:
    """The decision for ``debts`` (seconds owed per limit *before* the request).

    Shared by both limiters: the Redis script returns the debts it read and whether it
    wrote, and the same arithmetic as :class:`MemoryRateLimiter` turns them into a decision.
    """
    chosen: _Limit | None = None
    remaining = 0
    reset = retry = 0.0
    for i, limit in enumerate(plan.limits):
        debt = debts[i]
        owed = debt + cost * limit.interval
        if allowed:
            # the least quota left; on a tie, the longest to refill
            left = math.floor((limit.period - owed + EPSILON) / limit.interval)
            if chosen is None or left < remaining or (left == remaining and owed > reset):
                chosen, remaining, reset = limit, left, owed
        elif not _passes(limit, owed) and (chosen is None or owed - limit.period > retry):
            # the longest wait among the limits that refuse
            chosen, retry, reset = limit, owed - limit.period, debt
            remaining = math.floor((limit.period - debt + EPSILON) / limit.interval)
    if chosen is None:  # refused, yet no limit refuses: a reply this code did not produce
        raise StoreUnavailable("rate limit store gave an inconsistent reply")
    return RateDecision(allowed, chosen.count, min(max(remaining, 0), chosen.count), reset,
                        retry, chosen.policy, plan.policies)


@functools.lru_cache(maxsize=1024)
def _policy_texts(policies: tuple[str, ...], policy: str) -> tuple[str, str, bytes]:
    """The RateLimit-Policy value of a rule (as text and as bytes) and the name of its
    deciding limit: the same few per rule, made once."""
    joined = ", ".join(policies or (policy,))
    return joined, policy[: policy.index(";")], joined.encode("ascii")


def rate_headers(decision: RateDecision) -> list[tuple[str, str]]:
    """Response headers for ``decision``, per draft-ietf-httpapi-ratelimit-headers-11:

    * ``RateLimit-Policy``: every limit of the rule as a Structured Fields list member,
      ``"20/1s";q=20;w=1, "600/60s";q=600;w=60`` (``q`` quota, ``w`` window in seconds);
    * ``RateLimit``: the deciding limit, ``"20/1s";r=0;t=1`` — ``r`` the quota available,
      ``t`` the seconds until the full quota is back (when refused: until the request would
      pass, the same as ``Retry-After``, which the draft says must not come before ``t``);
    * ``Retry-After`` (RFC 9110, whole seconds rounded up, at least 1) when refused.
    """
    return list(_rate_forms(decision)[0])


def rate_lines(decision: RateDecision) -> list[tuple[bytes, bytes]]:
    """:func:`rate_headers` as raw header lines (ASGI), lower-case names."""
    return list(_rate_forms(decision)[1])


_Forms = tuple[tuple[tuple[str, str], ...], tuple[tuple[bytes, bytes], ...]]


def _rate_forms(decision: RateDecision) -> _Forms:
    """:func:`rate_headers` and :func:`rate_lines` of ``decision``: the same few per rule
    and quota left, kept in a bounded memo."""
    policies = decision.policies
    if policies.__class__ is not tuple:     # a limiter of one's own that gave a list
        policies = tuple(policies)
    t = _seconds(decision)
    remaining = decision.remaining      # (its type too: a limiter of one's own may say 3.0)
    key = (decision.policy, policies, remaining.__class__, remaining, t, decision.allowed)
    forms = _FORMS.get(key)
    if forms is None:
        text, name, encoded = _policy_texts(policies, decision.policy)
        current = f"{name};r={remaining};t={t}"
        headers: tuple[tuple[str, str], ...] = (("RateLimit-Policy", text),
                                                ("RateLimit", current))
        lines: tuple[tuple[bytes, bytes], ...] = ((b"ratelimit-policy", encoded),
                                                  (b"ratelimit", current.encode("ascii")))
        if not decision.allowed:
            headers += (("Retry-After", str(t)),)
            lines += ((b"retry-after", str(t).encode("ascii")),)
        forms = headers, lines
        if len(_FORMS) >= 4096:
            _FORMS.clear()
        _FORMS[key] = forms
    return forms


_FORMS: dict[tuple[Any, ...], _Forms] = {}


def _seconds(decision: RateDecision) -> int:
    """``t`` of the RateLimit header: the whole seconds until the full quota is back (when
    refused: until the request would pass, at least 1)."""
    if decision.allowed:
        return math.ceil(max(decision.reset_after - EPSILON, 0.0))
    return max(1, math.ceil(decision.retry_after - EPSILON))


def key_prefix(key: str) -> str:
    """The part of a limiter key before its first ``:`` (a rule's: ``r0``), which names
    the table :class:`MemoryRateLimiter` keeps it in; ``""`` for a key without one."""
    return key.partition(":")[0] if ":" in key else ""


#: RateDecision's own constructor, without the Python-level ``__new__`` a named tuple adds
#: (the hot path builds one per request; every field given, in order).
_new_decision = tuple.__new__


class RateLimiter(Protocol):
    """What a middleware needs of a limiter."""

    def hit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision: ...

    async def ahit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision: ...


# ---------------------------------------------------------------------------------------------
# memory


class MemoryRateLimiter:
    """GCRA in this process; see the module docstring."""

    __slots__ = ("_clock", "_lock", "_max_keys", "_tables")
    nonblocking = True   # never waits on I/O: called inline under ASGI

    def __init__(self, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys <= 0:
            raise ValueError("max_keys must be a positive integer")
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key prefix -> (key -> the TAT of each limit, least recently used first)
        self._tables: dict[str, OrderedDict[str, list[float]]] = {}

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def __repr__(self) -> str:
        return f"MemoryRateLimiter(keys={len(self)}, max_keys={self._max_keys} per prefix)"

    def hit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision:
        """Count a request of ``cost`` against every limit of ``limits`` for ``key``."""
        return self.hit_planned(key, _prepare(key, limits, cost), cost)

    def hit_planned(self, key: str, plan: _Plan, cost: int = 1) -> RateDecision:
        """:meth:`hit` with limits validated once, at start-up (:func:`plan_of`): what a
        rate-limit layer calls for every request."""
        rule = plan.limits
        prefix = key_prefix(key)
        if len(rule) == 1:
            return self._hit_one(key, prefix, plan, cost)
        with self._lock:
            state = self._tables.get(prefix)
            if state is None:
                state = self._table(prefix)
            now = self._clock()
            tats = state.get(key)
            debts: Sequence[float]
            if tats is None:
                debts = plan.zeros
            else:
                state.move_to_end(key)
                debts = [tat - now if tat > now else 0.0 for tat in tats]
                if len(debts) != len(rule):  # the key was used with another rule
                    debts = (debts + list(plan.zeros))[: len(rule)]
            allowed = True
            for limit, debt in zip(rule, debts):  # noqa: B905 - same length
                if limit.period - (debt + cost * limit.interval) + EPSILON < 0:  # _passes
                    allowed = False
                    break
            if allowed and cost:
                if tats is None and len(state) >= self._max_keys:
                    state.popitem(last=False)
                state[key] = [now + debt + cost * limit.interval
                              for limit, debt in zip(rule, debts)]  # noqa: B905
            # drop the least recently used key once it has drained: O(1) per decision
            for oldest in state:
                if max(state[oldest]) <= now:
                    del state[oldest]
                break
        return _decide(plan, cost, debts, allowed)

    def _hit_one(self, key: str, prefix: str, plan: _Plan, cost: int) -> RateDecision:
        """:meth:`hit_planned` for a rule of one limit (the usual rule): the same decision,
        with no loop over limits."""
        limit = plan.limits[0]
        with self._lock:
            state = self._tables.get(prefix)
            if state is None:
                state = self._table(prefix)
            now = self._clock()
            tats = state.get(key)
            if tats is None:
                debt = 0.0
            else:
                state.move_to_end(key)
                tat = tats[0]   # (a key used with another rule's limits: its first one)
                debt = tat - now if tat > now else 0.0
            owed = debt + cost * limit.interval
            allowed = limit.period - owed + EPSILON >= 0    # _passes
            if allowed and cost:
                if tats is None and len(state) >= self._max_keys:
                    state.popitem(last=False)
                state[key] = [now + owed]
            for oldest in state:    # drop the least recently used key once it has drained
                if max(state[oldest]) <= now:
                    del state[oldest]
                break
        if allowed:    # _decide's arithmetic for one limit (the quotient is >= 0 here)
            left = int((limit.period - owed + EPSILON) / limit.interval)
            count = limit.count
            return _new_decision(RateDecision, (True, count, left if left < count else count,
                                                owed, 0.0, limit.policy, plan.policies))
        return _decide(plan, cost, (debt,), False)

    def _table(self, prefix: str) -> OrderedDict[str, list[float]]:
        """The table of keys under ``prefix``, made on first use (held lock)."""
        if len(self._tables) >= _MAX_PREFIXES:   # prefixes are rules: a few
            prefix = "\x00"                      # the rest share one table
        return self._tables.setdefault(prefix, OrderedDict())

    async def ahit(self, key: str, limits: Limits, cost: int = 1) -> RateDecision:
        """:meth:`hit` for asyncio (no I/O: the lock is held for microseconds)."""
        return self.hit(key, limits, cost)


def limiter_from_settings(settings: RateLimitsSettings, *, prefix: str = "secure_mw:",
                          redis_url: str | None = None, sqlite: SqliteSettings | None = None
                          ) -> MemoryRateLimiter | RedisRateLimiter | SqliteRateLimiter:
    """The limiter ``rate_limits.store`` names: ``redis`` at ``redis_url`` (else
    ``rate_limits.redis_url``) with keys under ``prefix`` (an application passes
    ``session.redis_key_prefix``: one prefix for every key it writes); ``sqlite`` in the
    file of ``sqlite`` (``[sqlite]``), also when the store is not named and that file is."""
    store = settings.store
    if sqlite is not None and sqlite.path and not settings.store_explicit:
        store = "sqlite"
    if store == "sqlite":
        if sqlite is None or not sqlite.path:
            raise ConfigError([ConfigProblem("sqlite.path",
                                             "required when rate_limits.store = 'sqlite'")])
        from secure_mw._sqlite import database_from_settings
        from secure_mw.guards.ratelimit_sqlite import SqliteRateLimiter

        return SqliteRateLimiter(database_from_settings(sqlite))
    if settings.store == "redis":
        url = redis_url or settings.redis_url
        if not url:
            raise ConfigError([ConfigProblem("rate_limits.redis_url",
                                             "required when rate_limits.store = 'redis'")])
        from secure_mw.guards.ratelimit_redis import RedisRateLimiter

        return RedisRateLimiter(url, prefix=prefix)
    return MemoryRateLimiter()


def __getattr__(name: str) -> Any:
    # The Redis engine lives in its own module (redis-py is an optional dependency); it is
    # imported when first named here, with a message naming the extra when redis is missing.
    if name in ("RedisRateLimiter", "_GCRA"):
        from secure_mw.guards import ratelimit_redis

        return getattr(ratelimit_redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
