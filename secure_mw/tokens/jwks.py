"""Pinned key sets (JWKS): static, or fetched from a URL and cached.

::

    keys = KeySet.from_file("jwks.json")                    # or KeySet.from_dict(mapping)
    keys = RemoteKeySet("https://idp.example/jwks.json")    # fetched lazily, cached
    key = keys.get_key(kid)            # or: await keys.aget_key(kid)

Selection is by exact ``kid`` string only; a token without a ``kid`` may use the set's key only
when the set holds exactly one. Keys that cannot verify a token are left out of the set (and
their reasons listed in :attr:`KeySet.ignored`): ``use`` other than ``sig``, ``key_ops``
without ``verify``, unsupported ``kty``/``crv``/``alg`` (so no symmetric ``oct`` key ever),
points not on the curve, short RSA moduli, and ``kid`` clashes between different keys.

:class:`RemoteKeySet` honours ``Cache-Control: max-age`` (bounded, default 5 minutes when
absent), refetches for an unknown ``kid`` at most once per cooldown, retries a failed fetch
after a short backoff (1 s, 2 s, 4 s … up to the cooldown), keeps serving the last good set
when a refetch fails or answers no usable key, and raises
:class:`~secure_mw.errors.StoreUnavailable` when it has no set at all, or when a ``kid`` is
not in the set it kept because the last fetch failed. Every fetch goes through
:mod:`secure_mw.outbound`. Use ``aget_key`` from async code: ``get_key`` blocks while it
fetches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from secure_mw import outbound
from secure_mw.errors import StoreUnavailable
from secure_mw.tokens.keys import VerifyingKey, loads_strict

__all__ = ["KeySet", "KeySource", "RemoteKeySet"]

_log = logging.getLogger("secure_mw.tokens")


class KeySource(Protocol):
    """Anything a verifier can look keys up in: :class:`KeySet` or :class:`RemoteKeySet`."""

    def get_key(self, kid: str | None) -> VerifyingKey | None: ...

    async def aget_key(self, kid: str | None) -> VerifyingKey | None: ...


class KeySet:
    """An immutable set of verifying keys, by ``kid``."""

    __slots__ = ("_keys", "ignored")

    def __init__(self, keys: Iterable[VerifyingKey] = (), *, ignored: Iterable[str] = ()) -> None:
        by_kid: dict[str, VerifyingKey] = {}
        clashes: set[str] = set()
        notes = list(ignored)
        for key in keys:
            other = by_kid.get(key.kid)
            if other is None and key.kid not in clashes:
                by_kid[key.kid] = key
            elif other is not None and other.thumbprint() == key.thumbprint():
                if other.algorithms != key.algorithms:  # same key listed twice: allow either alg
                    by_kid[key.kid] = VerifyingKey(
                        kid=key.kid,
                        algorithms=other.algorithms | key.algorithms,
                        public_key=other.public_key,
                    )
            else:  # two different keys claim one kid: trust neither
                by_kid.pop(key.kid, None)
                if key.kid not in clashes:
                    clashes.add(key.kid)
                    notes.append("kid used by two different keys")
        self._keys: dict[str, VerifyingKey] = by_kid
        #: Why keys were left out (one short line each; never key material).
        self.ignored: tuple[str, ...] = tuple(notes)

    @classmethod
    def from_dict(cls, jwks: Mapping[str, Any]) -> KeySet:
        """From a JWK Set object ``{"keys": [...]}``. Unusable keys are skipped, not fatal;
        a document that is not a JWK Set raises :class:`ValueError`."""
        entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(entries, list):
            raise ValueError("a JWK Set must be an object with a 'keys' list")
        keys: list[VerifyingKey] = []
        ignored: list[str] = []
        for index, jwk in enumerate(entries):
            try:
                keys.append(VerifyingKey.from_jwk(jwk))
            except (ValueError, TypeError, KeyError) as exc:
                ignored.append(f"keys[{index}]: {exc}")
        for note in ignored:
            _log.debug("JWKS key ignored: %s", note)
        return cls(keys, ignored=tuple(ignored))

    @classmethod
    def from_json(cls, data: str | bytes) -> KeySet:
        """From JSON text (strict: no duplicate members)."""
        return cls.from_dict(loads_strict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeySet:
        """From a JSON file holding a JWK Set."""
        with open(path, "rb") as handle:
            return cls.from_json(handle.read())

    def get_key(self, kid: str | None) -> VerifyingKey | None:
        """The key with exactly this ``kid``; for ``None`` the only key, if there is one."""
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid) if isinstance(kid, str) else None

    async def aget_key(self, kid: str | None) -> VerifyingKey | None:
        return self.get_key(kid)

    def to_dict(self) -> dict[str, Any]:
        """The public JWK Set."""
        return {"keys": [key.public_jwk() for key in self._keys.values()]}

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[VerifyingKey]:
        return iter(self._keys.values())

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"KeySet(kids={list(self._keys)!r})"


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a positive number of seconds")
    return float(value)


class RemoteKeySet:
    """A JWK Set fetched from ``url``, cached and refreshed with bounded effort.

    * freshness: ``Cache-Control: max-age`` minus ``Age``, clamped to ``[min_ttl, max_ttl]``;
      ``default_ttl`` when the response gives none; ``no-store``/``no-cache`` → ``min_ttl``.
    * an unknown ``kid`` refetches at most once per ``refetch_cooldown``. After a failed
      fetch (unreachable, garbage, or no usable key) the next may come after
      ``retry_backoff`` seconds, doubling with each failure in a row up to
      ``refetch_cooldown``. No request ever causes more than that.
    * a failed fetch keeps the last good set; with none it raises
      :class:`~secure_mw.errors.StoreUnavailable`, and so does a ``kid`` missing from a set
      kept after a failure (it may be a new key the broken endpoint did not show).

    ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = outbound.DEFAULT_TIMEOUT,
        max_bytes: int = 256 * 1024,
        default_ttl: float = 300.0,
        min_ttl: float = 60.0,
        max_ttl: float = 86400.0,
        refetch_cooldown: float = 60.0,
        retry_backoff: float = 1.0,
        allow_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        outbound.check_url(url, allow_http=allow_http)
        self.url = url
        self.timeout = _positive("timeout", timeout)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError("max_bytes must be a positive integer")
        self.max_bytes = max_bytes
        self.min_ttl = _positive("min_ttl", min_ttl)
        self.max_ttl = _positive("max_ttl", max_ttl)
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        self.default_ttl = min(max(_positive("default_ttl", default_ttl), self.min_ttl),
                               self.max_ttl)
        self.refetch_cooldown = _positive("refetch_cooldown", refetch_cooldown)
        self.retry_backoff = min(_positive("retry_backoff", retry_backoff),
                                 self.refetch_cooldown)
        self.allow_http = allow_http
        self._clock = clock
        self._keys: KeySet | None = None
        self._expires_at = -math.inf
        self._last_attempt: float | None = None
        self._failures = 0          # failed fetches in a row
        self._state_lock = threading.Lock()  # guards the fields above
        self._fetch_lock = threading.Lock()  # one synchronous fetch at a time
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"RemoteKeySet({self.url!r})"

    @property
    def key_set(self) -> KeySet | None:
        """The cached set (possibly stale), or ``None`` before the first successful fetch."""
        return self._keys

    # -- lookups --------------------------------------------------------------------------

    def get_key(self, kid: str | None) -> VerifyingKey | None:
        """The key for ``kid`` (see :meth:`KeySet.get_key`), fetching when needed (blocking)."""
        if self._needs_fetch(kid, self._clock()):
            with self._fetch_lock:  # wait for a fetch under way rather than start another
                if self._claim(kid):
                    self._fetch_claimed()
        return self._lookup(kid)

    async def aget_key(self, kid: str | None) -> VerifyingKey | None:
        """The key for ``kid``, fetching when needed without blocking the event loop."""
        await self._await_inflight()
        if self._claim(kid):
            await self._afetch_claimed()
        return self._lookup(kid)

    def refresh(self) -> KeySet:
        """Fetch now (ignoring cooldown); raise StoreUnavailable if that fails."""
        with self._state_lock:
            self._last_attempt = self._clock()
        with self._fetch_lock:
            self._fetch_claimed(raise_errors=True)
        return self._cached()

    async def arefresh(self) -> KeySet:
        """Async :meth:`refresh`."""
        with self._state_lock:
            self._last_attempt = self._clock()
        await self._afetch_claimed(raise_errors=True)
        return self._cached()

    # -- the pure bookkeeping ------------------------------------------------------------

    def _needs_fetch(self, kid: str | None, now: float) -> bool:
        """Whether the cached set cannot answer for ``kid`` at ``now`` (none, stale, no key)."""
        keys = self._keys
        return keys is None or now >= self._expires_at or keys.get_key(kid) is None

    def _may_fetch(self, kid: str | None, now: float) -> bool:
        """Whether a lookup for ``kid`` at ``now`` needs a fetch and the cooldown allows one."""
        last = self._last_attempt
        return self._needs_fetch(kid, now) and (
            last is None or now - last >= self._wait()
        )

    def _wait(self) -> float:
        """Seconds between fetches now: the cooldown, or the backoff after failures."""
        if not self._failures:
            return self.refetch_cooldown
        return min(self.retry_backoff * 2.0 ** min(self._failures - 1, 30),
                   self.refetch_cooldown)

    def _claim(self, kid: str | None) -> bool:
        """Atomically decide that this lookup fetches, recording the attempt."""
        now = self._clock()
        with self._state_lock:
            if not self._may_fetch(kid, now):
                return False
            self._last_attempt = now
            return True

    def _cached(self) -> KeySet:
        keys = self._keys
        if keys is None:
            raise StoreUnavailable("JWKS unavailable")
        return keys

    def _lookup(self, kid: str | None) -> VerifyingKey | None:
        key = self._cached().get_key(kid)
        if key is None and self._failures:
            raise StoreUnavailable("JWKS unavailable: the last fetch failed and the kept key "
                                   "set has no such key")
        return key

    def _ttl(self, headers: Mapping[str, str]) -> float:
        directives: dict[str, str] = {}
        for part in headers.get("cache-control", "").split(","):
            name, _, value = part.strip().partition("=")
            directives[name.strip().lower()] = value.strip().strip('"')
        if "no-store" in directives or "no-cache" in directives:
            ttl = self.min_ttl
        elif directives.get("max-age", "").isdecimal():
            age = headers.get("age", "").strip()
            # bounded integers: a 400-digit max-age must not become inf (and inf - inf NaN)
            max_age = int(directives["max-age"][:12])
            ttl = float(max_age - (int(age[:12]) if age.isdecimal() else 0))
        else:
            ttl = self.default_ttl
        return min(max(ttl, self.min_ttl), self.max_ttl)

    def _store(self, data: Any, headers: Mapping[str, str]) -> None:
        try:
            keys = KeySet.from_dict(data)
        except ValueError:
            raise StoreUnavailable("JWKS document is not a JWK Set") from None
        if not len(keys):      # an empty or all-unusable set must not replace a good one
            raise StoreUnavailable("JWKS document has no usable key")
        with self._state_lock:
            self._keys = keys
            self._expires_at = self._clock() + self._ttl(headers)
            self._failures = 0

    def _failed(self, exc: StoreUnavailable, raise_errors: bool) -> None:
        with self._state_lock:
            self._failures += 1
        _log.warning("JWKS fetch from %s failed: %s", outbound.host_of(self.url), exc)
        if raise_errors or self._keys is None:
            raise StoreUnavailable(f"JWKS unavailable: {exc}") from exc

    # -- I/O ------------------------------------------------------------------------------

    def _fetch_claimed(self, *, raise_errors: bool = False) -> None:
        try:
            data, headers = outbound.get_json(
                self.url, timeout=self.timeout, max_bytes=self.max_bytes,
                allow_http=self.allow_http,
            )
            self._store(data, headers)
        except StoreUnavailable as exc:
            self._failed(exc, raise_errors)

    async def _afetch_claimed(self, *, raise_errors: bool = False) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._inflight, self._inflight_loop = done, loop
        try:
            data, headers = await outbound.aget_json(
                self.url, timeout=self.timeout, max_bytes=self.max_bytes,
                allow_http=self.allow_http,
            )
            self._store(data, headers)
        except StoreUnavailable as exc:
            self._failed(exc, raise_errors)
        finally:
            done.set_result(None)
            if self._inflight is done:
                self._inflight = self._inflight_loop = None

    async def _await_inflight(self) -> None:
        """Wait for a fetch already under way on this event loop (no duplicate fetches)."""
        pending = self._inflight
        if pending is not None and self._inflight_loop is asyncio.get_running_loop():
            await asyncio.shield(pending)
