"""Probe: one sign-in form (state + its cookie) replayed 40 times in parallel, on fresh
connections, at real servers with 4 worker processes (gunicorn -w 4, uvicorn --workers 4)
— Redis sessions (one claim for every process) and cookie sessions (each process's memory,
as docs/login.md says). Counted: sessions made (303).

Run: .venv/bin/python -m review.probe_form_replay
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from review.probe_workers import command, environment
from secure_mw.crypto import PasswordHasher
from secure_mw.login import UsersFile
from tests.apps import browser
from tests.servers import RedisServer, ServerProcess, free_port

PASSWORD = "correct horse battery"


def run(server: str, store: str, redis_url: str | None) -> Counter[int]:
    tmp = Path(tempfile.mkdtemp())
    UsersFile(tmp / "users.toml", hasher=PasswordHasher(time_cost=1, memory_cost=8192,
                                                        parallelism=1)).add(
        "alice", password=PASSWORD)
    (tmp / "checked.txt").touch()
    extra = {"SECURE_MW_SESSION__STORE": store, "SECURE_MW_SESSION__COOKIE_SECURE": "false"}
    if redis_url:
        extra["SECURE_MW_SESSION__REDIS_URL"] = redis_url
    port = free_port()
    with ServerProcess(command(server, port, 4), port=port,
                       env=environment(tmp / "checked.txt", tmp, **extra),
                       log=tmp / "server.log") as proc:
        with browser() as client:
            page = client.get(proc.url + "/.auth/login")
            state = re.search(r'name="state" value="([^"]+)"', page.text)
            assert state, page.text
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())

        def replay(_: int) -> int:
            with httpx.Client(timeout=60) as c:
                return c.post(proc.url + "/.auth/login", headers={"Cookie": cookie}, data={
                    "state": state.group(1), "username": "alice",
                    "password": PASSWORD}).status_code

        with ThreadPoolExecutor(40) as pool:
            answers = Counter(pool.map(replay, range(40)))
    print(f"{server:8} 4 workers, store={store}: 40 parallel replays of one form -> "
          f"{dict(answers)}")
    return answers


def main() -> int:
    redis_server = RedisServer()
    redis_server.start()
    bad = 0
    try:
        for server in ("gunicorn", "uvicorn"):
            bad += run(server, "redis", redis_server.url)[303] != 1
            run(server, "cookie", None)
    finally:
        redis_server.stop()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
