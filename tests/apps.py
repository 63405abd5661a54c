"""Small apps and real HTTP servers for end-to-end tests, in both flavours.

``serve(flavour, build)`` starts a real server in a thread — uvicorn for ASGI, werkzeug's
threaded WSGI server for WSGI — for the app that ``build`` returns (given the inner app), and
yields its base URL. The inner apps answer JSON describing who the middleware says is there.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from werkzeug.serving import make_server

from tests.servers import free_port, wait_for_port

FLAVOURS = ("asgi", "wsgi")


# -- the inner apps -------------------------------------------------------------------------


def _who(identity: Any) -> dict[str, Any]:
    if identity is None:
        return {"authenticated": False}
    return {"authenticated": True, **identity.as_dict()}


async def _asgi_home(request: Request) -> JSONResponse:
    user = request.user
    return JSONResponse({**_who(request.scope.get("secure_mw.identity")),
                         "user_is_authenticated": user.is_authenticated,
                         "display_name": user.display_name,
                         "auth_scopes": list(request.auth.scopes),
                         "path": request.url.path, "pid": os.getpid(),
                         "assertion": request.headers.get("x-secure-mw-jwt-assertion")})


async def _asgi_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(_who(websocket.scope.get("secure_mw.identity")))
    await websocket.close()


def asgi_inner() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", _asgi_home, methods=["GET", "POST", "HEAD"]),
                             WebSocketRoute("/ws", _asgi_ws)])


def wsgi_inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps({**_who(environ.get("secure_mw.identity")),
                       "path": environ.get("PATH_INFO"), "pid": os.getpid(),
                       "assertion": environ.get("HTTP_X_SECURE_MW_JWT_ASSERTION")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


# -- real servers ---------------------------------------------------------------------------


@contextmanager
def uvicorn_server(app: Any, port: int | None = None, **options: Any) -> Iterator[str]:
    """``options``: more of uvicorn.Config's (``root_path="/app"``)."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", ws="websockets-sansio", proxy_headers=False,
                            **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def wsgi_server(app: Any, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def serve(flavour: str, build: Callable[[Any], Any], port: int | None = None
          ) -> Iterator[str]:
    """Serve ``build(inner_app)`` with the flavour's real server; yields the base URL."""
    if flavour == "asgi":
        with uvicorn_server(build(asgi_inner()), port) as url:
            yield url
    else:
        with wsgi_server(build(wsgi_inner), port) as url:
            yield url


# -- a browser-like client ------------------------------------------------------------------


class _LoopbackPolicy(http.cookiejar.DefaultCookiePolicy):
    """Send Secure cookies to http://127.0.0.1, as browsers do for loopback origins."""

    def return_ok_secure(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return True


def browser(**kwargs: Any) -> httpx.Client:
    """An httpx client that keeps cookies like a browser on a loopback origin and does not
    follow redirects (tests follow them explicitly)."""
    jar = http.cookiejar.CookieJar(policy=_LoopbackPolicy())
    cookies = httpx.Cookies(jar)

    def add_cookies(request: httpx.Request) -> None:
        # httpx copies cookies into a jar of default policy per request, which drops Secure
        # cookies over http; set the header from our own jar instead.
        if "cookie" in request.headers:
            del request.headers["cookie"]
        cookies.set_cookie_header(request)

    client = httpx.Client(cookies=jar, follow_redirects=False, timeout=10,
                          headers={"Accept": "text/html"},
                          event_hooks={"request": [add_cookies]}, **kwargs)
    assert client.cookies.jar is jar
    return client


def raw_request(base: str, method: str, target: str, *, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[int, dict[str, str]]:
    """Send a request whose target goes out exactly as written (an HTTP client would resolve
    ``//x``, ``/./x`` or ``/a/../x`` first); the status and the (lower-cased, last-wins)
    response headers."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    found = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(head[0].split(" ", 2)[1]), found
