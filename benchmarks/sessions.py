"""Per-request cost of the OIDC session middleware on a warm authenticated request.

In-process, no HTTP server: each request calls the ASGI app directly (a prepared scope,
copied per call because the middleware writes into it; a no-op receive and send) inside one
asyncio loop, or the WSGI app with a prepared environ and a no-op start_response.

  asgi-bare         bare Starlette app, one route returning a small PlainTextResponse  baseline
  memory            secure_mw.asgi.OIDCSessionMiddleware, memory store, fixed clock
  memory-clock      the same with the real clock (steady state: a touch at most every 30 s)
  memory-anon       memory store, no cookie, require_login=False (the anonymous path)
  cookie            cookie store: the whole session encrypted in the cookie, fixed clock
  redis             Redis store against a real redis-server (tests.servers.RedisServer)
  redis-get         one redis.asyncio GET round trip, nothing else    reference for `redis`
  starlette         Starlette's SessionMiddleware (signed cookie, itsdangerous)  the usual recipe
  starlette+base    the same plus a no-op BaseHTTPMiddleware
  wsgi-bare         a bare WSGI callable                                   WSGI baseline
  wsgi-memory       secure_mw.wsgi.OIDCSessionMiddleware, memory store, fixed clock

Every case is timed in the same repeat loop, in alternating order, so machine noise hits
them alike; each figure is the median of the repeats and every ratio is against a baseline
measured in the same run. The redis case is skipped when redis-server is not installed.

Run from the repository root::

    python -m benchmarks.sessions          # or: python benchmarks/sessions.py
    python -m benchmarks.sessions --quick  # a smoke test of a few seconds
    python -m benchmarks.sessions --profile   # also: where a warm request spends its time
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import json
import os
import pstats
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itsdangerous
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import secure_mw.asgi
import secure_mw.wsgi
from secure_mw import Settings
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie

BUDGET_US = 20.0   # "our whole stack must add no more than ~20 us to a warm request"
CLAIMS = {"sub": "alice", "email": "alice@example.com", "groups": ["staff", "admins"]}
STARLETTE_SECRET = "benchmark-secret-key"  # a throwaway local key

Timed = Callable[[int], float]   # runs n requests, returns the seconds they took


@dataclass
class Case:
    key: str
    label: str
    run: Timed
    baseline: str | None = None   # the case the overhead and ratio are against


# -- requests -----------------------------------------------------------------------------

BROWSER_HEADERS: list[tuple[str, str]] = [
    ("host", "app.example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-GB,en;q=0.7"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "same-origin"),
    ("connection", "keep-alive"),
]


def asgi_scope(cookie: str | None) -> dict[str, Any]:
    """What uvicorn hands the app for a browser's GET / (built once per case)."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in BROWSER_HEADERS]
    if cookie is not None:
        headers.append((b"cookie", f"lang=en; {cookie}".encode("latin-1")))
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 51234),
        "scheme": "https", "method": "GET", "root_path": "", "path": "/", "raw_path": b"/",
        "query_string": b"", "headers": headers,
    }


def wsgi_environ(cookie: str | None) -> dict[str, Any]:
    """What a WSGI server (gunicorn-like) hands the app for the same request."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "RAW_URI": "/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_SOFTWARE": "gunicorn/23.0.0",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "51234", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https", "wsgi.input": None, "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in BROWSER_HEADERS:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if cookie is not None:
        environ["HTTP_COOKIE"] = f"lang=en; {cookie}"
    return environ


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: dict[str, Any]) -> None:
    return None


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                    ) -> Callable[[bytes], object]:
    return _write


def _write(data: bytes) -> None:
    return None


def asgi_runner(loop: asyncio.AbstractEventLoop, app: Any, scope: dict[str, Any]) -> Timed:
    async def many(n: int) -> float:
        copy, receive, send = scope.copy, _receive, _send
        start = time.perf_counter()
        for _ in range(n):
            await app(copy(), receive, send)
        return time.perf_counter() - start

    return lambda n: loop.run_until_complete(many(n))


def wsgi_runner(app: Any, environ: dict[str, Any]) -> Timed:
    def many(n: int) -> float:
        copy, start_response = environ.copy, _start_response
        start = time.perf_counter()
        for _ in range(n):
            for _chunk in app(copy(), start_response):
                pass
        return time.perf_counter() - start

    return many


# -- checks: every case must serve the request we think it serves -------------------------

def check_asgi(loop: asyncio.AbstractEventLoop, app: Any, scope: dict[str, Any], *,
               user: str | None, set_cookie: bool = False,
               starlette_user: str | None = None) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    copy = scope.copy()
    loop.run_until_complete(app(copy, _receive, send))
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200, start
    cookies = [v for k, v in start["headers"] if k.lower() == b"set-cookie"]
    assert bool(cookies) == set_cookie, cookies
    if "secure_mw.identity" in copy or user is not None:
        identity = copy.get("secure_mw.identity")
        assert (identity.sub if identity else None) == user, identity
    if starlette_user is not None:   # Starlette's SessionMiddleware accepted the cookie
        assert copy["session"]["user"]["sub"] == starlette_user, copy.get("session")


def check_wsgi(app: Any, environ: dict[str, Any], *, user: str | None) -> None:
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                       ) -> Callable[[bytes], object]:
        seen.append(status)
        assert not any(k.lower() == "set-cookie" for k, _ in headers), headers
        return _write

    copy = environ.copy()
    body = b"".join(app(copy, start_response))
    assert seen == ["200 OK"] and body == b"ok", (seen, body)
    identity = copy.get("secure_mw.identity")
    assert (identity.sub if identity else None) == user, identity


# -- the cases ----------------------------------------------------------------------------

def settings_for(store: str, keys: list[str], redis_url: str | None = None) -> Settings:
    session: dict[str, Any] = {"store": store}
    if redis_url:
        session["redis_url"] = redis_url
    return Settings.from_mapping({
        "oidc": {"issuer": "https://idp.example.com", "client_id": "bench",
                 "client_secret": "bench-secret"},
        "keys": {"encryption_keys": keys},
        "session": session,
    }, environ={})


async def _hello(request: Request) -> Response:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", _hello)])


class _NoOp(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        return response


def _wsgi_hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", "2")])
    return [b"ok"]


def starlette_cookie() -> str:
    """A cookie as Starlette's SessionMiddleware writes it, holding the same claims."""
    signer = itsdangerous.TimestampSigner(STARLETTE_SECRET)
    data = signer.sign(base64.b64encode(json.dumps({"user": CLAIMS}).encode()))
    return f"session={data.decode()}"


class Bench:
    """Builds every case once (with its check), keeps what must be closed at the end."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.keys = [KeyRing.new_key_text()]
        self.cases: list[Case] = []
        self.notes: list[str] = []
        self.redis_server: Any = None
        self.redis_store: Any = None
        self.redis_commands: float | None = None
        self._redis_client: Any = None

    def add(self, key: str, label: str, run: Timed, baseline: str | None = None) -> None:
        self.cases.append(Case(key, label, run, baseline))

    def _memory(self, clock: Callable[[], float], *, require_login: bool = True,
                wsgi: bool = False) -> tuple[Any, str]:
        settings = settings_for("memory", self.keys)
        store = MemorySessionStore(clock=clock)
        flavour = secure_mw.wsgi if wsgi else secure_mw.asgi
        mw = flavour.OIDCSessionMiddleware(
            _wsgi_hello if wsgi else starlette_app(), settings=settings, store=store,
            clock=clock, require_login=require_login)
        return mw, session_cookie(settings, CLAIMS, store=store)

    def build(self, *, with_redis: bool) -> None:
        loop = self.loop
        now = time.time()

        def fixed() -> float:
            return now

        bare = starlette_app()
        scope = asgi_scope(None)
        check_asgi(loop, bare, scope, user=None)
        self.add("asgi-bare", "bare Starlette app (baseline)", asgi_runner(loop, bare, scope))

        mw, cookie = self._memory(fixed)
        scope = asgi_scope(cookie)
        check_asgi(loop, mw, scope, user="alice")
        self.add("memory", "secure_mw memory store, fixed clock",
                 asgi_runner(loop, mw, scope), "asgi-bare")

        mw, cookie = self._memory(time.time)
        scope = asgi_scope(cookie)
        check_asgi(loop, mw, scope, user="alice")
        self.add("memory-clock", "secure_mw memory store, real clock",
                 asgi_runner(loop, mw, scope), "asgi-bare")

        mw, _cookie = self._memory(fixed, require_login=False)
        scope = asgi_scope(None)
        check_asgi(loop, mw, scope, user=None)
        self.add("memory-anon", "secure_mw memory store, anonymous (no cookie)",
                 asgi_runner(loop, mw, scope), "asgi-bare")

        settings = settings_for("cookie", self.keys)
        mw = secure_mw.asgi.OIDCSessionMiddleware(starlette_app(), settings=settings,
                                                  clock=fixed)
        cookie = session_cookie(settings, CLAIMS)
        scope = asgi_scope(cookie)
        check_asgi(loop, mw, scope, user="alice")
        self.notes.append(f"cookie store: the session cookie is {len(cookie)} characters")
        self.add("cookie", "secure_mw cookie store, fixed clock",
                 asgi_runner(loop, mw, scope), "asgi-bare")

        # The whole stack protect() builds: the Host allow-list, headers, client address, a
        # rate limit by address (memory), the redirect guard, the session (memory store).
        settings = Settings.from_mapping({
            "oidc": {"issuer": "https://idp.example.com", "client_id": "bench",
                     "client_secret": "bench-secret"},
            "keys": {"encryption_keys": self.keys},
            "rate_limits": {"rules": [{"key": "ip", "limit": "1000000/second"}]},
            "server": {"allowed_hosts": ["app.example.com"]},
        }, environ={})
        store = MemorySessionStore(clock=fixed)
        stack = secure_mw.asgi.protect(starlette_app(), settings, store=store, clock=fixed)
        scope = asgi_scope(session_cookie(settings, CLAIMS, store=store))
        check_asgi(loop, stack, scope, user="alice")
        self.add("stack", "protect(): every layer incl. signed assertion",
                 asgi_runner(loop, stack, scope), "asgi-bare")

        if with_redis:
            self._build_redis(fixed)

        scope = asgi_scope(starlette_cookie())
        app = SessionMiddleware(starlette_app(), secret_key=STARLETTE_SECRET)
        check_asgi(loop, app, scope, user=None, starlette_user="alice")
        self.add("starlette", "Starlette SessionMiddleware (signed cookie)",
                 asgi_runner(loop, app, scope), "asgi-bare")
        app = _NoOp(SessionMiddleware(starlette_app(), secret_key=STARLETTE_SECRET))
        check_asgi(loop, app, scope, user=None, starlette_user="alice")
        self.add("starlette+base", "  + a no-op BaseHTTPMiddleware",
                 asgi_runner(loop, app, scope), "asgi-bare")

        environ = wsgi_environ(None)
        check_wsgi(_wsgi_hello, environ, user=None)
        self.add("wsgi-bare", "bare WSGI callable (WSGI baseline)",
                 wsgi_runner(_wsgi_hello, environ))
        mw, cookie = self._memory(fixed, wsgi=True)
        environ = wsgi_environ(cookie)
        check_wsgi(mw, environ, user="alice")
        self.add("wsgi-memory", "secure_mw WSGI, memory store, fixed clock",
                 wsgi_runner(mw, environ), "wsgi-bare")

    def _build_redis(self, clock: Callable[[], float]) -> None:
        try:
            from tests.servers import RedisServer

            server = RedisServer()
            self.redis_server = server    # stopped by close() even if start() fails
            server.start()
        except BaseException as exc:   # pytest.skip() (no redis-server) is a BaseException
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.notes.append(f"redis cases skipped: {exc}")
            return
        import redis.asyncio

        from secure_mw.session.redis_store import RedisSessionStore

        settings = settings_for("redis", self.keys, redis_url=server.url)
        store = RedisSessionStore.from_settings(settings.session, KeyRing.from_settings(
            settings.keys))
        self.redis_store = store
        mw = secure_mw.asgi.OIDCSessionMiddleware(starlette_app(), settings=settings,
                                                  store=store, clock=clock)
        cookie = session_cookie(settings, CLAIMS, store=store)
        scope = asgi_scope(cookie)
        check_asgi(self.loop, mw, scope, user="alice")
        self.redis_commands = self._commands_per_request(mw, scope)
        self.add("redis", "secure_mw Redis store, fixed clock",
                 asgi_runner(self.loop, mw, scope), "asgi-bare")

        client = redis.asyncio.Redis.from_url(server.url)
        self._redis_client = client
        key = store.redis_key(cookie.rsplit("=", 1)[1])

        async def gets(n: int) -> float:
            get = client.get
            start = time.perf_counter()
            for _ in range(n):
                await get(key)
            return time.perf_counter() - start

        # The same GET through the store's own asyncio client (its socket timeout, retry and
        # health-check options): what the store pays for the round trip itself.
        async def loop_client() -> Any:
            return store._async_client()   # the client of this loop, made on first use

        store_client = self.loop.run_until_complete(loop_client())

        async def store_gets(n: int) -> float:
            get = store_client.get
            start = time.perf_counter()
            for _ in range(n):
                await get(key)
            return time.perf_counter() - start

        assert self.loop.run_until_complete(client.get(key))
        self.add("redis-get", "one plain redis.asyncio GET (reference)",
                 lambda n: self.loop.run_until_complete(gets(n)))
        self.add("redis-get-store", "  the same GET via the store's client",
                 lambda n: self.loop.run_until_complete(store_gets(n)), "redis-get")

    def _commands_per_request(self, mw: Any, scope: dict[str, Any]) -> float:
        """Redis commands the server processed per request (INFO's own counted out)."""
        import redis

        probe = redis.Redis.from_url(self.redis_server.url)
        try:
            def count() -> int:
                return int(probe.info("stats")["total_commands_processed"])

            idle = count()
            idle = count() - idle            # what one INFO adds to the counter
            before = count()
            requests = 200
            asgi_runner(self.loop, mw, scope)(requests)
            return (count() - before - idle) / requests
        finally:
            probe.close()

    def close(self) -> None:
        try:
            if self.redis_store is not None:
                self.loop.run_until_complete(self.redis_store.aclose())
                self.redis_store.close()
            if self._redis_client is not None:
                self.loop.run_until_complete(self._redis_client.aclose())
        finally:
            if self.redis_server is not None:
                self.redis_server.stop()
                shutil.rmtree(self.redis_server.dir, ignore_errors=True)
            self.loop.close()


# -- measuring ----------------------------------------------------------------------------

def calibrate(run: Timed, run_seconds: float) -> int:
    """Requests per timed run so that one run takes about ``run_seconds``."""
    number = 16
    while True:
        elapsed = run(number)
        if elapsed >= run_seconds / 4 or number >= 1 << 20:
            return max(1, int(number * run_seconds / max(elapsed, 1e-9)))
        number *= 4


def measure(cases: list[Case], repeats: int, run_seconds: float) -> dict[str, float]:
    """Median seconds per request of each case; cases alternate within a repeat."""
    for case in cases:               # warm-up: caches, lazily built stacks, connections
        case.run(200)
    numbers = {c.key: calibrate(c.run, run_seconds) for c in cases}
    samples: dict[str, list[float]] = {c.key: [] for c in cases}
    for r in range(repeats):
        order = cases if r % 2 == 0 else cases[::-1]
        for case in order:
            n = numbers[case.key]
            samples[case.key].append(case.run(n) / n)
    return {key: statistics.median(times) for key, times in samples.items()}


def profile(case: Case, requests: int, top: int = 10) -> None:
    """cProfile of warm requests of ``case``: the ``top`` secure_mw functions by
    cumulative time, per request."""
    package = str(Path(secure_mw.asgi.__file__).resolve().parent.parent) + os.sep
    case.run(500)
    profiler = cProfile.Profile()
    profiler.enable()
    case.run(requests)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        if filename.startswith(package):
            rows.append((cumtime, tottime, ncalls, f"{filename[len(package):]}:{line}({func})"))
    rows.sort(reverse=True)
    print()
    print(f"profile of {case.key!r}: {requests} warm requests under cProfile, secure_mw "
          f"functions by cumulative time, per request (the profiler inflates every figure; "
          f"a coroutine or generator counts one call per resumption)")
    print(f"  {'cum us':>8}{'own us':>8}{'calls':>7}  function")
    for cumtime, tottime, ncalls, name in rows[:top]:
        print(f"  {cumtime / requests * 1e6:>8.2f}{tottime / requests * 1e6:>8.2f}"
              f"{ncalls / requests:>7.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="timed runs per case")
    parser.add_argument("--run-ms", type=float, default=40.0, help="length of one timed run")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run (5 repeats of 5 ms)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis cases")
    parser.add_argument("--profile", nargs="*", metavar="CASE",
                        help="also profile warm requests of these cases with cProfile "
                             "(default: memory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms = 5, 5.0

    began = time.perf_counter()
    bench = Bench()
    try:
        bench.build(with_redis=not args.no_redis)
        print(f"secure_mw session benchmark: in-process warm GET /, median of {args.repeats} "
              f"interleaved runs of ~{args.run_ms:g} ms; Python {sys.version.split()[0]}")
        sec = measure(bench.cases, args.repeats, args.run_ms / 1000)
        us = {key: s * 1e6 for key, s in sec.items()}
        print()
        print(f"  {'case':16}{'config':46}{'us/req':>9}{'+us':>9}{'ratio':>8}")
        for case in bench.cases:
            line = f"  {case.key:16}{case.label:46}{us[case.key]:>9.2f}"
            if case.baseline is not None:
                base = us[case.baseline]
                line += f"{us[case.key] - base:>9.2f}{us[case.key] / base:>7.2f}x"
            print(line)
        print()
        over = us["memory"] - us["asgi-bare"]
        verdict = "within" if over <= BUDGET_US else "OVER"
        print(f"  memory store adds {over:.1f} us to a warm authenticated request "
              f"(ASGI; budget {BUDGET_US:g} us for the whole stack: {verdict})")
        print(f"  WSGI: memory store adds {us['wsgi-memory'] - us['wsgi-bare']:.1f} us")
        print(f"  cookie store adds {us['cookie'] - us['asgi-bare']:.1f} us "
              f"(decrypted once per cookie value, then cached)")
        if "redis" in us:
            extra = us["redis"] - us["asgi-bare"] - us["redis-get"]
            print(f"  redis store = bare + one GET round trip ({us['redis-get']:.1f} us) "
                  f"+ {extra:.1f} us; {bench.redis_commands:.2f} Redis commands per request")
        print(f"  Starlette SessionMiddleware adds {us['starlette'] - us['asgi-bare']:.1f} us; "
              f"with a no-op BaseHTTPMiddleware {us['starlette+base'] - us['asgi-bare']:.1f} us")
        for note in bench.notes:
            print(f"  {note}")
        if args.profile is not None:
            for key in args.profile or ["memory"]:
                case = next((c for c in bench.cases if c.key == key), None)
                if case is None:
                    print(f"\n  no case {key!r} to profile")
                    continue
                profile(case, 2000 if args.quick else 20000)
        print(f"\n  ({time.perf_counter() - began:.1f} s)")
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
