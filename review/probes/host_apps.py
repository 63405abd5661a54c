"""Echo apps behind HostGuardMiddleware, for the Host probes (review only)."""

from __future__ import annotations

import json
import os
from typing import Any

from secure_mw import Settings, asgi, wsgi


def _settings() -> Settings:
    hosts = os.environ.get("PROBE_HOSTS", "app.example.com,*.good.example").split(",")
    proxies = [p for p in os.environ.get("PROBE_PROXIES", "").split(",") if p]
    return Settings.from_mapping({"server": {
        "allowed_hosts": hosts, "trusted_proxies": proxies,
        "forwarded_header": os.environ.get("PROBE_FWD", "x-forwarded-for")}}, environ={})


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    from starlette.requests import Request

    req = Request(scope)
    body = json.dumps({
        "host_headers": [v.decode("latin-1") for n, v in scope["headers"] if n == b"host"],
        "path": scope["path"], "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
        "server": scope.get("server"), "starlette_url": str(req.url),
        "starlette_host": req.url.hostname, "xfh": req.headers.get("x-forwarded-host"),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    from werkzeug.wrappers import Request

    req = Request(environ)
    try:
        wz_host = req.host
    except Exception as exc:
        wz_host = f"error {exc!r}"
    body = json.dumps({
        "HTTP_HOST": environ.get("HTTP_HOST"), "SERVER_NAME": environ.get("SERVER_NAME"),
        "SERVER_PORT": environ.get("SERVER_PORT"), "PATH_INFO": environ.get("PATH_INFO"),
        "RAW_URI": environ.get("RAW_URI") or environ.get("REQUEST_URI"),
        "werkzeug_host": wz_host, "werkzeug_url": req.url if not wz_host.startswith("error")
        else None,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def asgi_app() -> Any:
    return asgi.HostGuardMiddleware(_echo, settings=_settings())


def wsgi_app() -> Any:
    return wsgi.HostGuardMiddleware(_wsgi_echo, settings=_settings())


def asgi_protected() -> Any:
    return asgi.protect(_echo, _settings())

