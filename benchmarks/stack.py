"""The whole stack against bare apps and the usual recipes: what protect() adds to a request.

One run prints:

* **in-process** (the harness of benchmarks/sessions.py: the app called directly, no
  server): requests/s and µs added (median) of a bare Starlette app, secure_mw's whole
  stack around it and the usual recipe (Starlette SessionMiddleware + ``secure`` headers +
  slowapi), signed in (``GET /``) and anonymous (``GET /public``, a bypass rule); the same
  for Flask (bare / the SecureMW extension / Flask session + flask-talisman + Flask-Limiter);
  and the µs of each layer, by leaving it out of the stack;
* **under real servers**: uvicorn (httptools, uvloop) and gunicorn (gthread) on loopback
  under ``wrk`` (Debian's package), bare and full, requests/s with p50/p99 latency;
* **Redis**: commands (``INFO commandstats``) and round trips (socket writes) per warm
  request when the session and the rate limit live in a real redis-server;
* **memory**: RSS of the full stack after 10k and 1M requests from 100k client addresses.

Every ratio is against a baseline measured in the same run; cases alternate within each
repeat, so machine noise hits them alike. The verdict lines check the targets of the whole
stack (docs/performance.md). ``--svg FILE`` draws the chart of the docs page.

::

    python -m benchmarks.stack               # or: python3 dev.py bench stack
    python -m benchmarks.stack --quick       # a smoke run
    python -m benchmarks.stack --svg docs/assets/stack.svg
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sessions import (
    Case,
    asgi_runner,
    asgi_scope,
    check_asgi,
    check_wsgi,
    measure,
    wsgi_environ,
    wsgi_runner,
)
from benchmarks.stack_apps import (
    CLAIMS,
    flask_bare,
    flask_full,
    flask_recipe,
    full_settings,
    starlette_bare,
    starlette_full,
    starlette_recipe,
)
from secure_mw.crypto import KeyRing

#: The targets of the whole stack (issue 13; docs/performance.md).
ASGI_BUDGET_US = 15.0
#: What the bare Starlette app took, in-process, on the machine where the targets were set.
ISSUE_BARE_US = 5.5
WSGI_BUDGET_US = 15.0
RECIPE_FACTOR = 10.0
UVICORN_KEEPS = 0.6
GUNICORN_KEEPS = 0.9
#: Left out one at a time to find what each layer costs (settings changes to the full stack).
LAYERS: dict[str, dict[str, Any]] = {
    "rate limit": {"rate_limits": {"rules": []}},
    "authorization": {"access_control": {"rules": []}},
    "signed assertion": {"signed_headers": {"issue": False}},
    "health": {"metrics": {"health": False}},
}


def public(scope_or_environ: dict[str, Any]) -> dict[str, Any]:
    """The same request for /public (a bypass rule) without a cookie."""
    out = dict(scope_or_environ)
    if "PATH_INFO" in out:
        out.update(PATH_INFO="/public", RAW_URI="/public")
        out.pop("HTTP_COOKIE", None)
    else:
        out.update(path="/public", raw_path=b"/public",
                   headers=[(k, v) for k, v in out["headers"] if k != b"cookie"])
    return out


@dataclass
class InProcess:
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    keys: list[str] = field(default_factory=lambda: [KeyRing.new_key_text()])
    cases: list[Case] = field(default_factory=list)

    def add(self, key: str, label: str, run: Any, baseline: str | None = None) -> None:
        self.cases.append(Case(key, label, run, baseline))

    def build(self, *, layers: bool) -> None:
        loop, now = self.loop, time.time()

        def fixed() -> float:
            return now

        bare = starlette_bare()
        scope = asgi_scope(None)
        check_asgi(loop, bare, scope, user=None)
        self.add("asgi-bare", "bare Starlette app (baseline)", asgi_runner(loop, bare, scope))
        full, cookie = starlette_full(self.keys, fixed)
        scope = asgi_scope(cookie)
        check_asgi(loop, full, scope, user="alice")
        self.add("asgi-full", "secure_mw protect(), signed in", asgi_runner(loop, full, scope),
                 "asgi-bare")
        from benchmarks.floor import hand_pass

        self.add("asgi-floor", "a hand-written pass (floor.py), signed in",
                 asgi_runner(loop, hand_pass(full, starlette_bare(), fixed), scope),
                 "asgi-bare")
        check_asgi(loop, full, public(scope), user=None)
        self.add("asgi-full-anon", "secure_mw protect(), anonymous /public",
                 asgi_runner(loop, full, public(scope)), "asgi-bare")
        recipe, cookie = starlette_recipe()
        scope = asgi_scope(cookie)
        check_asgi(loop, recipe, scope, user=None, starlette_user="alice")
        self.add("asgi-recipe", "usual recipe, signed in", asgi_runner(loop, recipe, scope),
                 "asgi-bare")
        check_asgi(loop, recipe, public(scope), user=None)
        self.add("asgi-recipe-anon", "usual recipe, anonymous /public",
                 asgi_runner(loop, recipe, public(scope)), "asgi-bare")

        environ = wsgi_environ(None)
        bare_flask = flask_bare()
        check_wsgi(bare_flask, environ, user=None)
        self.add("flask-bare", "bare Flask app (WSGI baseline)", wsgi_runner(bare_flask, environ))
        app, cookie = flask_full(self.keys, fixed)
        environ = wsgi_environ(cookie)
        check_wsgi(app, environ, user="alice")
        self.add("flask-full", "secure_mw SecureMW(app), signed in", wsgi_runner(app, environ),
                 "flask-bare")
        check_wsgi(app, public(environ), user=None)
        self.add("flask-full-anon", "secure_mw SecureMW(app), anonymous /public",
                 wsgi_runner(app, public(environ)), "flask-bare")
        app, cookie = flask_recipe()
        environ = wsgi_environ(cookie)
        check_wsgi(app, environ, user=None)
        self.add("flask-recipe", "usual recipe, signed in", wsgi_runner(app, environ),
                 "flask-bare")
        check_wsgi(app, public(environ), user=None)
        self.add("flask-recipe-anon", "usual recipe, anonymous /public",
                 wsgi_runner(app, public(environ)), "flask-bare")

        if not layers:
            return
        import secure_mw.asgi
        from secure_mw.session import MemorySessionStore
        from secure_mw.testing import session_cookie

        for name, change in LAYERS.items():
            app, cookie = starlette_full(self.keys, fixed, **change)
            scope = asgi_scope(cookie)
            check_asgi(loop, app, scope, user="alice")
            self.add(f"without {name}", f"  protect() without the {name}",
                     asgi_runner(loop, app, scope), "asgi-bare")
        settings = full_settings(self.keys)
        store = MemorySessionStore(clock=fixed)
        app = secure_mw.asgi.OIDCSessionMiddleware(starlette_bare(), settings=settings,
                                                   store=store, clock=fixed)
        scope = asgi_scope(session_cookie(settings, CLAIMS, store=store))
        check_asgi(loop, app, scope, user="alice")
        self.add("session alone", "  the session middleware alone",
                 asgi_runner(loop, app, scope), "asgi-bare")


def layer_costs(us: dict[str, float]) -> dict[str, float]:
    """µs of each layer: the full stack minus the stack without it; the session alone over
    the bare app; what remains (Host allow-list, headers, client address, redirect guard)."""
    full = us["asgi-full"]
    costs = {name: full - us[f"without {name}"] for name in LAYERS if f"without {name}" in us}
    if "session alone" in us:
        costs["session"] = us["session alone"] - us["asgi-bare"]
        costs["host, headers, client address, redirects"] = \
            full - us["asgi-bare"] - sum(costs.values())
    return costs


# -- real servers under wrk -------------------------------------------------------------------

@dataclass
class WrkResult:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, seconds: float, cookie: str, connections: int) -> WrkResult:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-H", "Host: app.example.com", "-H", "X-Forwarded-Proto: https"]
    if cookie:
        args += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"\s99%\s+([\d.]+\w+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not (rate and p50 and p99):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return WrkResult(float(rate.group(1)), _ms(p50.group(1)), _ms(p99.group(1)),
                     int(bad.group(1)) if bad else 0)


@contextlib.contextmanager
def served(server: str, kind: str, work: Path) -> Iterator[tuple[str, str]]:
    """(url, signed-in Cookie header) of ``kind`` under ``server``."""
    from tests.servers import ServerProcess, free_port

    port = free_port()
    cookie_file = work / f"{server}-{kind}.cookie"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update(BENCH_STACK=kind, BENCH_COOKIE_FILE=str(cookie_file), PYTHONUNBUFFERED="1")
    if server == "uvicorn":
        args = [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.stack_apps:asgi_app",
                "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
                "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    else:
        args = [sys.executable, "-m", "gunicorn", "--preload", "-w", "1", "-k", "gthread",
                "--threads", "8",
                "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                "benchmarks.stack_apps:wsgi_app()"]
    with ServerProcess(args, port=port, env=env, log=work / f"{server}-{kind}.log") as process:
        cookie = cookie_file.read_text(encoding="utf-8")
        yield process.url + "/", cookie


def server_runs(seconds: float, rounds: int) -> dict[tuple[str, str], WrkResult]:
    """Median requests/s (and the latencies of that run) per (server, kind); bare and full
    alternate, ``rounds`` runs each."""
    work = Path(tempfile.mkdtemp(prefix="secure-mw-stack-"))
    results: dict[tuple[str, str], list[WrkResult]] = {}
    try:
        for server in ("uvicorn", "gunicorn"):
            kinds = ("bare", "full", "lines") if server == "uvicorn" else ("bare", "full")
            for r in range(rounds):
                for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                    with served(server, kind, work) as (url, cookie):
                        wrk(url, 1, cookie, 40)           # warm-up
                        results.setdefault((server, kind), []).append(
                            wrk(url, seconds, cookie, 40))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {}
    for key, runs in results.items():
        runs.sort(key=lambda w: w.rate)
        out[key] = runs[len(runs) // 2]
        out[key].errors = sum(w.errors for w in runs)
    return out


# -- Redis: commands and round trips per warm request -------------------------------------------

def redis_per_request(loop: asyncio.AbstractEventLoop, keys: list[str],
                      requests: int = 200) -> tuple[dict[str, float], float] | str:
    """(commands by name, socket writes) per warm signed-in request with the session and the
    rate limit in a real redis-server; or why it was skipped."""
    try:
        from tests.servers import RedisServer

        server = RedisServer()
        server.start()
    except BaseException as exc:      # pytest.skip() (no redis-server) is a BaseException
        if isinstance(exc, KeyboardInterrupt):
            raise
        return f"skipped: {exc}"
    try:
        import redis
        import redis.connection
        from redis.asyncio.connection import AbstractConnection

        fixed = time.time()
        app, cookie = starlette_full(keys, lambda: fixed, redis={"url": server.url},
                                     session={"store": "redis"},
                                     rate_limits={"store": "redis", "rules": [
                                         {"key": "ip", "limit": "1000000/second"}]})
        scope = asgi_scope(cookie)
        check_asgi(loop, app, scope, user="alice")
        run = asgi_runner(loop, app, scope)
        run(50)
        probe = redis.Redis.from_url(server.url)

        def stats() -> dict[str, int]:
            info = probe.info("commandstats")
            return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}

        writes = 0
        originals = (AbstractConnection.send_packed_command,
                     redis.connection.AbstractConnection.send_packed_command)

        async def counted(self: Any, command: Any, check_health: bool = True) -> None:
            nonlocal writes
            writes += 1
            await originals[0](self, command, check_health)

        def counted_sync(self: Any, command: Any, check_health: bool = True) -> None:
            nonlocal writes
            writes += 1
            originals[1](self, command, check_health)

        before = stats()
        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        redis.connection.AbstractConnection.send_packed_command = counted_sync  # type: ignore[method-assign]
        try:
            run(requests)
        finally:
            AbstractConnection.send_packed_command = originals[0]  # type: ignore[method-assign]
            redis.connection.AbstractConnection.send_packed_command = originals[1]  # type: ignore[method-assign]
        after = stats()
        probe.close()
        commands = {name: (after[name] - before.get(name, 0)) / requests for name in after
                    if name != "info" and after[name] != before.get(name, 0)}
        return commands, writes / requests
    finally:
        server.stop()


# -- memory ------------------------------------------------------------------------------------

def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_run(loop: asyncio.AbstractEventLoop, keys: list[str], marks: list[int],
            clients: int = 100_000) -> list[tuple[int, float]]:
    """RSS (MiB) of this process after each mark of signed-in requests through the full
    stack (the real clock), from ``clients`` different client addresses in turn."""
    app, cookie = starlette_full(keys)
    base = asgi_scope(cookie)
    addresses = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(clients)]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def requests(start: int, stop: int) -> None:
        for i in range(start, stop):
            scope = base.copy()
            scope["client"] = (addresses[i % clients], 40000)
            await app(scope, receive, send)

    out = [(0, rss_mib())]
    done = 0
    for mark in marks:
        loop.run_until_complete(requests(done, mark))
        done = mark
        out.append((mark, rss_mib()))
    return out


# -- the chart ---------------------------------------------------------------------------------

def svg_chart(rows: list[tuple[str, float, str]], title: str) -> str:
    """A horizontal bar chart: (label, µs, colour) per row."""
    width, left, bar, gap = 760, 300, 18, 8
    top = 48
    height = top + len(rows) * (bar + gap) + 30
    biggest = max(v for _, v, _ in rows) or 1.0
    scale = (width - left - 70) / biggest
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="10" y="22" font-size="15" font-weight="bold">{title}</text>']
    for i, (label, value, colour) in enumerate(rows):
        y = top + i * (bar + gap)
        length = max(value, 0.0) * scale
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar}" '
                     f'fill="{colour}"/>')
        parts.append(f'<text x="{left + length + 6:.1f}" y="{y + 13}">{value:.1f} µs</text>')
    target = left + ASGI_BUDGET_US * scale
    parts.append(f'<line x1="{target:.1f}" y1="{top - 6}" x2="{target:.1f}" '
                 f'y2="{height - 26}" stroke="#333" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{target + 4:.1f}" y="{top - 8}" fill="#333">target '
                 f'{ASGI_BUDGET_US:g} µs</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" fill="#555">µs added to one request, '
                 'in-process (median)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# -- main --------------------------------------------------------------------------------------

def _verdict(ok: bool) -> str:
    return "holds" if ok else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per case")
    parser.add_argument("--run-ms", type=float, default=40.0, help="length of one timed run")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--wrk", type=int, default=5, metavar="SECONDS",
                        help="seconds per wrk run (0: no server runs)")
    parser.add_argument("--wrk-rounds", type=int, default=3, help="wrk runs per case")
    parser.add_argument("--rss-requests", type=int, default=1_000_000,
                        help="requests of the memory run (0: none)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis count")
    parser.add_argument("--svg", type=Path, metavar="FILE", help="draw the chart into FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms = 5, 5.0
        args.wrk, args.wrk_rounds = min(args.wrk, 1), 1
        args.rss_requests = min(args.rss_requests, 20_000)
    began = time.perf_counter()
    bench = InProcess()
    bench.build(layers=True)
    print(f"secure_mw stack benchmark: Python {sys.version.split()[0]}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; in-process medians of "
          f"{args.repeats} interleaved runs of ~{args.run_ms:g} ms")
    sec = measure(bench.cases, args.repeats, args.run_ms / 1000)
    us = {key: s * 1e6 for key, s in sec.items()}
    print()
    print(f"  {'case':26}{'what':44}{'req/s':>10}{'us/req':>9}{'+us':>9}{'ratio':>8}")
    for case in bench.cases:
        line = f"  {case.key:26}{case.label:44}{1e6 / us[case.key]:>10,.0f}{us[case.key]:>9.2f}"
        if case.baseline is not None:
            base = us[case.baseline]
            line += f"{us[case.key] - base:>9.2f}{base / us[case.key]:>8.2f}"
        print(line)
    print("  (ratio: the baseline's time over the case's = the share of the bare app's "
          "requests/s kept)")
    costs = layer_costs(us)
    print("\n  per layer (left out of the full ASGI stack one at a time), us:")
    for name, cost in costs.items():
        print(f"    {name:44}{cost:>7.2f}")

    asgi_added = us["asgi-full"] - us["asgi-bare"]
    recipe_added = us["asgi-recipe"] - us["asgi-bare"]
    wsgi_added = us["flask-full"] - us["flask-bare"]
    factor = recipe_added / asgi_added if asgi_added > 0 else float("inf")
    print()
    print(f"  ASGI: the whole stack adds {asgi_added:.1f} us to a warm signed-in request "
          f"(target <= {ASGI_BUDGET_US:g}: {_verdict(asgi_added <= ASGI_BUDGET_US)})")
    floor_added = us["asgi-floor"] - us["asgi-bare"]
    print(f"    (the bare app takes {us['asgi-bare']:.1f} us here: the stack adds "
          f"{asgi_added / us['asgi-bare']:.2f}x its time, where the target, set when it took "
          f"{ISSUE_BARE_US:g} us, is {ASGI_BUDGET_US / ISSUE_BARE_US:.2f}x; a hand-written "
          f"pass of the same work adds {floor_added:.1f} us, the stack "
          f"{asgi_added / floor_added:.2f}x that)" if floor_added > 0 else "")
    print(f"  ASGI: the usual recipe adds {recipe_added:.1f} us: {factor:.1f}x ours "
          f"(target >= {RECIPE_FACTOR:g}x: {_verdict(factor >= RECIPE_FACTOR)})")
    print(f"  WSGI: the whole stack adds {wsgi_added:.1f} us over bare Flask "
          f"(target <= {WSGI_BUDGET_US:g}: {_verdict(wsgi_added <= WSGI_BUDGET_US)}); "
          f"the Flask recipe adds {us['flask-recipe'] - us['flask-bare']:.1f} us")

    if args.wrk > 0:
        if shutil.which("wrk") is None:
            print("\n  server runs skipped: wrk is not installed (apt-get install wrk)")
        else:
            print(f"\n  under real servers on loopback: wrk -t1 -c40 -d{args.wrk:g}s, median of "
                  f"{args.wrk_rounds} runs, signed-in GET /")
            runs = server_runs(args.wrk, args.wrk_rounds)
            print(f"  {'server':40}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'kept':>7}")
            targets = {"uvicorn": UVICORN_KEEPS, "gunicorn": GUNICORN_KEEPS}
            labels = {"uvicorn": "uvicorn (httptools, uvloop)",
                      "gunicorn": "gunicorn -w 1 -k gthread --threads 8"}
            for server in ("uvicorn", "gunicorn"):
                bare, full = runs[(server, "bare")], runs[(server, "full")]
                for kind, got in (("bare", bare), ("full", full)):
                    kept = f"{got.rate / bare.rate:>7.2f}" if kind == "full" else ""
                    errors = f"  ({got.errors} non-2xx)" if got.errors else ""
                    print(f"  {labels[server] + ', ' + kind:40}{got.rate:>10,.0f}"
                          f"{got.p50_ms:>9.2f}{got.p99_ms:>9.2f}{kept}{errors}")
                share = full.rate / bare.rate
                print(f"    {server}: the full stack keeps {share:.2f} of the bare app's "
                      f"requests/s (target >= {targets[server]:g}: "
                      f"{_verdict(share >= targets[server])})")
                lines = runs.get((server, "lines"))
                if lines is not None:
                    print(f"    {server}: the stack's response header lines alone (constant, "
                          f"no other work) keep {lines.rate / bare.rate:.2f} "
                          f"({lines.rate:,.0f} req/s)")

    if not args.no_redis:
        found = redis_per_request(bench.loop, bench.keys)
        print()
        if isinstance(found, str):
            print(f"  Redis count {found}")
        else:
            commands, writes = found
            listed = ", ".join(f"{name} {n:g}" for name, n in sorted(commands.items()))
            print(f"  Redis (session + rate limit in redis-server), per warm request: "
                  f"{writes:g} round trips (target <= 1: {_verdict(writes <= 1)}); "
                  f"{sum(commands.values()):g} commands run by the server ({listed}; "
                  f"INFO commandstats counts those a script runs too)")

    if args.rss_requests > 0:
        marks = sorted({min(10_000, args.rss_requests), args.rss_requests})
        points = rss_run(bench.loop, bench.keys, marks)
        shown = ", ".join(f"{n:,} requests {mib:.1f} MiB" for n, mib in points[1:])
        print(f"\n  RSS of this process, full stack, 100,000 client addresses: "
              f"start {points[0][1]:.1f} MiB; {shown}")

    if args.svg is not None:
        rows = [(name, cost, "#4c78a8") for name, cost in costs.items()]
        rows += [("secure_mw, whole stack (ASGI)", asgi_added, "#2a9d8f"),
                 ("Starlette session+secure+slowapi", recipe_added, "#e76f51"),
                 ("secure_mw, whole stack (Flask)", wsgi_added, "#2a9d8f"),
                 ("Flask session+talisman+Limiter",
                  us["flask-recipe"] - us["flask-bare"], "#e76f51")]
        args.svg.parent.mkdir(parents=True, exist_ok=True)
        args.svg.write_text(svg_chart(rows, "What each layer and each stack adds"),
                            encoding="utf-8")
        print(f"\n  chart written to {args.svg}")
    bench.loop.close()
    print(f"\n  ({time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
