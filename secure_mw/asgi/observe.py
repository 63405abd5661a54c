"""The ASGI side of :mod:`secure_mw.metrics` and :mod:`secure_mw.health`: the outermost
layer that observes a request, the innermost that times the wrapped app, and the health
answer."""

from __future__ import annotations

import asyncio
from time import perf_counter

from secure_mw import _observe
from secure_mw._driver import run_async
from secure_mw.asgi._io import ASGIApp, Receive, Scope, Send, view_of
from secure_mw.asgi._layer import HTTP, Entered, Layer
from secure_mw.health import HealthCheck
from secure_mw.http import Reply
from secure_mw.metrics import Observer

__all__ = ["AppTimerMiddleware", "HealthMiddleware", "ObserveMiddleware"]


class ObserveMiddleware:
    """Outermost: one observation per HTTP request or WebSocket connection; what secure_mw
    added (the time outside the app) is measured when it ends."""

    fusable = True     # ``protect()`` fuses the layers inside it

    def __init__(self, app: ASGIApp, *, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        seen = self.observer.begin()
        token = _observe.current.set(seen)
        start = perf_counter()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = perf_counter() - start
            _observe.current.reset(token)
            self.observer.finish(seen, elapsed, error)


class AppTimerMiddleware:
    """Innermost: the wrapped app's own time, which is not secure_mw's."""

    fusable = True

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = _observe.current.get()
        if seen is None:
            await self.app(scope, receive, send)
            return
        seen.reached_app = True
        start = perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            seen.app_seconds += perf_counter() - start


class HealthMiddleware(Layer):
    """Answers ``GET {auth_prefix}health`` (see :mod:`secure_mw.health`); one check at a
    time per event loop, the others wait for its answer."""

    kinds = HTTP

    def __init__(self, app: ASGIApp, *, check: HealthCheck) -> None:
        self.app = app
        self.check = check
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        if not scope["path"].endswith("health"):
            return None
        view = view_of(scope)
        if not self.check.applies(view.method, view.route_path):
            return None
        return self._answer()

    async def _answer(self) -> Reply:
        reply = self.check.cached()
        if reply is not None:
            return reply
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            for old in [other for other in self._locks if other.is_closed()]:
                del self._locks[old]
            lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            reply = self.check.cached()
            if reply is None:
                reply = await run_async(self.check.check())
        return reply
