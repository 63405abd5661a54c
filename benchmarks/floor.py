"""A lower bound for the whole stack: one hand-written pass that does only the work of a warm
signed-in request, beside the stack that decides it, in one run.

The pass checks the Host, counts the request in the same in-memory limiter, finds the
session id in the Cookie header and its record in the same memory store, sets the identity,
adds a cached assertion header and sends the prepared security header lines with a fresh
nonce. It builds no request view, crosses no layers and skips every case a real request can
bring (refusals, audits, other cookies, forwarded addresses, query strings, redirects,
access rules): it is a measure of what is left once the shared machinery is gone, not a
product, and never serves anything but this benchmark::

    python -m benchmarks.floor
"""

from __future__ import annotations

import asyncio
import hmac
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sessions import Case, asgi_runner, asgi_scope, measure
from benchmarks.stack_apps import HOST, starlette_bare, starlette_full
from secure_mw.crypto import KeyRing
from secure_mw.guards.nonces import new_nonce
from secure_mw.identity import AuthScopes

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")


def hand_pass(full: Any, app: Any, clock: Any) -> Any:
    """The hand-written pass around ``app``, reading the parts ``full`` (protect()) built."""
    layers = {type(layer).__name__: layer for layer in full.layers}
    plan = layers["SecurityHeadersMiddleware"].headers._plan_for("/", True)
    assert plan.around is not None
    before, csp, parts, after = plan.around
    rate = layers["RateLimitMiddleware"].layer
    limiter, rule = rate.limiter, rate.rules[0]
    sessions = layers["SessionMiddleware"].core.sessions
    store, name = sessions.store, sessions.cookie_name + "="
    allowed = {HOST.encode()}
    header = layers["IdentityHeaderMiddleware"].name
    token = b"x" * 600                  # the size of a cached ES256 assertion

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        host = cookie = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value
            elif key == b"cookie":
                cookie = value
        if host not in allowed or cookie is None:
            raise RuntimeError("the hand-written pass serves the benchmark's request only")
        decision = limiter.hit_planned("r0:ip:" + scope["client"][0], rule.plan)
        line = (b"ratelimit", f'"x";r={decision.remaining};t=1'.encode())
        text = cookie.decode("latin-1")
        start = text.find(name)
        sid = text[start + len(name):].split(";", 1)[0]
        session = store.load(sid) if _SESSION_ID.fullmatch(sid) else None
        if session is None or not hmac.compare_digest(session.id, sid) or \
                session.expired_reason(clock(), 3600) is not None:
            raise RuntimeError("the hand-written pass serves a live session only")
        identity = session.identity()
        scope["user"] = identity
        scope["auth"] = AuthScopes.of(identity)
        scope["secure_mw.identity"] = identity
        scope["headers"] = [*scope["headers"], (header, token)]
        nonce = (b"'nonce-" + new_nonce().encode("ascii") + b"'").join(parts)

        async def add_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                lines = list(message["headers"])
                lines.extend(before)
                lines.append((csp, nonce))
                lines.extend(after)
                lines.append(line)
                message["headers"] = lines
            await send(message)

        await app(scope, receive, add_headers)

    return serve


def main() -> int:
    now = time.time()

    def clock() -> float:
        return now

    loop = asyncio.new_event_loop()
    full, cookie = starlette_full([KeyRing.new_key_text()], clock)
    scope = asgi_scope(cookie)
    cases = [
        Case("bare", "bare Starlette app (baseline)",
             asgi_runner(loop, starlette_bare(), scope), None),
        Case("hand", "the hand-written pass around it",
             asgi_runner(loop, hand_pass(full, starlette_bare(), clock), scope), "bare"),
        Case("full", "secure_mw protect() around it", asgi_runner(loop, full, scope), "bare"),
    ]
    us = {key: s * 1e6 for key, s in measure(cases, 15, 0.04).items()}
    for case in cases:
        added = "" if case.baseline is None else f"  +{us[case.key] - us['bare']:6.2f} us"
        print(f"  {case.label:40}{us[case.key]:8.2f} us/request{added}")
    print(f"  the stack adds {(us['full'] - us['bare']) / (us['hand'] - us['bare']):.1f}x "
          "what the hand-written pass adds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
