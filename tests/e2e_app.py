"""The protected test app as its own process: ``python -m tests.e2e_app --flavour asgi|wsgi
--port N``, configured like any deployment, from ``SECURE_MW_*`` environment variables.

The same app for a server's own command line, with several workers:
``uvicorn --factory tests.e2e_app:asgi_app --workers 2`` and
``gunicorn -w 2 'tests.e2e_app:wsgi_app()'`` (``wsgi_hold_app()`` adds a request that stays
in flight until the test ends it). ``E2E_WORKER_CHECK_INTERVAL`` (seconds) sets how often a
worker looks again for sibling workers (the tests use 0: at every request).
``login_asgi_app`` / ``login_wsgi_app`` protect an app's own login endpoint instead (``POST
/login``: 200 for ``alice`` / ``correct horse``, 401 otherwise), which appends each password
it checks to ``$E2E_COUNT_FILE`` (one line per check, from every worker).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secure_mw import Settings, asgi, wsgi
from tests.apps import asgi_inner, wsgi_inner


def _settings() -> Settings:
    interval = os.environ.get("E2E_WORKER_CHECK_INTERVAL")
    if interval is not None:
        from secure_mw.session import memory_store

        memory_store.CHECK_INTERVAL = float(interval)
    if os.environ.get("E2E_FAST_LOGIN_DELAY"):
        _fast_login_delay()
    return Settings.from_environment()


def _fast_login_delay() -> None:
    """The login guard's delay with a 1 ms floor (``E2E_FAST_LOGIN_DELAY=1``): the tests
    count attempts, they need not wait a second for each."""
    from secure_mw.guards import layers, timing

    class Fast(timing.LoginDelay):
        def __init__(self, **options: Any) -> None:
            options.setdefault("floor", 0.001)
            options.setdefault("seed", 0.001)
            options.setdefault("jitter", 0.0)
            super().__init__(**options)

    layers.LoginDelay = Fast  # type: ignore[misc]


def asgi_app() -> Any:
    """The protected ASGI app (an app factory for ``uvicorn --factory``)."""
    return asgi.protect(asgi_inner(), _settings())


def wsgi_app() -> Any:
    """The protected WSGI app (``gunicorn 'tests.e2e_app:wsgi_app()'``)."""
    return wsgi.protect(wsgi_inner, _settings())


def _held(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """``/hold?FIFO``: a request in flight until the test writes to the named pipe FIFO
    (``FIFO.held`` appears once it waits); anything else is :func:`wsgi_inner`'s."""
    if environ.get("PATH_INFO") == "/hold":
        release = environ.get("QUERY_STRING", "")
        Path(release + ".held").touch()
        with open(release, "rb") as fifo:       # blocks until the test opens it to write
            fifo.read()
    return wsgi_inner(environ, start_response)


def wsgi_hold_app() -> Any:
    """:func:`wsgi_app` with ``/hold`` (a long download, a long poll)."""
    return wsgi.protect(_held, _settings())


def _judge(body: bytes) -> tuple[int, bytes]:
    from urllib.parse import parse_qs

    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    password = form.get("password", "")
    count = os.environ.get("E2E_COUNT_FILE")
    if count and len(password) != 32:        # a banned attempt's decoy: 32 characters
        with open(count, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {password}\n")
    if form.get("username") == "alice" and password == "correct horse":
        return 200, b'{"welcome": true}'
    return 401, b'{"error": "invalid username or password"}'


async def _login_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, out = _judge(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


def _login_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    status, out = _judge(environ["wsgi.input"].read(length))
    start_response(f"{status} {'OK' if status == 200 else 'Unauthorized'}",
                   [("Content-Type", "application/json")])
    return [out]


def login_asgi_app() -> Any:
    """The counting login endpoint behind ``protect()`` (``uvicorn --factory``)."""
    return asgi.protect(_login_asgi, _settings())


def login_wsgi_app() -> Any:
    """The counting login endpoint behind ``protect()`` (``gunicorn``)."""
    return wsgi.protect(_login_wsgi, _settings())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flavour", choices=("asgi", "wsgi"), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.flavour == "asgi":
        import uvicorn

        uvicorn.run(asgi_app(), host="127.0.0.1", port=args.port, log_level="warning",
                    lifespan="off")
    else:
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", args.port, wsgi_app(), threaded=True)


if __name__ == "__main__":
    main()
