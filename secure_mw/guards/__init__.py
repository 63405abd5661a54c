"""Guards: security headers, open-redirect guard, trusted client address, rate limiting,
regulation (brute-force bans) and enumeration-resistant login timing — framework-free cores
that the ASGI and WSGI middlewares call."""

from typing import TYPE_CHECKING, Any

from secure_mw.guards.clientaddr import ClientInfo, TrustedProxies
from secure_mw.guards.headers import SecurityHeaders
from secure_mw.guards.ratelimit import MemoryRateLimiter, RateDecision, rate_headers
from secure_mw.guards.redirect import RedirectPolicy, is_safe_redirect

if TYPE_CHECKING:
    from secure_mw.guards.ratelimit_redis import RedisRateLimiter

__all__ = [
    "ClientInfo",
    "MemoryRateLimiter",
    "RateDecision",
    "RedirectPolicy",
    "RedisRateLimiter",
    "SecurityHeaders",
    "TrustedProxies",
    "is_safe_redirect",
    "rate_headers",
]


def __getattr__(name: str) -> Any:
    if name == "RedisRateLimiter":   # needs the redis extra: imported when first named
        from secure_mw.guards.ratelimit_redis import RedisRateLimiter

        return RedisRateLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
