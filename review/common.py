"""Helpers of the review probes: a login endpoint that counts the passwords it checks (both
flavours, in-process or appending to a file across worker processes) and a raw HTTP client
that sends a request target exactly as written (httpx normalizes dot segments)."""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

USERS = {"alice": "correct horse battery", "bob": "battery staple horse"}


class CountingLogin:
    """POST with username/password (form or JSON): ``ok_status`` for the right password,
    ``fail_status`` otherwise; every password it checks is recorded (``checks``) and, when
    ``count_file`` is set, appended to that file as one line (works across processes)."""

    def __init__(self, *, fail_status: int = 401, ok_status: int = 200,
                 count_file: str | None = None,
                 raise_on: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.fail_status = fail_status
        self.ok_status = ok_status
        self.count_file = count_file
        self.raise_on = raise_on
        self.checks: list[str] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()

    @staticmethod
    def _data(body: bytes, content_type: str) -> dict[str, Any]:
        if "json" in content_type:
            return dict(json.loads(body or b"{}"))
        return {k: v[0] for k, v in parse_qs(body.decode()).items()}

    def judge(self, data: dict[str, Any], path: str) -> tuple[int, bytes]:
        if self.raise_on is not None and self.raise_on(data):
            raise RuntimeError("the app failed")
        password = str(data.get("password"))
        with self._lock:
            self.paths.append(path)
            if len(password) != 32:           # the guard's decoy is 32 characters
                self.checks.append(password)
                if self.count_file:
                    with open(self.count_file, "a") as fh:
                        fh.write(f"{os.getpid()} {password}\n")
        if USERS.get(str(data.get("username"))) == password:
            return self.ok_status, b'{"welcome": true}'
        return self.fail_status, b'{"detail": "Incorrect username or password"}'

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        ctype = dict(scope["headers"]).get(b"content-type", b"").decode()
        status, out = self.judge(self._data(body, ctype), scope["path"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        status, out = self.judge(self._data(body, environ.get("CONTENT_TYPE", "")),
                                 environ.get("PATH_INFO", ""))
        start_response(f"{status} X", [("Content-Type", "application/json")])
        return [out]


def raw_post(base: str, target: str, data: dict[str, str], *,
             headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
    """POST a form to ``target`` exactly as written (no dot-segment or slash cleanup)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        body = urlencode(data)
        conn.putrequest("POST", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"{parts.hostname}:{parts.port}")
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders(body.encode())
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()
