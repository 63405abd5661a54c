"""Probe: parallel and sequential guesses at a guarded ``/login`` served by real servers
with several worker processes (uvicorn --workers N, gunicorn -w N), counting the passwords
the app checked (appended to a file by every worker).

* ``session.store = "cookie"`` (the fix the memory-store refusal names): regulation stays
  in each worker's memory, even with ``session.redis_url`` set, so the budget and the bans
  are per worker;
* ``session.store = "redis"``: one budget, also for two servers on one Redis.

Run: .venv/bin/python -m review.probe_workers
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from secure_mw.crypto import KeyRing
from tests.servers import RedisServer, ServerProcess, free_port

PY = sys.executable
KEY = KeyRing.new_key_text()


def command(server: str, port: int, workers: int) -> list[str]:
    if server == "uvicorn":
        return [PY, "-m", "uvicorn", "--factory", "review.worker_app:asgi_app", "--host",
                "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--log-level", "warning", "--lifespan", "off", "--no-proxy-headers"]
    return [PY, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
            "--log-level", "warning", "review.worker_app:wsgi_app()"]


def environment(count_file: Path, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({
        "REVIEW_COUNT_FILE": str(count_file), "PYTHONUNBUFFERED": "1",
        "SECURE_MW_KEYS__ENCRYPTION_KEYS": json.dumps([KEY]),
        "SECURE_MW_LOCAL_USERS__FILE": str(tmp / "users.toml"),
        "SECURE_MW_REGULATION__PATHS": json.dumps(["/login"]),
        "SECURE_MW_ACCESS_CONTROL__RULES": json.dumps([{"resources": ["^/"],
                                                        "policy": "bypass"}]),
    })
    env.update(extra)
    return env


def guess(base: str, i: int) -> int:
    with httpx.Client(timeout=60) as client:     # a connection of its own: any worker
        return client.post(base + "/login", data={"username": "alice",
                                                  "password": f"guess {i:04d}"}).status_code


def attack(bases: list[str], parallel: int, sequential: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    with ThreadPoolExecutor(min(parallel, 64)) as pool:
        for s in pool.map(lambda i: guess(bases[i % len(bases)], i), range(parallel)):
            statuses[s] = statuses.get(s, 0) + 1
    for i in range(sequential):
        s = guess(bases[i % len(bases)], 10_000 + i)
        statuses[s] = statuses.get(s, 0) + 1
    return statuses


def run(server: str, workers: int, store: str, redis_url: str | None = None,
        instances: int = 1, parallel: int = 200, sequential: int = 40) -> int:
    tmp = Path(tempfile.mkdtemp())
    count = tmp / "checked.txt"
    count.touch()
    extra = {"SECURE_MW_SESSION__STORE": store}
    if redis_url:
        extra["SECURE_MW_SESSION__REDIS_URL"] = redis_url
    processes = []
    try:
        for n in range(instances):
            port = free_port()
            p = ServerProcess(command(server, port, workers), port=port,
                              env=environment(count, tmp, **extra),
                              log=tmp / f"{server}-{n}.log")
            processes.append(p.__enter__())
        statuses = attack([p.url for p in processes], parallel, sequential)
    finally:
        for p in processes:
            p.__exit__()
    lines = count.read_text().splitlines()
    pids = {line.split()[0] for line in lines}
    where = f"{instances} server(s) x {workers} workers"
    print(f"{server:8} {where}, store={store}{' +redis_url' if redis_url else ''}: "
          f"{parallel} parallel + {sequential} sequential wrong passwords -> {len(lines)} "
          f"checked by {len(pids)} processes; answers {statuses}")
    return len(lines)


def main() -> int:
    redis_server = RedisServer()
    redis_server.start()
    bad = 0
    try:
        for server in ("gunicorn", "uvicorn"):
            bad += run(server, 4, "cookie") > 3
            bad += run(server, 4, "cookie", redis_server.url) > 3
            redis_server.flush()
            bad += run(server, 4, "redis", redis_server.url, instances=2) > 3
            redis_server.flush()
    finally:
        redis_server.stop()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
