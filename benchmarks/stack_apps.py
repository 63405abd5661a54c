"""The apps benchmarks/stack.py serves under uvicorn and gunicorn (and calls in-process): a
bare Starlette app, a bare Flask app, each with secure_mw's whole ``protect()`` stack, and
the usual recipes a team assembles without secure_mw (Starlette: SessionMiddleware +
``secure`` headers + slowapi; Flask: its signed-cookie session + flask-talisman +
Flask-Limiter). Every app answers ``GET /`` (signed in) and ``GET /public`` (anonymous).

For a server process, ``BENCH_STACK`` names the app (``bare``, ``full``, ``recipe``) and
``BENCH_COOKIE_FILE`` where the signed-in ``Cookie`` header is written for ``wrk``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secure_mw import Settings
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie

CLAIMS = {"sub": "alice", "email": "alice@example.com", "groups": ["staff", "admins"]}
HOST = "app.example.com"
RECIPE_SECRET = "benchmark-recipe-secret"   # a throwaway local key
#: Limits nobody reaches: what is measured is the bookkeeping, not a refusal.
LIMIT = "1000000/second"
KINDS = ("bare", "full", "recipe", "lines")


def full_settings(keys: list[str], **extra: Any) -> Settings:
    """The whole stack: Host allow-list, security headers, client address, a rate limit by
    address, the open-redirect guard, the session (memory store), access rules (a bypass
    for /public, a login for the rest), the signed assertion, the health answer."""
    return Settings.from_mapping({
        "oidc": {"issuer": "https://idp.example.com", "client_id": "bench",
                 "client_secret": "bench-secret"},
        "keys": {"encryption_keys": keys},
        "rate_limits": {"rules": [{"key": "ip", "limit": LIMIT}]},
        "server": {"allowed_hosts": [HOST]},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/public$"], "policy": "bypass"},
            {"policy": "authenticated"}]},
        **extra,
    }, environ={})


# -- ASGI -----------------------------------------------------------------------------------

def starlette_bare() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def hello(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", hello), Route("/public", hello)])


def starlette_full(keys: list[str], clock: Callable[[], float] = time.time,
                   **extra: Any) -> tuple[Any, str]:
    """protect() around the bare app; the Cookie header of a signed-in session."""
    import secure_mw.asgi

    settings = full_settings(keys, **extra)
    store = _store(settings, clock)
    app = secure_mw.asgi.protect(starlette_bare(), settings, store=store, clock=clock)
    return app, session_cookie(settings, CLAIMS, store=store)


def _store(settings: Settings, clock: Callable[[], float]) -> Any:
    """The session store protect() would build, made here so the cookie can be minted in it
    (the memory store with the benchmark's clock)."""
    if settings.session.store == "memory":
        return MemorySessionStore(clock=clock)
    from secure_mw.session.redis_store import RedisSessionStore

    return RedisSessionStore.from_settings(settings.session,
                                           KeyRing.from_settings(settings.keys))


def starlette_recipe() -> tuple[Any, str]:
    """Starlette's SessionMiddleware (itsdangerous-signed cookie), the ``secure`` package's
    headers from a BaseHTTPMiddleware, slowapi's limiter, and a login check in the route:
    what its documentation shows, in the order it shows it."""
    import base64
    import json

    import itsdangerous
    import secure
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address
    from starlette.applications import Starlette
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    headers = secure.Secure.with_default_headers()

    async def index(request: Request) -> Response:
        if "user" not in request.session:
            return PlainTextResponse("sign in", status_code=401)
        return PlainTextResponse("ok")

    async def public(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def set_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        await headers.set_headers_async(response)
        return response

    app = Starlette(routes=[Route("/", index), Route("/public", public)])
    app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[LIMIT])
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIMiddleware)
    app.add_middleware(BaseHTTPMiddleware, dispatch=set_headers)
    app.add_middleware(SessionMiddleware, secret_key=RECIPE_SECRET, https_only=True)
    signer = itsdangerous.TimestampSigner(RECIPE_SECRET)
    data = signer.sign(base64.b64encode(json.dumps({"user": CLAIMS}).encode()))
    return app, f"session={data.decode()}"


# -- WSGI -----------------------------------------------------------------------------------

def flask_bare() -> Any:
    from flask import Flask

    app = Flask("bench_bare")

    @app.get("/")
    def index() -> str:
        return "ok"

    @app.get("/public")
    def public() -> str:
        return "ok"

    return app


def flask_full(keys: list[str], clock: Callable[[], float] = time.time,
               **extra: Any) -> tuple[Any, str]:
    """The Flask extension (protect() around the app's wsgi_app)."""
    from secure_mw.contrib.flask import SecureMW

    settings = full_settings(keys, **extra)
    store = MemorySessionStore(clock=clock)
    app = flask_bare()
    app.config["SECURE_MW"] = settings
    SecureMW(app, store=store, clock=clock)
    return app, session_cookie(settings, CLAIMS, store=store)


def flask_recipe() -> tuple[Any, str]:
    """Flask's own signed-cookie session, flask-talisman's headers, Flask-Limiter (memory
    storage) and a login check in the view."""
    from flask import Flask, abort, session
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address
    from flask_talisman import Talisman

    app = Flask("bench_recipe")
    app.secret_key = RECIPE_SECRET
    Talisman(app)
    Limiter(get_remote_address, app=app, default_limits=[LIMIT.replace("/", " per ")],
            storage_uri="memory://")

    @app.get("/")
    def index() -> str:
        if "user" not in session:
            abort(401)
        return "ok"

    @app.get("/public")
    def public() -> str:
        return "ok"

    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    return app, f"session={serializer.dumps({'user': CLAIMS})}"


# -- server processes -----------------------------------------------------------------------

def _keys() -> list[str]:
    return [os.environ.get("BENCH_KEY") or KeyRing.new_key_text()]


def _publish(cookie: str) -> None:
    target = os.environ.get("BENCH_COOKIE_FILE")
    if target:
        Path(target).write_text(cookie, encoding="utf-8")


def _served(bare: Callable[[], Any], full: Callable[[list[str]], tuple[Any, str]],
            recipe: Callable[[], tuple[Any, str]]) -> Any:
    kind = os.environ.get("BENCH_STACK", "bare")
    if kind == "bare":
        _publish("")
        return bare()
    app, cookie = full(_keys()) if kind == "full" else recipe()
    _publish(cookie)
    return app


def asgi_app() -> Any:
    """``uvicorn --factory benchmarks.stack_apps:asgi_app`` (``BENCH_STACK``)."""
    if os.environ.get("BENCH_STACK") == "lines":
        _publish("")
        return starlette_lines(_keys())
    return _served(starlette_bare, starlette_full, starlette_recipe)


def starlette_lines(keys: list[str]) -> Any:
    """The bare app with only the response header lines ``protect()`` adds to a signed-in
    ``GET /`` over plain HTTP (security headers, rate headers), as constant bytes: what
    the server spends writing them, with none of the stack's work."""
    from benchmarks.sessions import asgi_scope

    full, cookie = starlette_full(keys)
    extra: list[tuple[bytes, bytes]] = []
    bare = starlette_bare()

    async def lines() -> None:
        """The lines, from one request through ``full`` (in the server's own loop)."""
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await full({**asgi_scope(cookie), "scheme": "http"}, receive, send)
        own = {b"content-length", b"content-type"}
        found = [line for line in sent[0]["headers"] if line[0].lower() not in own]
        if not extra:      # (two first requests at once: one list)
            extra.extend(found)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await bare(scope, receive, send)
            return
        if not extra:
            await lines()

        async def add(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        await bare(scope, receive, add)

    return app


def wsgi_app() -> Any:
    """``gunicorn 'benchmarks.stack_apps:wsgi_app()'`` (``BENCH_STACK``)."""
    return _served(flask_bare, flask_full, flask_recipe)
