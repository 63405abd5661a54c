"""The e2e test app plus a slow endpoint, for the reload probe (review only)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from secure_mw import Settings, wsgi


def _inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ.get("PATH_INFO") == "/hold":
        # Held until the file named in the query exists (bounded): an in-flight request.
        release = environ.get("QUERY_STRING", "")
        open(release + ".held", "w").close()      # the test knows it is in flight
        for _ in range(600):
            if os.path.exists(release):
                break
            time.sleep(0.05)
    body = json.dumps({"pid": os.getpid(), "path": environ.get("PATH_INFO")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def wsgi_app() -> Any:
    interval = os.environ.get("E2E_WORKER_CHECK_INTERVAL")
    if interval is not None:
        from secure_mw.session import memory_store

        memory_store.CHECK_INTERVAL = float(interval)
    return wsgi.protect(_inner, Settings.from_environment())
