"""The WSGI side of :mod:`secure_mw.metrics` and :mod:`secure_mw.health` (see the ASGI
module of the same name)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from time import perf_counter

from secure_mw import _observe
from secure_mw._driver import run_sync
from secure_mw.health import HealthCheck
from secure_mw.metrics import Observer
from secure_mw.wsgi._io import Environ, StartResponse, WSGIApp, view_of
from secure_mw.wsgi._layer import Layer, Verdict

__all__ = ["AppTimerMiddleware", "HealthMiddleware", "ObserveMiddleware"]


class ObserveMiddleware:
    fusable = True     # ``protect()`` fuses the layers inside it
    """Outermost: one observation per request, until the app's iterable is returned (the
    body a server iterates afterwards is neither the app's time nor ours)."""

    def __init__(self, app: WSGIApp, *, observer: Observer) -> None:
        self.app = app
        self.observer = observer

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen = self.observer.begin()
        token = _observe.current.set(seen)
        start = perf_counter()
        error: BaseException | None = None
        try:
            return self.app(environ, start_response)
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = perf_counter() - start
            _observe.current.reset(token)
            self.observer.finish(seen, elapsed, error)


class AppTimerMiddleware:
    fusable = True
    """Innermost: the wrapped app's own time, which is not secure_mw's."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen = _observe.current.get()
        if seen is None:
            return self.app(environ, start_response)
        seen.reached_app = True
        start = perf_counter()
        try:
            return self.app(environ, start_response)
        finally:
            seen.app_seconds += perf_counter() - start


class HealthMiddleware(Layer):
    """Answers ``GET {auth_prefix}health`` (see :mod:`secure_mw.health`); one check at a
    time, the other threads wait for its answer."""

    def __init__(self, app: WSGIApp, *, check: HealthCheck) -> None:
        self.app = app
        self.check = check
        self._lock = threading.Lock()

    def enter(self, environ: Environ) -> Verdict:
        if not environ.get("PATH_INFO", "").endswith("health"):
            return None
        view = view_of(environ)
        if not self.check.applies(view.method, view.route_path):
            return None
        reply = self.check.cached()
        if reply is None:
            with self._lock:
                reply = self.check.cached()
                if reply is None:
                    reply = run_sync(self.check.check())
        return reply
