"""Requests per second of a warm signed-in request through ``protect()`` on each server-side
store: memory (one process), SQLite (every worker of one host) and Redis (several hosts).

In-process, no HTTP server (the harness of benchmarks/sessions.py): the whole stack —
Host allow-list, headers, client address, redirect guard, session, rules, signed assertion —
with the session in the store named, ASGI and WSGI; and the same with a rate limit by
address kept in that store (memory, SQLite, Redis). All cases are timed in one interleaved
loop; each figure is the median of the repeats, each ratio against the memory store of the
same flavour in the same run. The store round trips of a warm request are counted too (SQL
statements traced on the connection; Redis commands from INFO). The Redis cases are skipped
when redis-server is not installed.

::

    python -m benchmarks.stores            # or: python3 dev.py bench stores
    python -m benchmarks.stores --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import secure_mw.asgi
import secure_mw.wsgi
from benchmarks.sessions import (
    CLAIMS,
    Bench,
    Case,
    _wsgi_hello,
    asgi_runner,
    asgi_scope,
    check_asgi,
    check_wsgi,
    measure,
    starlette_app,
    wsgi_environ,
    wsgi_runner,
)
from secure_mw import Settings
from secure_mw._sqlite import Database
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie

STORES = ("memory", "sqlite", "redis")


class Stores(Bench):
    """The cases of every store; what must be closed at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="secure-mw-bench-"))
        self.trips: dict[str, float] = {}
        self._closers: list[Callable[[], None]] = []

    def settings(self, store: str, *, limited: bool) -> Settings:
        data: dict[str, Any] = {
            "oidc": {"issuer": "https://idp.example.com", "client_id": "bench",
                     "client_secret": "bench-secret"},
            "keys": {"encryption_keys": self.keys},
            "server": {"allowed_hosts": ["app.example.com"]},
            "session": {"store": store if store != "memory" else "memory"},
        }
        if limited:
            data["rate_limits"] = {"store": store, "rules": [
                {"key": "ip", "limit": "1000000000/second"}]}
        if store == "sqlite":
            data["sqlite"] = {"path": str(self.directory / f"store-{limited}.sqlite3")}
        if store == "redis":
            data["session"]["redis_url"] = self.redis_server.url
            data["session"]["redis_key_prefix"] = f"bench{int(limited)}:"
        return Settings.from_mapping(data, environ={})

    def build_stores(self, *, with_redis: bool) -> None:
        now = time.time()

        def fixed() -> float:
            return now

        stores = list(STORES)
        if with_redis:
            try:
                from tests.servers import RedisServer

                self.redis_server = RedisServer()
                self.redis_server.start()
            except BaseException as exc:   # pytest.skip(): no redis-server
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.notes.append(f"redis cases skipped: {exc}")
                stores.remove("redis")
        else:
            stores.remove("redis")
        for limited in (False, True):
            suffix = "+limit" if limited else ""
            for flavour in ("asgi", "wsgi"):
                for store in stores:
                    settings = self.settings(store, limited=limited)
                    given = MemorySessionStore(clock=fixed) if store == "memory" else None
                    module = secure_mw.asgi if flavour == "asgi" else secure_mw.wsgi
                    inner = starlette_app() if flavour == "asgi" else _wsgi_hello
                    stack = module.protect(inner, settings, store=given, clock=fixed)
                    cookie = session_cookie(settings, CLAIMS, store=given)
                    key = f"{flavour}-{store}{suffix}"
                    baseline = f"{flavour}-memory{suffix}"
                    if flavour == "asgi":
                        scope = asgi_scope(cookie)
                        check_asgi(self.loop, stack, scope, user="alice")
                        run = asgi_runner(self.loop, stack, scope)
                    else:
                        environ = wsgi_environ(cookie)
                        check_wsgi(stack, environ, user="alice")
                        run = wsgi_runner(stack, environ)
                    label = f"{flavour.upper()} protect(), {store} store" + (
                        f", rate limit in {store}" if limited else "")
                    self.cases.append(Case(key, label, run,
                                           baseline if key != baseline else None))
                    if store != "memory":
                        self.trips[key] = self._round_trips(store, settings, run)

    def _round_trips(self, store: str, settings: Settings, run: Callable[[int], float]
                     ) -> float:
        requests = 200
        if store == "sqlite":
            from secure_mw._sqlite import database_from_settings

            db: Database = database_from_settings(settings.sqlite)
            calls = {"read": 0, "write": 0, "transaction": 0}

            def counted(name: str) -> Any:
                real = getattr(db, name)

                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    calls[name] += 1
                    return real(*args, **kwargs)
                return wrapper

            run(10)
            for name in calls:
                setattr(db, name, counted(name))
            try:
                run(requests)
            finally:
                for name in calls:
                    delattr(db, name)
            per = {k: v / requests for k, v in calls.items()}
            self.notes.append(
                f"sqlite{' +limit' if settings.rate_limits.rules else ''}: per request "
                f"{per['read']:.2f} reads, {per['write']:.2f} single-statement writes, "
                f"{per['transaction']:.2f} BEGIN IMMEDIATE transactions")
            return sum(per.values())
        import redis

        probe = redis.Redis.from_url(self.redis_server.url)
        try:
            def count() -> int:
                return int(probe.info("stats")["total_commands_processed"])

            run(10)
            idle = count()
            idle = count() - idle
            before = count()
            run(requests)
            return (count() - before - idle) / requests
        finally:
            probe.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def wrk_runs(seconds: float, stores: list[str]) -> None:
    """Requests/s of ``wrk`` against ``gunicorn -w 2 -k gthread`` serving tests.e2e_app, a
    warm signed-in GET per store (the cookie store stands in for memory, whose sessions
    would live in one worker only). One run per store, in turn."""
    import json
    import os
    import re
    import subprocess

    import httpx

    from secure_mw.crypto import PasswordHasher
    from secure_mw.login import UsersFile
    from tests.servers import RedisServer, ServerProcess, free_port

    work = Path(tempfile.mkdtemp(prefix="secure-mw-wrk-"))
    users = UsersFile(work / "users.toml", hasher=PasswordHasher(
        time_cost=1, memory_cost=8 * 1024, parallelism=1))
    users.add("alice", password="quartz falcon 11")
    redis_server = None
    print(f"\n  wrk -t2 -c16 -d{seconds:g}s against gunicorn -w 2 -k gthread --threads 4 "
          "(tests.e2e_app), warm signed-in GET /x")
    try:
        for store in stores:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
            env.update({
                "SECURE_MW_SESSION__STORE": store, "SECURE_MW_SESSION__COOKIE_SECURE": "false",
                "SECURE_MW_LOCAL_USERS__FILE": str(users.path),
                "SECURE_MW_KEYS__ENCRYPTION_KEYS": KeyRing.new_key_text(),
                "SECURE_MW_ACCESS_CONTROL__RULES": json.dumps([{"policy": "authenticated"}]),
                "PYTHONUNBUFFERED": "1"})
            if store == "sqlite":
                env["SECURE_MW_SQLITE__PATH"] = str(work / "state" / "store.sqlite3")
            if store == "redis":
                if redis_server is None:
                    redis_server = RedisServer()
                    redis_server.start()
                env["SECURE_MW_SESSION__REDIS_URL"] = redis_server.url
            port = free_port()
            args = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads",
                    "4", "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                    "tests.e2e_app:wsgi_app()"]
            with ServerProcess(args, port=port, env=env, log=work / f"{store}.log") as server:
                with httpx.Client(timeout=10) as client:
                    form = client.get(server.url + "/.auth/login")
                    state = re.search(r'name="state" value="([^"]+)"', form.text)
                    assert state, form.text[:300]
                    client.post(server.url + "/.auth/login", data={
                        "state": state.group(1), "username": "alice",
                        "password": "quartz falcon 11"})
                    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
                    assert client.get(server.url + "/x").status_code == 200
                out = subprocess.run(
                    ["wrk", "-t2", "-c16", f"-d{seconds:g}s", "-H", f"Cookie: {cookie}",
                     server.url + "/x"], capture_output=True, text=True, check=True).stdout
            rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            print(f"  {store:8}{float(rate.group(1)) if rate else float('nan'):>12,.0f} req/s"
                  + (f"  ({bad.group(1)} non-2xx)" if bad else ""))
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed runs per case")
    parser.add_argument("--run-ms", type=float, default=40.0, help="length of one timed run")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run (5 repeats of 5 ms)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis cases")
    parser.add_argument("--wrk", type=float, metavar="SECONDS", default=0.0,
                        help="also run wrk for SECONDS per store against gunicorn -w 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms = 5, 5.0
    began = time.perf_counter()
    bench = Stores()
    try:
        bench.build_stores(with_redis=not args.no_redis)
        print(f"secure_mw store benchmark: in-process warm signed-in GET / through protect(), "
              f"median of {args.repeats} interleaved runs of ~{args.run_ms:g} ms; Python "
              f"{sys.version.split()[0]}")
        sec = measure(bench.cases, args.repeats, args.run_ms / 1000)
        print()
        print(f"  {'case':20}{'config':52}{'us/req':>9}{'req/s':>10}{'vs memory':>11}"
              f"{'trips':>7}")
        for case in bench.cases:
            us = sec[case.key] * 1e6
            line = f"  {case.key:20}{case.label:52}{us:>9.2f}{1 / sec[case.key]:>10,.0f}"
            if case.baseline is not None:
                line += f"{sec[case.baseline] / sec[case.key]:>10.2f}x"
            else:
                line += f"{'1.00x':>11}"
            if case.key in bench.trips:
                line += f"{bench.trips[case.key]:>7.2f}"
            print(line)
        print()
        for note in bench.notes:
            print(f"  {note}")
        print("  trips: store calls (sqlite: one statement or one transaction each) or Redis "
              "commands per warm request")
    finally:
        bench.close()
    if args.wrk > 0:
        if shutil.which("wrk") is None:
            print("\n  wrk is not installed: no server runs")
        else:
            wrk_runs(args.wrk, ["cookie", "sqlite"] + ([] if args.no_redis else ["redis"]))
    print(f"\n  ({time.perf_counter() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
