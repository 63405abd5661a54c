"""Probe: the built-in login (``/.auth/login``) under real servers with 4 workers each, two
servers on one redis-server (Redis sessions): 200 parallel wrong passwords for alice, each
with a form of its own, then the right one. Counted from the audit lines in the servers'
output: attempts judged (``invalid credentials``) and refused (``banned``, ``in flight``).

Run: .venv/bin/python -m review.probe_builtin_workers
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from review.probe_workers import command, environment
from secure_mw.crypto import PasswordHasher
from secure_mw.login import UsersFile
from tests.apps import browser
from tests.servers import RedisServer, ServerProcess, free_port

PASSWORD = "correct horse battery"


def attempt(base: str, password: str) -> int:
    with browser() as client:
        page = client.get(base + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', page.text)
        assert state, page.text[:300]
        return client.post(base + "/.auth/login", data={
            "state": state.group(1), "username": "alice", "password": password}).status_code


def run(server: str, redis_url: str) -> tuple[int, Counter[int], int]:
    tmp = Path(tempfile.mkdtemp())
    UsersFile(tmp / "users.toml", hasher=PasswordHasher(time_cost=1, memory_cost=8192,
                                                        parallelism=1)).add(
        "alice", password=PASSWORD)
    (tmp / "checked.txt").touch()
    extra = {"SECURE_MW_SESSION__STORE": "redis", "SECURE_MW_SESSION__REDIS_URL": redis_url}
    procs = []
    try:
        for n in range(2):
            port = free_port()
            procs.append(ServerProcess(command(server, port, 4), port=port,
                                       env=environment(tmp / "checked.txt", tmp, **extra),
                                       log=tmp / f"server{n}.log").__enter__())
        bases = [p.url for p in procs]
        with ThreadPoolExecutor(50) as pool:
            answers = Counter(pool.map(lambda i: attempt(bases[i % 2], f"guess {i}"),
                                       range(200)))
        last = attempt(bases[0], PASSWORD)
    finally:
        for p in procs:
            p.__exit__()
    logs = "".join((tmp / f"server{n}.log").read_text() for n in range(2))
    judged = logs.count('"reason":"invalid credentials"')
    return judged, answers, last


def main() -> int:
    server_ = RedisServer()
    server_.start()
    bad = 0
    try:
        for server in ("gunicorn", "uvicorn"):
            server_.flush()
            judged, answers, last = run(server, server_.url)
            print(f"{server:8} 2 servers x 4 workers on one Redis: 200 parallel wrong -> "
                  f"{dict(answers)}, {judged} judged; the right one then -> {last}")
            bad += judged > 3 or last == 303
    finally:
        server_.stop()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
