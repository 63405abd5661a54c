"""Attack harness for the review of the access-rule change (84e2401, f5b382a, 3db0830).

Real servers in both flavours around protect() with the given [access_control]:
uvicorn (h11 and httptools), werkzeug's server, waitress, and gunicorn (a subprocess; the
sessions live in the encrypted cookie store so a cookie made here is accepted there).
Requests are sent on raw sockets so that no client normalizes the target or the headers.
The inner apps echo what they were given (method, host, path, query as the framework
parses it), so a test can compare what the rules saw with what the app routes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secure_mw import Settings, asgi, wsgi  # noqa: E402
from secure_mw.crypto import KeyRing, PasswordHasher  # noqa: E402
from secure_mw.login import UsersFile  # noqa: E402
from secure_mw.testing import session_cookie  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

import logging  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.ERROR)
logging.getLogger("waitress").setLevel(logging.ERROR)
logging.getLogger("secure_mw").setLevel(logging.CRITICAL)

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)


def base_config(tmp: Path, access_control: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A complete configuration mapping: built-in login, encrypted cookie sessions."""
    users = UsersFile(tmp / "users.toml", hasher=FAST)
    if not (tmp / "users.toml").exists() or "alice" not in (tmp / "users.toml").read_text():
        users.add("alice", password="quartz falcon 11", groups=["admins"], email="alice@example.com")
        users.add("bob", password="velvet harbor 22", groups=["staff"], email="bob@example.com")
    cfg: dict[str, Any] = {
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": {"store": "cookie"},
        "local_users": {"file": str(tmp / "users.toml")},
        "access_control": access_control,
        "server": {"allowed_hosts": ["app.example.com", "admin.example.com", "www.example.com",
                                     "127.0.0.1", "localhost"]},
    }
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def settings_of(cfg: dict[str, Any]) -> Settings:
    return Settings.from_mapping(cfg, environ={})


def cookie(settings: Settings, sub: str, *, groups: tuple[str, ...] = (), email: str = "",
           email_verified: Any = None, two_factor: bool = False,
           source: str = "test") -> str:
    claims: dict[str, Any] = {"sub": sub, "groups": list(groups)}
    if email:
        claims["email"] = email
    if email_verified is not None:
        claims["email_verified"] = email_verified
    return session_cookie(settings, claims, auth_level=2 if two_factor else 1, source=source)


# -- inner apps: they tell what they were given ----------------------------------------------


def asgi_echo() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Host, Mount, Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(request: Request) -> JSONResponse:
        ident = request.scope.get("secure_mw.identity")
        dec = request.scope.get("secure_mw.decision")
        return JSONResponse({
            "method": request.method, "host": request.headers.get("host"),
            "path": request.url.path, "query": list(request.query_params.multi_items()),
            "user": getattr(ident, "sub", None), "rule": getattr(dec, "rule", None),
            "app": "main"})

    async def admin_site(request: Request) -> JSONResponse:
        ident = request.scope.get("secure_mw.identity")
        return JSONResponse({"app": "admin-site", "user": getattr(ident, "sub", None),
                             "path": request.url.path})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        ident = websocket.scope.get("secure_mw.identity")
        await websocket.send_json({"path": websocket.scope["path"],
                                   "user": getattr(ident, "sub", None)})
        await websocket.close()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND"]
    admin = Starlette(routes=[Route("/{p:path}", admin_site, methods=methods)])
    main = Starlette(routes=[WebSocketRoute("/admin/ws", ws), WebSocketRoute("/ws", ws),
                             Route("/{p:path}", echo, methods=methods)])
    return Starlette(routes=[Host("admin.example.com", admin), Mount("/", main)])


def wsgi_echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    from werkzeug.wrappers import Request

    req = Request(environ)
    ident = environ.get("secure_mw.identity")
    dec = environ.get("secure_mw.decision")
    body = json.dumps({
        "method": req.method, "host": environ.get("HTTP_HOST"), "path": req.path,
        "query": list(req.args.items(multi=True)), "user": getattr(ident, "sub", None),
        "rule": getattr(dec, "rule", None),
        "app": "admin-site" if req.host.split(":")[0] == "admin.example.com" else "main",
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


# -- servers --------------------------------------------------------------------------------


@contextmanager
def _uvicorn(app: Any, http: str) -> Iterator[str]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical",
                            lifespan="off", http=http, ws="websockets-sansio",
                            proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def _werkzeug(app: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def _waitress(app: Any) -> Iterator[str]:
    import waitress.server

    port = free_port()
    server = waitress.server.create_server(app, host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        thread.join(timeout=10)


@contextmanager
def _gunicorn(cfg: dict[str, Any]) -> Iterator[str]:
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    env = {**os.environ, "REVIEW_CONFIG": f.name, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4", "-b",
         f"127.0.0.1:{port}", "--log-level", "critical", "review.harness:gunicorn_app()"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(f.name)


def gunicorn_app() -> Any:
    cfg = json.loads(Path(os.environ["REVIEW_CONFIG"]).read_text())
    return wsgi.protect(wsgi_echo, settings_of(cfg))


SERVERS = ("uvicorn-h11", "uvicorn-httptools", "werkzeug", "waitress", "gunicorn")
ASGI_SERVERS = ("uvicorn-h11", "uvicorn-httptools")


@contextmanager
def serve(server: str, cfg: dict[str, Any], settings: Settings | None = None
          ) -> Iterator[str]:
    """``host:port`` of ``server`` running protect(echo app) for ``cfg``."""
    settings = settings or settings_of(cfg)
    if server.startswith("uvicorn"):
        with _uvicorn(asgi.protect(asgi_echo(), settings), server.split("-")[1]) as addr:
            yield addr
    elif server == "werkzeug":
        with _werkzeug(wsgi.protect(wsgi_echo, settings)) as addr:
            yield addr
    elif server == "waitress":
        with _waitress(wsgi.protect(wsgi_echo, settings)) as addr:
            yield addr
    else:
        with _gunicorn(cfg) as addr:
            yield addr


# -- raw requests ---------------------------------------------------------------------------


def raw(addr: str, target: str, *, method: str = "GET", host: str = "app.example.com",
        cookie_: str = "", headers: list[tuple[str, str]] | None = None,
        hosts: list[str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send one request exactly as written; (status, headers, body)."""
    hostname, port = addr.split(":")
    lines = [f"{method} {target} HTTP/1.1"]
    for h in (hosts if hosts is not None else [host]):
        lines.append(f"Host: {h}")
    lines += ["Accept: application/json", "Connection: close"]
    if cookie_:
        lines.append(f"Cookie: {cookie_}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    with socket.create_connection((hostname, int(port)), timeout=10) as sock:
        sock.sendall(data)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
    if not out:
        return 0, {}, b""
    head, _, body = out.partition(b"\r\n\r\n")
    first, *rest = head.decode("latin-1").split("\r\n")
    status = int(first.split(" ", 2)[1])
    hdrs = {}
    for line in rest:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def app_saw(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "app" in data else None
