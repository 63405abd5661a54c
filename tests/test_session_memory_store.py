"""The memory store in several worker processes: real ``uvicorn --workers 2`` and
``gunicorn -w 2`` servers on the defaults (refused, naming the fix) and with
``session.store = "memory"`` chosen (one warning), the servers that must not be flagged
(one worker, ``--reload``, separate servers of one parent), and :class:`SiblingWorkers`
with real sibling processes and an injected clock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.login import UsersFile
from secure_mw.session import memory_store
from secure_mw.session.memory_store import SiblingWorkers, registry_directory
from tests.clock import Clock
from tests.servers import ServerProcess, free_port

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
PY = sys.executable
# Anonymous requests reach the app (a bypass rule), so a 200 names the worker (its pid).
OPEN = {"SECURE_MW_ACCESS_CONTROL__RULES": json.dumps([{"resources": ["^/"],
                                                         "policy": "bypass"}]),
        "SECURE_MW_SESSION__COOKIE_SECURE": "false"}
REFUSAL_FIX = 'session.store = "cookie"'


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update(OPEN, E2E_WORKER_CHECK_INTERVAL="0", PYTHONUNBUFFERED="1", **extra)
    return env


def _command(server: str, port: int, *extra: str, workers: int = 2) -> list[str]:
    if server == "uvicorn":
        return [PY, "-m", "uvicorn", "--factory", "tests.e2e_app:asgi_app", "--host",
                "127.0.0.1", "--port", str(port), "--workers", str(workers),
                "--log-level", "warning", "--lifespan", "off", "--no-proxy-headers", *extra]
    return [PY, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
            "--log-level", "warning", *extra, "tests.e2e_app:wsgi_app()"]


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(request: pytest.FixtureRequest) -> str:
    if request.param == "gunicorn":
        pytest.importorskip("gunicorn")
    return str(request.param)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def run(server: str, *extra: str, workers: int = 2, **env: str) -> ServerProcess:
        port = free_port()
        process = ServerProcess(_command(server, port, *extra, workers=workers), port=port,
                                env=_env(**env), log=tmp_path / f"{server}-{port}.log")
        started.append(process.__enter__())
        return process

    yield run
    for process in started:
        process.__exit__()


def _fresh_connections(url: str, count: int) -> list[httpx.Response]:
    """``count`` requests, each on its own connection (so the workers share them out)."""
    answers = []
    for _ in range(count):
        with httpx.Client(timeout=10, headers={"Accept": "application/json"}) as client:
            answers.append(client.get(url))
    return answers


def _until_both_workers(url: str, limit: int = 400) -> list[httpx.Response]:
    """Requests on new connections until two different worker pids answered 200."""
    answers: list[httpx.Response] = []
    pids: set[int] = set()
    while len(pids) < 2 and len(answers) < limit:
        [answer] = _fresh_connections(url, 1)
        answers.append(answer)
        if answer.status_code == 200:
            pids.add(answer.json()["pid"])
    assert len(pids) == 2, [a.status_code for a in answers[-10:]]
    return answers


# gunicorn's default sync worker closes every connection; gthread keeps them alive.
KEEP_ALIVE = {"uvicorn": (), "gunicorn": ("-k", "gthread", "--threads", "2",
                                          "--keep-alive", "60")}


def _pinned_clients(url: str, limit: int = 200) -> tuple[httpx.Client, httpx.Client]:
    """Two keep-alive clients whose connections reached different workers."""
    first = httpx.Client(timeout=10)
    pid = first.get(url + "/pid").json()["pid"]
    for _ in range(limit):
        other = httpx.Client(timeout=10)
        if other.get(url + "/pid").json()["pid"] != pid:
            return first, other
        other.close()
    first.close()
    pytest.fail("every connection reached the same worker")


# -- the issue: the defaults in two workers ---------------------------------------------------


def test_two_workers_on_the_defaults_refuse_and_name_the_fix(
        server: str, start: Callable[..., ServerProcess]) -> None:
    process = start(server)
    answers = _fresh_connections(process.url + "/hello", 1)
    for _ in range(40):                   # until a second worker has taken a request
        if answers[-1].status_code == 503:
            break
        answers += _fresh_connections(process.url + "/hello", 1)
    refused = answers[-1]
    assert refused.status_code == 503, [a.status_code for a in answers]
    assert refused.json()["error"] == "session_store_misconfigured"
    assert REFUSAL_FIX in refused.json()["detail"] and "redis" in refused.json()["detail"]
    # From now on both workers know: every request is refused, whichever worker takes it.
    assert {a.status_code for a in _fresh_connections(process.url + "/hello", 20)} == {503}
    page = httpx.get(process.url + "/hello", headers={"Accept": "text/html"})
    assert page.status_code == 503 and REFUSAL_FIX.replace('"', "&quot;") in page.text
    errors = [line for line in process.log().splitlines() if "refusing requests" in line]
    assert 1 <= len(errors) <= 2, process.log()         # once per worker process
    assert REFUSAL_FIX in errors[0] and re.search(r"pids \d+, \d+", errors[0])


def test_two_workers_with_memory_chosen_warn_once_and_serve(
        server: str, start: Callable[..., ServerProcess], tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11")
    process = start(server, *KEEP_ALIVE[server], SECURE_MW_SESSION__STORE="memory",
                    SECURE_MW_LOCAL_USERS__FILE=str(users.path),
                    SECURE_MW_KEYS__ENCRYPTION_KEYS=KeyRing.new_key_text())
    answers = _until_both_workers(process.url + "/hello")
    answers += _fresh_connections(process.url + "/hello", 10)
    assert {a.status_code for a in answers} == {200}
    warnings = [line for line in process.log().splitlines()
                if 'session.store = "memory" while several worker processes' in line]
    assert 1 <= len(warnings) <= 2, process.log()       # one per worker, never again
    # What the warning is about, shown: the session made in one worker is unknown to the
    # other (which is why the default refuses).
    first, other = _pinned_clients(process.url)
    try:
        form = first.get(process.url + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state
        first.post(process.url + "/.auth/login", data={
            "state": state.group(1), "username": "alice", "password": "quartz falcon 11"})
        assert first.get(process.url + "/me-as-seen").json()["authenticated"] is True
        other.cookies = first.cookies
        assert other.get(process.url + "/me-as-seen").json()["authenticated"] is False
    finally:
        first.close()
        other.close()


def test_two_workers_sign_with_the_same_key_derived_from_the_key_ring(
        server: str, start: Callable[..., ServerProcess]) -> None:
    ring = [KeyRing.new_key_text(), KeyRing.new_key_text()]
    process = start(server, *KEEP_ALIVE[server], SECURE_MW_SESSION__STORE="cookie",
                    SECURE_MW_KEYS__ENCRYPTION_KEYS=",".join(ring))
    first, other = _pinned_clients(process.url)
    try:
        documents = [c.get(process.url + "/.well-known/secure-mw/jwks.json").json()
                     for c in (first, other)]
    finally:
        first.close()
        other.close()
    assert documents[0] == documents[1]
    assert len(documents[0]["keys"]) == 2          # one per ring key: rotation verifies
    from secure_mw.tokens.headers import derived_signing_jwks
    from secure_mw.tokens.keys import public_jwks

    assert documents[0] == public_jwks(derived_signing_jwks(KeyRing.from_strings(ring)))
    assert "signed with a key made at start-up" not in process.log()


# -- what must not be flagged -----------------------------------------------------------------


def test_one_worker_is_not_flagged(server: str, start: Callable[..., ServerProcess]) -> None:
    process = start(server, workers=1)
    answers = _fresh_connections(process.url + "/hello", 10)
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["pid"] for a in answers}) == 1
    assert "worker processes" not in process.log()


def test_separate_servers_of_one_parent_are_not_flagged(
        start: Callable[..., ServerProcess]) -> None:
    """As the test suite itself runs them: single-process servers, one parent, two ports."""
    one = start("uvicorn", workers=1)
    two = start("uvicorn", workers=1)
    for process in (one, two, one, two):
        assert {a.status_code for a in _fresh_connections(process.url + "/x", 3)} == {200}
    assert "worker processes" not in one.log() + two.log()


def test_uvicorn_reload_is_not_flagged(start: Callable[..., ServerProcess],
                                       tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "trigger.py").write_text("x = 1\n")
    process = start("uvicorn", "--reload", "--reload-dir", str(watched), workers=1)
    [before] = _fresh_connections(process.url + "/x", 1)
    assert before.status_code == 200
    (watched / "trigger.py").write_text("x = 2\n")      # the reloader starts a new worker
    import time

    deadline = time.monotonic() + 60
    after = before
    while after.json().get("pid") == before.json()["pid"] and time.monotonic() < deadline:
        try:
            [after] = _fresh_connections(process.url + "/x", 1)
        except httpx.TransportError:   # between the old worker and the new one
            time.sleep(0.05)
            continue
        time.sleep(0.05)
    assert after.status_code == 200 and after.json()["pid"] != before.json()["pid"]
    assert {a.status_code for a in _fresh_connections(process.url + "/x", 5)} == {200}
    assert "worker processes" not in process.log()


# -- SiblingWorkers with real processes ---------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from secure_mw.session.memory_store import SiblingWorkers
workers = SiblingWorkers("sid", explicit=sys.argv[3] == "explicit",
                         directory=Path(sys.argv[1]), interval=0)
for line in sys.stdin:
    problem = workers.check(sys.argv[2])
    print("refused" if problem else "ok", *workers.siblings, flush=True)
"""


class _Child:
    """A process that checks for siblings each time it is told to (a line on stdin)."""

    def __init__(self, directory: Path, server: str = "8000", *, explicit: bool = False
                 ) -> None:
        root = Path(__file__).resolve().parent.parent
        self.errors = directory.parent / f"child-{len(list(directory.parent.iterdir()))}.err"
        with open(self.errors, "w") as errors:
            self.proc = subprocess.Popen(
                [PY, "-c", _CHILD, str(directory), server, "explicit" if explicit else "-"],
                cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                text=True)

    def check(self) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Callable[..., _Child]]:
    made: list[_Child] = []
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)

    def make(server: str = "8000", *, explicit: bool = False) -> _Child:
        made.append(_Child(registry, server, explicit=explicit))
        return made[-1]

    yield make
    for child in made:
        child.stop()


def test_siblings_of_one_parent_and_port_see_each_other(
        children: Callable[..., _Child]) -> None:
    a, b = children(), children()
    assert a.check() == "ok"                            # alone so far
    assert b.check() == f"refused {a.proc.pid}"
    assert a.check() == f"refused {b.proc.pid}"
    c = children("9000")                                # another server of the same parent
    assert c.check() == "ok"
    a.stop()                                            # gone (and reaped): not counted
    assert b.check() == "ok"


def test_a_zombie_sibling_does_not_count(children: Callable[..., _Child]) -> None:
    a, b = children(), children()
    assert a.check() == "ok" and b.check().startswith("refused")
    a.proc.kill()
    os.waitid(os.P_PID, a.proc.pid, os.WEXITED | os.WNOWAIT)   # dead, not yet reaped
    assert b.check() == "ok"
    a.proc.wait()


def test_the_check_runs_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock(100.0)
    workers = SiblingWorkers("sid", explicit=False, directory=tmp_path, clock=clock,
                             interval=5.0)
    registry = next(iter(tmp_path.iterdir()), None)
    assert registry is None
    assert workers.check("8000") is None
    [registry] = tmp_path.iterdir()
    fake = subprocess.Popen([PY, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        # A process that is not our sibling (another parent) never counts.
        registry.write_text(f"{os.getpid()}\n{fake.pid}\n")
        clock.advance(10)
        assert workers.check("8000") is None and workers.siblings == ()
    finally:
        fake.kill()
        fake.wait()
    registry.write_text(f"{os.getpid()}\n")
    clock.advance(4.9)
    assert workers.check("8000") is None and registry.read_text() == f"{os.getpid()}\n"


def test_an_explicit_memory_store_only_warns_once(children: Callable[..., _Child]) -> None:
    a, b = children(explicit=True), children(explicit=True)
    assert a.check() == "ok"
    for _ in range(3):
        assert b.check() == f"ok {a.proc.pid}"         # siblings seen, requests served
    b.stop()
    warnings = [line for line in b.errors.read_text().splitlines() if "several worker" in line]
    assert len(warnings) == 1 and 'session.store = "memory"' in warnings[0]


def test_an_unsafe_registry_directory_is_not_used(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    shared = tmp_path / f"secure-mw-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert registry_directory() is None
    shared.chmod(0o700)
    assert registry_directory() == shared
    shared.rmdir()
    shared.symlink_to(tmp_path)
    assert registry_directory() is None


def test_requests_without_a_listening_address_are_not_checked() -> None:
    from secure_mw.http import RequestView
    from secure_mw.session.manager import SessionManager
    from secure_mw.settings import Settings

    manager = SessionManager(Settings.from_mapping({}).session, keyring=KeyRing.generate())
    assert manager.workers is not None and not manager.workers.explicit
    view = RequestView("GET", "http", "127.0.0.1", "/", "", {}, "127.0.0.1")
    assert view.server == "" and manager.worker_refusal(view) is None


def test_the_memory_store_default_is_told_apart_from_a_chosen_one() -> None:
    from secure_mw.settings import Settings

    assert not Settings.from_mapping({}).session.store_explicit
    assert Settings.from_mapping({"session": {"store": "memory"}}).session.store_explicit
    assert Settings.from_mapping({}, environ={"SECURE_MW_SESSION__STORE": "memory"}
                                 ).session.store_explicit
    assert memory_store.CHECK_INTERVAL > 0
