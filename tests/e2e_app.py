"""The protected test app as its own process: ``python -m tests.e2e_app --flavour asgi|wsgi
--port N``, configured like any deployment, from ``SECURE_MW_*`` environment variables.

The same app for a server's own command line, with several workers:
``uvicorn --factory tests.e2e_app:asgi_app --workers 2`` and
``gunicorn -w 2 'tests.e2e_app:wsgi_app()'`` (``wsgi_hold_app()`` adds a request that stays
in flight until the test ends it). ``E2E_WORKER_CHECK_INTERVAL`` (seconds) sets how often a
worker looks again for sibling workers (the tests use 0: at every request).
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
    return Settings.from_environment()


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
