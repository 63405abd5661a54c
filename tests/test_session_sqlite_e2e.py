"""The SQLite store with real multi-worker servers (``uvicorn --workers 2``, ``gunicorn -w
2``): a login made at one worker works at the other, a logout at one ends it at the other, a
rate limit is exact across workers under parallel requests, the login guard's budget is
shared, sessions survive a restart, and a database locked by another process gives 503 with
Retry-After (fail closed), never a 500."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from secure_mw.crypto import KeyRing
from secure_mw.login import UsersFile
from tests.servers import ServerProcess, free_port
from tests.test_login_guard_e2e import checked, guess_on, login_command, login_env
from tests.test_session_memory_store import (
    FAST,
    KEEP_ALIVE,
    _command,
    _env,
    _fresh_connections,
    _pinned_clients,
)

PASSWORD = "quartz falcon 11"


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(request: pytest.FixtureRequest) -> str:
    if request.param == "gunicorn":
        pytest.importorskip("gunicorn")
    return str(request.param)


@pytest.fixture
def deployment(tmp_path: Path) -> dict[str, str]:
    """The environment of a deployment on the sqlite store, with a user alice."""
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password=PASSWORD)
    return {"SECURE_MW_SESSION__STORE": "sqlite",
            "SECURE_MW_SQLITE__PATH": str(tmp_path / "state" / "secure-mw.sqlite3"),
            "SECURE_MW_LOCAL_USERS__FILE": str(users.path),
            "SECURE_MW_KEYS__ENCRYPTION_KEYS": KeyRing.new_key_text()}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def run(server: str, *extra: str, **env: str) -> ServerProcess:
        port = free_port()
        process = ServerProcess(_command(server, port, *extra), port=port, env=_env(**env),
                                log=tmp_path / f"{server}-{port}.log")
        started.append(process.__enter__())
        return process

    yield run
    for process in started:
        process.__exit__()


def _login(client: httpx.Client, base: str) -> None:
    form = client.get(base + "/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state, form.text[:500]
    answer = client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": "alice", "password": PASSWORD})
    assert answer.status_code == 303, answer.text[:500]


def test_a_login_and_a_logout_at_one_worker_hold_at_the_other(
        server: str, start: Callable[..., ServerProcess], deployment: dict[str, str]) -> None:
    process = start(server, *KEEP_ALIVE[server], **deployment)
    first, other = _pinned_clients(process.url)
    try:
        _login(first, process.url)
        signed_in = dict(first.cookies)
        other.cookies = httpx.Cookies(signed_in)
        seen = other.get(process.url + "/me-as-seen").json()
        assert seen["authenticated"] is True
        assert other.get(process.url + "/pid").json()["pid"] != \
            first.get(process.url + "/pid").json()["pid"]
        csrf = other.get(process.url + "/.auth/me").json()["csrf_token"]
        assert other.post(process.url + "/.auth/logout", data={"csrf": csrf}).status_code == 303
        first.cookies = httpx.Cookies(signed_in)      # the copy from before the sign-out
        assert first.get(process.url + "/me-as-seen").json()["authenticated"] is False
    finally:
        first.close()
        other.close()
    log = process.log()
    assert "worker processes" not in log and "Traceback" not in log
    path = Path(deployment["SECURE_MW_SQLITE__PATH"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_rate_limit_is_exact_across_two_workers(
        server: str, start: Callable[..., ServerProcess], deployment: dict[str, str]) -> None:
    """10/minute: of 50 parallel requests (each on its own connection, so both workers take
    them) exactly 10 pass; in memory each worker would let its own 10 through."""
    rules = json.dumps([{"key": "route", "limit": "10/minute", "paths": ["^/limited"]}])
    process = start(server, SECURE_MW_RATE_LIMITS__RULES=rules, **deployment)

    def one(_: int) -> tuple[int, int | None]:
        [answer] = _fresh_connections(process.url + "/limited", 1)
        return answer.status_code, answer.json().get("pid") if answer.status_code == 200 \
            else None

    with ThreadPoolExecutor(25) as pool:
        results = list(pool.map(one, range(50)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 40, statuses
    assert "Traceback" not in process.log()


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_the_login_guard_budget_is_shared_by_two_workers(server: str,
                                                         tmp_path: Path) -> None:
    """60 parallel wrong passwords at two workers: the pair's budget of 3 is judged, once
    (each worker's own memory would judge 3 each)."""
    port = free_port()
    env = login_env(tmp_path, SECURE_MW_SESSION__STORE="sqlite",
                    SECURE_MW_SQLITE__PATH=str(tmp_path / "secure-mw.sqlite3"))
    with ServerProcess(login_command(server, 2, port=port), port=port, env=env,
                       log=tmp_path / "server.log") as process:
        with ThreadPoolExecutor(30) as pool:
            statuses = list(pool.map(lambda n: guess_on(process.url, n), range(60)))
        statuses += [guess_on(process.url, 100 + n) for n in range(10)]
        log = process.log()
    lines = checked(tmp_path)
    assert len(lines) == 3, lines
    assert set(statuses) <= {401, 429}, statuses
    assert "kept in this process's memory" not in log and "Traceback" not in log


def test_sessions_survive_a_restart(start: Callable[..., ServerProcess],
                                    deployment: dict[str, str]) -> None:
    before = start("uvicorn", **deployment)
    with httpx.Client(timeout=10) as client:
        _login(client, before.url)
        cookies = dict(client.cookies)
    before.__exit__()
    after = start("gunicorn", **deployment)          # another server, the same file
    with httpx.Client(timeout=10, cookies=cookies) as client:
        assert client.get(after.url + "/me-as-seen").json()["authenticated"] is True


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_database_locked_by_another_process_is_503_with_retry_after(
        server: str, start: Callable[..., ServerProcess], deployment: dict[str, str]) -> None:
    """Another process holds an exclusive transaction: signed-in reads still answer (WAL
    readers take no lock), a sign-in (it writes) gets 503 with Retry-After once the short
    busy_timeout has passed, and everything works again once the lock is gone."""
    process = start(server, SECURE_MW_SQLITE__BUSY_TIMEOUT="50ms", **deployment)
    with httpx.Client(timeout=10) as client, httpx.Client(timeout=10) as newcomer:
        _login(client, process.url)
        form = newcomer.get(process.url + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state
        holder = subprocess.Popen([sys.executable, "-c", HOLDER,
                                   deployment["SECURE_MW_SQLITE__PATH"]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            assert client.get(process.url + "/me-as-seen").json()["authenticated"] is True
            refused = newcomer.post(process.url + "/.auth/login", data={
                "state": state.group(1), "username": "alice", "password": PASSWORD})
            assert refused.status_code == 503, refused.text[:300]
            assert int(refused.headers["retry-after"]) >= 1
        finally:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.close()
            holder.wait(10)
        _login(newcomer, process.url)
        assert newcomer.get(process.url + "/me-as-seen").json()["authenticated"] is True
    log = process.log()
    assert "Traceback" not in log
    assert deployment["SECURE_MW_KEYS__ENCRYPTION_KEYS"] not in log


def test_a_totp_code_used_at_one_worker_is_refused_at_the_other(
        server: str, start: Callable[..., ServerProcess], deployment: dict[str, str],
        tmp_path: Path) -> None:
    from secure_mw.login.totp import TOTP, FileTOTPStore, SecretBox

    key = deployment["SECURE_MW_KEYS__ENCRYPTION_KEYS"]
    secret = TOTP.new_secret()
    FileTOTPStore(tmp_path / "totp.json").set(
        "alice", SecretBox(KeyRing.from_strings([key])).seal("alice", secret))
    process = start(server, *KEEP_ALIVE[server],
                    SECURE_MW_LOCAL_USERS__TOTP_FILE=str(tmp_path / "totp.json"), **deployment)
    first, other = _pinned_clients(process.url)
    try:
        answers = []
        code = TOTP(issuer="secure_mw").code(secret)
        for client in (first, other):
            _login(client, process.url)
            page = client.get(process.url + "/.auth/2fa")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf and 'name="code"' in page.text, page.text[:300]
            answers.append(client.post(process.url + "/.auth/2fa",
                                       data={"csrf": csrf.group(1), "code": code}))
        assert [a.status_code for a in answers] == [303, 401]
        assert first.get(process.url + "/.auth/me").json()["auth_level"] == 2
        assert other.get(process.url + "/.auth/me").json()["auth_level"] == 1
    finally:
        first.close()
        other.close()
    assert "Traceback" not in process.log()
