"""What ``[metrics] enabled = true`` costs a warm signed-in request through ``protect()``.

In-process, as benchmarks/sessions.py: the same prepared browser request with a session
cookie (memory store, the built-in login's stack with an access rule and a rate limit), once
through ``protect()`` without metrics and once with them (a fresh prometheus_client
registry), for both flavours, next to the bare app.

  asgi-bare / wsgi-bare        the app alone                                      baseline
  asgi-protect / wsgi-protect  protect() without [metrics]
  asgi-metrics / wsgi-metrics  protect() with [metrics] enabled

Every case is timed in the same repeat loop, in alternating order; each figure is the median
of the repeats. Printed: µs a request, what protect() adds, what metrics add on top, and
the ratio protect+metrics / protect.

    python -m benchmarks.metrics            # or: python benchmarks/metrics.py
    python -m benchmarks.metrics --quick    # a smoke test of a second or two
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prometheus_client
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import secure_mw.asgi
import secure_mw.wsgi
from benchmarks.sessions import CLAIMS, asgi_runner, asgi_scope, wsgi_environ, wsgi_runner
from secure_mw import Settings
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie

KEY = KeyRing.new_key_text()


def _settings(users: Path, metrics: bool) -> Settings:
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]}, "local_users": {"file": str(users)},
        "server": {"allowed_hosts": ["app.example.com"]},
        "access_control": {"rules": [{"resources": ["^/admin"], "subject": ["group:admins"],
                                      "policy": "authenticated"},
                                     {"policy": "authenticated"}]},
        "rate_limits": {"rules": [{"key": "ip", "limit": "1000000/second"}]},
        "metrics": {"enabled": metrics}}, environ={})


async def _home(request: Any) -> PlainTextResponse:
    return PlainTextResponse("hello")


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", "5")])
    return [b"hello"]


def cases(loop: asyncio.AbstractEventLoop, users: Path) -> dict[str, Any]:
    asgi_app = Starlette(routes=[Route("/", _home)])
    found: dict[str, Any] = {
        "asgi-bare": asgi_runner(loop, asgi_app, asgi_scope(None)),
        "wsgi-bare": wsgi_runner(_wsgi_app, wsgi_environ(None)),
    }
    for metrics in (False, True):
        name = "metrics" if metrics else "protect"
        settings = _settings(users, metrics)
        for flavour, inner in (("asgi", asgi_app), ("wsgi", _wsgi_app)):
            store = MemorySessionStore()
            module = secure_mw.asgi if flavour == "asgi" else secure_mw.wsgi
            app = module.protect(inner, settings, store=store,
                                 registry=prometheus_client.CollectorRegistry())
            cookie = session_cookie(settings, CLAIMS, store=store)
            found[f"{flavour}-{name}"] = asgi_runner(loop, app, asgi_scope(cookie)) \
                if flavour == "asgi" else wsgi_runner(app, wsgi_environ(cookie))
    return found


def measure(runs: dict[str, Any], repeats: int, run_seconds: float) -> dict[str, float]:
    """Median µs a request of each case."""
    numbers = {}
    for key, run in runs.items():        # calibrate: how many requests fill a run
        run(200)
        n = 200
        while run(n) < run_seconds:
            n *= 2
        numbers[key] = n
    samples: dict[str, list[float]] = {key: [] for key in runs}
    order = list(runs)
    for r in range(repeats):
        for key in (order if r % 2 == 0 else order[::-1]):
            samples[key].append(runs[key](numbers[key]) / numbers[key] * 1e6)
    return {key: statistics.median(values) for key, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per case")
    parser.add_argument("--run-ms", type=float, default=25.0, help="length of one run")
    parser.add_argument("--quick", action="store_true", help="smoke test: 5 runs of 5 ms")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms = 5, 5.0
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory() as directory:
        users = Path(directory) / "users.toml"
        users.write_text("", encoding="utf-8")
        users.chmod(0o600)
        us = measure(cases(loop, users), args.repeats, args.run_ms / 1000)
    loop.close()
    print(f"secure_mw metrics benchmark: medians of {args.repeats} interleaved runs of "
          f"~{args.run_ms:g} ms; Python {sys.version.split()[0]}")
    print(f"{'case':<16}{'µs/request':>12}")
    for key, value in us.items():
        print(f"{key:<16}{value:>12.2f}")
    for flavour in ("asgi", "wsgi"):
        bare, protect, metrics = (us[f"{flavour}-{k}"] for k in ("bare", "protect", "metrics"))
        print(f"{flavour}: protect() adds {protect - bare:.2f} µs; metrics add "
              f"{metrics - protect:.2f} µs more; protect+metrics / protect = "
              f"{metrics / protect:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
