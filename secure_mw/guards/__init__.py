"""Guards: security headers, open-redirect guard, trusted client address, rate limiting,
regulation (brute-force bans) and enumeration-resistant login timing — framework-free cores
that the ASGI and WSGI middlewares call."""

from secure_mw.guards.clientaddr import ClientInfo, TrustedProxies
from secure_mw.guards.headers import SecurityHeaders
from secure_mw.guards.ratelimit import (
    MemoryRateLimiter,
    RateDecision,
    RedisRateLimiter,
    rate_headers,
)
from secure_mw.guards.redirect import RedirectPolicy, is_safe_redirect

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
