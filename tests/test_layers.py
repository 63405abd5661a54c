"""The layer interface (secure_mw/asgi/_layer.py, secure_mw/wsgi/_layer.py): protect() runs
its layers as one chain, and the chain answers exactly as the same middlewares nested one
inside the other would — for signed-in, anonymous, refused, rate-limited, redirected, HEAD
and WebSocket requests, in both flavours."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

import secure_mw.asgi
import secure_mw.wsgi
from secure_mw import Settings
from secure_mw._stack import assemble
from secure_mw.asgi import Chain, Layer, fuse
from secure_mw.crypto import KeyRing
from secure_mw.http import Reply
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie

HOST = "app.example.com"
NOW = time.time()     # the sessions the tests mint are fresh at this fixed time


def _settings(limit: str = "1000/minute", **extra: Any) -> Settings:
    return Settings.from_mapping({
        "oidc": {"issuer": "https://idp.example.com", "client_id": "app",
                 "client_secret": "app-secret"},
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "rate_limits": {"rules": [{"key": "ip", "limit": limit}]},
        "server": {"allowed_hosts": [HOST]},
        "signed_headers": {"issue": True},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/public"], "policy": "bypass"},
            {"policy": "authenticated"}]},
        **extra,
    }, environ={})


def _clock() -> float:
    return NOW


# -- ASGI ------------------------------------------------------------------------------------

async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})
        return
    path = scope["path"]
    headers = [(b"content-type", b"text/plain")]
    if path == "/public/away":
        headers.append((b"location", b"https://evil.example/"))
    identity = scope.get("secure_mw.identity")
    who = identity.sub if identity else "-"
    assertion = dict(scope["headers"]).get(b"x-secure-mw-jwt-assertion", b"")
    body = f"{path} {who} {bool(assertion)}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _asgi_pair(settings: Settings) -> tuple[Any, Any, str]:
    """(protect()'s fused chain, the same middlewares nested, a signed-in Cookie header)."""
    store = MemorySessionStore(clock=_clock)
    fused = secure_mw.asgi.protect(_asgi_app, settings, store=store, clock=_clock)
    nested = assemble(_asgi_app, settings,
                      dataclasses.replace(secure_mw.asgi.FLAVOUR, fuse=lambda app: app),
                      {"store": store, "clock": _clock})
    return fused, nested, session_cookie(settings, {"sub": "alice"}, store=store)


def _scope(path: str, *, cookie: str | None = None, host: str = HOST, method: str = "GET",
           kind: str = "http", query: bytes = b"", accept: str = "text/html") -> dict[str, Any]:
    headers = [(b"host", host.encode()), (b"accept", accept.encode()),
               (b"x-secure-mw-jwt-assertion", b"forged")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return {"type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "https" if kind == "http" else "wss", "method": method, "path": path,
            "raw_path": path.encode(), "query_string": query, "root_path": "",
            "headers": headers, "client": ("203.0.113.9", 5000),
            "server": ("127.0.0.1", 443)}


def _call_asgi(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"} if scope["type"] == "websocket" else {
            "type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(dict(scope), receive, send))
    return sent


def _comparable(messages: list[dict[str, Any]]) -> list[Any]:
    """The messages without the per-request values (CSP nonce, the signed assertion)."""
    out = []
    for message in messages:
        message = dict(message)
        if "headers" in message:
            message["headers"] = [
                (n, b"<nonce>" if n == b"content-security-policy" else v)
                for n, v in message["headers"]]
        out.append(message)
    return out


def test_protect_fuses_every_layer_into_one_chain() -> None:
    fused, nested, _ = _asgi_pair(_settings())
    assert isinstance(fused, Chain)
    names = [type(layer).__name__ for layer in fused.layers]
    assert names[0] == "HostGuardMiddleware" and names[-1] == "IdentityHeaderMiddleware"
    assert "SessionMiddleware" in names and "RateLimitMiddleware" in names
    assert fused.app is _asgi_app
    assert not isinstance(nested, Chain) and isinstance(nested, Layer)


@pytest.mark.parametrize("case", [
    "signed-in", "anonymous-public", "anonymous-private-html", "anonymous-private-json",
    "foreign-host", "head", "unsafe-location", "unsafe-rd", "websocket-signed-in",
    "websocket-anonymous", "jwks", "health",
])
def test_the_chain_answers_as_the_nested_middlewares(case: str) -> None:
    settings = _settings(metrics={"health": True})
    fused, nested, cookie = _asgi_pair(settings)
    scope = {
        "signed-in": _scope("/", cookie=cookie),
        "anonymous-public": _scope("/public"),
        "anonymous-private-html": _scope("/private"),
        "anonymous-private-json": _scope("/private", accept="application/json"),
        "foreign-host": _scope("/", cookie=cookie, host="evil.example"),
        "head": _scope("/private", method="HEAD"),
        "unsafe-location": _scope("/public/away"),
        "unsafe-rd": _scope("/public", query=b"rd=https://evil.example/"),
        "websocket-signed-in": _scope("/ws", cookie=cookie, kind="websocket"),
        "websocket-anonymous": _scope("/ws", kind="websocket"),
        "jwks": _scope("/.well-known/secure-mw/jwks.json"),
        "health": _scope("/.auth/health"),
    }[case]
    got, expected = _call_asgi(fused, scope), _call_asgi(nested, scope)
    assert _comparable(got) == _comparable(expected)
    assert got, "something was sent"


def test_a_signed_in_request_reaches_the_app_with_the_assertion_and_every_header() -> None:
    fused, _, cookie = _asgi_pair(_settings())
    start, body = _call_asgi(fused, _scope("/", cookie=cookie))
    assert start["status"] == 200
    assert body["body"] == b"/ alice True"
    names = [n for n, _ in start["headers"]]
    # the app's own lines first, then (innermost first) the rate limit's, then the guards'
    assert names[:2] == [b"content-type", b"ratelimit-policy"]
    assert b"content-security-policy" in names and b"strict-transport-security" in names


def test_rate_limited_requests_are_refused_by_the_chain_with_the_outer_headers() -> None:
    fused, _, cookie = _asgi_pair(_settings(limit="2/minute"))
    statuses = [_call_asgi(fused, _scope("/", cookie=cookie))[0] for _ in range(3)]
    assert [s["status"] for s in statuses] == [200, 200, 429]
    refused = {n.lower(): v for n, v in statuses[2]["headers"]}
    assert b"retry-after" in refused and b"x-content-type-options" in refused


class _Recorder(Layer):
    """A test layer: records its enter/leave/hook calls; answers ``reply`` when given."""

    def __init__(self, app: Any, name: str, log: list[str], *, reply: Reply | None = None,
                 waits: bool = False) -> None:
        self.app = app
        self.name = name
        self.log = log
        self.reply = reply
        self.waits = waits

    has_leave = True

    def enter(self, scope: Any, receive: Any) -> Any:
        self.log.append(f"enter {self.name}")
        if self.reply is not None:
            return self.reply
        if self.waits:
            return self._later()

        def hook(headers: list[tuple[bytes, bytes]]) -> None:
            self.log.append(f"hook {self.name}")
            headers.append((b"x-layer", self.name.encode()))

        return hook

    async def _later(self) -> Any:
        await asyncio.sleep(0)
        self.log.append(f"waited {self.name}")
        return None

    def leave(self, scope: Any) -> None:
        self.log.append(f"leave {self.name}")


def test_hooks_run_innermost_first_and_leave_runs_after_the_app_outermost_last() -> None:
    log: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.append("app")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    stack = _Recorder(_Recorder(_Recorder(app, "c", log), "b", log, waits=True), "a", log)
    for candidate in (stack, fuse(stack)):
        log.clear()
        start = _call_asgi(candidate, _scope("/"))[0]
        assert log == ["enter a", "enter b", "waited b", "enter c", "app", "hook c", "hook a",
                       "leave c", "leave b", "leave a"]
        assert start["headers"] == [(b"x-layer", b"c"), (b"x-layer", b"a")]


def test_a_reply_goes_through_the_hooks_of_the_layers_crossed_and_leaves_are_called() -> None:
    log: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:   # pragma: no cover
        raise AssertionError("the app must not run")

    stack = fuse(_Recorder(_Recorder(_Recorder(app, "c", log), "b", log,
                                     reply=Reply(403, [("content-type", "text/plain")], b"no")),
                           "a", log))
    start, body = _call_asgi(stack, _scope("/", method="HEAD"))
    assert start["status"] == 403 and body["body"] == b""      # HEAD: no body
    assert (b"x-layer", b"a") in start["headers"]
    assert log == ["enter a", "enter b", "hook a", "leave b", "leave a"]


def test_leave_runs_when_the_app_raises() -> None:
    log: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    stack = fuse(_Recorder(_Recorder(app, "b", log), "a", log))
    with pytest.raises(RuntimeError):
        _call_asgi(stack, _scope("/"))
    assert log[-2:] == ["leave b", "leave a"]


def test_the_assertion_context_variable_is_reset_after_the_request() -> None:
    from secure_mw.tokens.headers import current_assertion

    fused, _, cookie = _asgi_pair(_settings())
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_assertion.get())
        await _asgi_app(scope, receive, send)

    fused.app = app
    context = contextvars.copy_context()
    context.run(lambda: _call_asgi(fused, _scope("/", cookie=cookie)))
    assert seen and seen[0] and seen[0].count(".") == 2
    assert context.run(current_assertion.get) is None


# -- WSGI ------------------------------------------------------------------------------------

def _wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    headers = [("Content-Type", "text/plain")]
    if path == "/public/away":
        headers.append(("Location", "https://evil.example/"))
    identity = environ.get("secure_mw.identity")
    who = identity.sub if identity else "-"
    start_response("200 OK", headers)
    return [f"{path} {who} {bool(environ.get('HTTP_X_SECURE_MW_JWT_ASSERTION'))}".encode()]


def _environ(path: str, *, cookie: str | None = None, host: str = HOST, method: str = "GET",
             query: str = "", accept: str = "text/html") -> dict[str, Any]:
    environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
               "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "443",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "203.0.113.9",
               "wsgi.url_scheme": "https", "wsgi.input": None, "HTTP_HOST": host,
               "HTTP_ACCEPT": accept, "HTTP_X_SECURE_MW_JWT_ASSERTION": "forged"}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    return environ


def _call_wsgi(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        seen[:] = [status, headers]
        return lambda data: None

    body = b"".join(app(dict(environ), start_response))
    headers = [(n, "<nonce>" if n.lower() == "content-security-policy" else v)
               for n, v in seen[1]]
    return seen[0], headers, body


@pytest.mark.parametrize("case", [
    "signed-in", "anonymous-public", "anonymous-private", "foreign-host", "head",
    "unsafe-location", "unsafe-rd", "rate-limited",
])
def test_the_wsgi_chain_answers_as_the_nested_middlewares(case: str) -> None:
    settings = _settings(limit="1/minute" if case == "rate-limited" else "1000/minute")
    store = MemorySessionStore(clock=_clock)
    fused = secure_mw.wsgi.protect(_wsgi_app, settings, store=store, clock=_clock)
    nested = assemble(_wsgi_app, settings,
                      dataclasses.replace(secure_mw.wsgi.FLAVOUR, fuse=lambda app: app),
                      {"store": store, "clock": _clock})
    assert isinstance(fused, secure_mw.wsgi.Chain)
    assert not isinstance(nested, secure_mw.wsgi.Chain)
    cookie = session_cookie(settings, {"sub": "alice"}, store=store)
    environ = {
        "signed-in": _environ("/", cookie=cookie),
        "anonymous-public": _environ("/public"),
        "anonymous-private": _environ("/private"),
        "foreign-host": _environ("/", host="evil.example"),
        "head": _environ("/private", method="HEAD"),
        "unsafe-location": _environ("/public/away"),
        "unsafe-rd": _environ("/public", query="rd=https://evil.example/"),
        "rate-limited": _environ("/", cookie=cookie),
    }[case]
    if case == "rate-limited":
        assert _call_wsgi(fused, environ)[0].startswith("200")
        assert _call_wsgi(nested, environ)[0].startswith("200")
    got, expected = _call_wsgi(fused, environ), _call_wsgi(nested, environ)
    assert got == expected
    if case == "signed-in":
        assert got[0].startswith("200") and got[2] == b"/ alice True"
    if case == "rate-limited":
        assert got[0].startswith("429")

