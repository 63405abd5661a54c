"""The memory store in several worker processes: real ``uvicorn --workers 2`` and
``gunicorn -w 2`` servers on the defaults (refused, naming the fix) and with
``session.store = "memory"`` chosen (one warning), the servers that must not be flagged
(one worker, ``--reload``, separate servers of one parent), and :class:`SiblingWorkers`
with real sibling processes and an injected clock."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.login import UsersFile
from secure_mw.session import memory_store
from secure_mw.session.memory_store import SiblingWorkers, registry_directory
from tests.clock import Clock
from tests.servers import RedisServer, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
PY = sys.executable
# Anonymous requests reach the app (a bypass rule), so a 200 names the worker (its pid).
OPEN = {"SECURE_MW_ACCESS_CONTROL__RULES": json.dumps([{"resources": ["^/"],
                                                         "policy": "bypass"}]),
        "SECURE_MW_SESSION__COOKIE_SECURE": "false"}
# What works with several workers; the cookie store alone cannot share sign-outs or refreshes.
REFUSAL_FIX = ('The simplest fix on one host: session.store = "sqlite" with sqlite.path (a '
               'file every worker shares)')


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
    for _ in range(400):     # until both workers have served since the other came
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
    warning = 'session.store = "memory" while several worker processes'
    answers = _until_both_workers(process.url + "/hello")
    # A worker sees the other once that one has served since it came: whichever answers next.
    for _ in range(400):
        if warning in process.log():
            break
        answers += _fresh_connections(process.url + "/hello", 1)
    answers += _fresh_connections(process.url + "/hello", 10)
    assert {a.status_code for a in answers} == {200}
    warnings = [line for line in process.log().splitlines() if warning in line]
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


def _status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_two_workers_on_a_unix_socket_refuse(tmp_path: Path) -> None:
    """gunicorn -w 2 bound to a Unix socket (behind nginx): the socket path is the address.

    The kernel may hand every new connection to the same idle worker, so each round holds one
    worker on a request whose headers are not finished yet: the other request of the round can
    only be served by the other worker (a sync worker serves one connection at a time)."""
    pytest.importorskip("gunicorn")
    path = str(tmp_path / "app.sock")
    args = [PY, "-m", "gunicorn", "-w", "2", "-b", f"unix:{path}", "--log-level", "warning",
            "tests.e2e_app:wsgi_app()"]
    with ServerProcess(args, port=path, env=_env(), log=tmp_path / "gunicorn.log") as process:
        statuses: list[int] = []
        for _ in range(10):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
                held.settimeout(10)
                held.connect(path)
                held.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n")   # not finished
                with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=10) as client:
                    statuses.append(client.get(process.url + "/x").status_code)
                held.sendall(b"Connection: close\r\n\r\n")
                answer = b""
                while chunk := held.recv(65536):
                    answer += chunk
                statuses.append(_status_of(answer))
            if 503 in statuses[-2:]:
                break
        assert statuses[-1] == 503 or statuses[-2] == 503, statuses
        assert f"socket {path!r}" in process.log()


def test_the_cookie_store_with_redis_shares_sign_outs_between_workers(
        server: str, start: Callable[..., ServerProcess], tmp_path: Path,
        redis_server: RedisServer) -> None:
    """What the refusal names works with several workers: a session signed out at one
    worker is refused at the other (with the cookie store alone, only the worker that served
    the sign-out would know)."""
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11")
    process = start(server, *KEEP_ALIVE[server], SECURE_MW_SESSION__STORE="cookie",
                    SECURE_MW_SESSION__REDIS_URL=redis_server.url,
                    SECURE_MW_LOCAL_USERS__FILE=str(users.path),
                    SECURE_MW_KEYS__ENCRYPTION_KEYS=KeyRing.new_key_text())
    first, other = _pinned_clients(process.url)
    try:
        form = first.get(process.url + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state
        first.post(process.url + "/.auth/login", data={
            "state": state.group(1), "username": "alice", "password": "quartz falcon 11"})
        signed_in = dict(first.cookies)
        other.cookies = httpx.Cookies(signed_in)
        assert other.get(process.url + "/me-as-seen").json()["authenticated"] is True
        csrf = first.get(process.url + "/.auth/me").json()["csrf_token"]
        assert first.post(process.url + "/.auth/logout", data={"csrf": csrf}).status_code == 303
        other.cookies = httpx.Cookies(signed_in)          # the copy from before the sign-out
        assert other.get(process.url + "/me-as-seen").json()["authenticated"] is False
    finally:
        first.close()
        other.close()
    assert "worker processes" not in process.log()


_TEST_PROCESS = r"""
import sys
from secure_mw import Settings, asgi, wsgi
from secure_mw.session import memory_store
memory_store.CHECK_INTERVAL = 0          # a suite runs longer than the 5 s interval anyway
settings = Settings.from_mapping({"server": {"allowed_hosts": ["testserver", "localhost"]},
    "access_control": {"rules": [{"resources": ["^/"], "policy": "bypass"}]}}, environ={})
if sys.argv[1] == "asgi":
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    client = TestClient(asgi.protect(
        Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))]), settings))
else:
    from werkzeug.test import Client
    def inner(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    client = Client(wsgi.protect(inner, settings))
for line in sys.stdin:                   # one test of this process's share of the suite
    print(client.get("/").status_code, flush=True)
"""


@pytest.mark.parametrize("flavour", ["asgi", "wsgi"])
def test_test_processes_of_one_parent_with_test_clients_are_not_flagged(
        flavour: str, tmp_path: Path) -> None:
    """An app's own suite in several processes of one parent (pytest-xdist, Django's
    ``test --parallel``), each with an in-process test client (Starlette's TestClient,
    werkzeug's Client), whose requests name port 80: no server, no shared listening socket,
    and each memory store serves its own tests correctly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)      # a registry of this test's own
    procs = [subprocess.Popen([PY, "-c", _TEST_PROCESS, flavour], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    answers = []
    try:
        for _ in range(3):
            for proc in procs:                   # interleaved, as parallel tests run
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("\n")
                proc.stdin.flush()
                answers.append(proc.stdout.readline().strip())
    finally:
        errors = ""
        for proc in procs:
            proc.kill()
            errors += proc.communicate()[1]
    assert answers == ["200"] * 9, errors
    assert "worker processes" not in errors


def _release(fifo: Path) -> None:
    with contextlib.suppress(OSError):        # ENXIO: nobody waits on it (any more)
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("worker", ["gthread", "sync"])
def test_gunicorn_with_one_worker_reloaded_during_a_request_is_not_flagged(
        tmp_path: Path, worker: str) -> None:
    """``gunicorn -w 1`` gets SIGHUP while a request is in flight (a download, a long poll):
    the new worker serves while the old one finishes it. The old one still holds the
    listening socket (gthread stops polling it; a sync worker is busy) but takes no new
    request: every request to the new one — health checks included — is answered."""
    pytest.importorskip("gunicorn")
    port = free_port()
    release = tmp_path / "release"
    os.mkfifo(release)
    threads = ["--threads", "4"] if worker == "gthread" else []
    args = [PY, "-m", "gunicorn", "-w", "1", "-k", worker, *threads, "--graceful-timeout",
            "60", "-b", f"127.0.0.1:{port}", "tests.e2e_app:wsgi_hold_app()"]
    api = {"Accept": "application/json"}
    with ServerProcess(args, port=port, env=_env(), log=tmp_path / "gunicorn.log") as server:
        old = httpx.get(server.url + "/x", headers=api, timeout=10)
        assert old.status_code == 200
        held: list[int] = []
        hold = threading.Thread(target=lambda: held.append(httpx.get(
            f"{server.url}/hold?{release}", timeout=120).status_code))
        hold.start()
        try:
            deadline = time.monotonic() + 30
            while not (tmp_path / "release.held").exists() and time.monotonic() < deadline:
                hold.join(timeout=0.01)
            assert (tmp_path / "release.held").exists(), server.log()
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGHUP)
            answers: list[httpx.Response] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the new worker has answered 5 times
                try:
                    answers.append(httpx.get(server.url + "/x", headers=api, timeout=30))
                except httpx.TransportError:
                    continue
                if answers[-1].status_code != 200 or sum(
                        a.json()["pid"] != old.json()["pid"] for a in answers) >= 5:
                    break
            assert hold.is_alive(), "the old worker's request ended before the check"
            assert [a.status_code for a in answers] == [200] * len(answers), answers[-1].text
            assert len({a.json()["pid"] for a in answers} - {old.json()["pid"]}) == 1
        finally:
            _release(release)
            hold.join(timeout=60)
        assert held == [200]
    assert "worker processes" not in server.log()


def _read_only_server(flavour: str, port: int) -> list[str]:
    """tests.e2e_app in a mount namespace where /tmp, /var/tmp, /usr/tmp, /dev/shm and the
    working directory are read-only (a container with readOnlyRootFilesystem, no tmpfs)."""
    mounts = " ".join(f"mount --bind -o ro {d} {d};" for d in ("/tmp", "/var/tmp", str(ROOT)))
    mounts += " mount -t tmpfs -o ro tmpfs /dev/shm;"      # empty, and read-only
    script = (f"set -e; {mounts} if [ -d /usr/tmp ]; then mount --bind -o ro /usr/tmp "
              f"/usr/tmp; fi; exec {PY} -m tests.e2e_app --flavour {flavour} --port {port}")
    return ["unshare", "-m", "--propagation", "private", "bash", "-c", script]


@pytest.mark.parametrize("flavour", ["asgi", "wsgi"])
def test_no_writable_temporary_directory_serves_and_warns_once(
        flavour: str, tmp_path: Path) -> None:
    """docs/sessions.md: without a private directory nothing is checked. With no writable
    temporary directory at all (tempfile.gettempdir() raises), every request is served and
    one warning names the directories tried and what is not checked."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot make a mount namespace here (needs root and unshare)")
    port = free_port()
    env = _env(PYTHONDONTWRITEBYTECODE="1")
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("TMPDIR", None)
    with ServerProcess(_read_only_server(flavour, port), port=port, env=env,
                       log=tmp_path / "server.log") as server:
        statuses = [httpx.get(server.url + "/x", headers={"Accept": "application/json"},
                              timeout=10).status_code for _ in range(5)]
        log = server.log()
    assert statuses == [200] * 5, log
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "cannot check whether several" in line]
    assert len(warnings) == 1, log
    assert "no temporary directory" in warnings[0] and "/dev/shm/secure-mw-" in warnings[0]
    assert "Read-only file system" in warnings[0]


# -- SiblingWorkers with real processes ---------------------------------------------------------

_CHILD = """
import os, selectors, socket, sys
from pathlib import Path
from secure_mw.session import _listeners, memory_store
from secure_mw.session.memory_store import SiblingWorkers
directory, server, fd, mode = sys.argv[1:5]
if mode == "no-proc":                    # a system without /proc (macOS, the BSDs)
    _listeners.PROC = directory + "/no-such-proc"
if "SECURE_MW_TEST_SHM" in os.environ:
    memory_store._SHARED_MEMORY = Path(os.environ["SECURE_MW_TEST_SHM"])
listener = socket.socket(fileno=int(fd)) if fd != "-" else None
selector = selectors.DefaultSelector()
workers = SiblingWorkers("sid", explicit=mode == "explicit", interval=0,
                         directory=None if mode == "default-directory" else Path(directory))
for line in sys.stdin:
    command = line.strip()
    if command == "poll":                # waits for connections, as a server's event loop
        selector.register(listener, selectors.EVENT_READ)
    elif command == "unpoll":            # stops accepting: gunicorn's gthread draining
        selector.unregister(listener)
    elif command == "close":             # closes its listener: uvicorn shutting down
        listener.close()
    problem = workers.check(server)
    print("refused" if problem else "ok", *workers.siblings, flush=True)
"""


def _listening(kind: str, where: Path, *, reuse_port: int | None = None) -> socket.socket:
    """A listening socket: TCP on 127.0.0.1 (a free port, or ``reuse_port`` shared with
    SO_REUSEPORT), or Unix at ``where``."""
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(where))
    else:
        sock = socket.socket()
        if reuse_port is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", reuse_port or 0))
    sock.listen()
    sock.set_inheritable(True)
    return sock


def _address(sock: socket.socket) -> str:
    name = sock.getsockname()
    return str(name[1]) if isinstance(name, tuple) else str(name)


class _Child:
    """A process that checks for siblings each time it is told to (a line on stdin), as a
    worker does at a request that came through ``listener`` (inherited, as from a server's
    parent); without ``listener`` it names ``server`` (a test client's port 80)."""

    def __init__(self, directory: Path, listener: socket.socket | None, *,
                 mode: str = "-", server: str | None = None, env: dict[str, str] | None = None
                 ) -> None:
        root = Path(__file__).resolve().parent.parent
        self.errors = directory.parent / f"child-{len(list(directory.parent.iterdir()))}.err"
        fd = str(listener.fileno()) if listener is not None else "-"
        server = server or (_address(listener) if listener is not None else "80")
        with open(self.errors, "w") as errors:
            self.proc = subprocess.Popen(
                [PY, "-c", _CHILD, str(directory), server, fd, mode], cwd=root,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                pass_fds=[listener.fileno()] if listener is not None else [], env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self, command: str = "check") -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    directory = tmp_path / "registry"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def children(registry: Path) -> Iterator[Callable[..., _Child]]:
    made: list[_Child] = []

    def make(listener: socket.socket | None, **options: Any) -> _Child:
        made.append(_Child(registry, listener, **options))
        return made[-1]

    yield make
    for child in made:
        child.stop()


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[Callable[..., socket.socket]]:
    made: list[socket.socket] = []

    def make(kind: str = "tcp", **options: Any) -> socket.socket:
        made.append(_listening(kind, tmp_path / f"s{len(made)}.sock", **options))
        return made[-1]

    yield make
    for sock in made:
        sock.close()


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_workers_sharing_a_listening_socket_see_each_other_once_both_serve(
        children: Callable[..., _Child], listeners: Callable[..., socket.socket],
        kind: str) -> None:
    shared = listeners(kind)
    a, b = children(shared), children(shared)
    assert a.check() == "ok"                            # alone so far
    # a has taken no request since b came: it could be an old worker finishing its last one
    assert b.check() == "ok"
    assert a.check() == f"refused {b.pid}"              # b took one since a came: a sibling
    assert b.check() == f"refused {a.pid}"              # and a since b came
    c = children(listeners(kind))                       # another server of the same parent
    assert c.check() == "ok"
    a.stop()                                            # gone (and reaped): not counted
    assert b.check() == "ok"


def test_separate_sockets_sharing_a_port_are_siblings(
        children: Callable[..., _Child], listeners: Callable[..., socket.socket]) -> None:
    """Processes that each bind the port with SO_REUSEPORT share its connections too."""
    one = listeners(reuse_port=0)
    two = listeners(reuse_port=one.getsockname()[1])
    a, b = children(one), children(two)
    assert a.check() == "ok" and b.check() == "ok"
    assert a.check() == f"refused {b.pid}" and b.check() == f"refused {a.pid}"


def test_a_zombie_sibling_does_not_count(children: Callable[..., _Child],
                                         listeners: Callable[..., socket.socket]) -> None:
    shared = listeners()
    a, b = children(shared), children(shared)
    assert a.check() == "ok" and b.check() == "ok" and a.check().startswith("refused")
    b.proc.kill()
    os.waitid(os.P_PID, b.pid, os.WEXITED | os.WNOWAIT)       # dead, not yet reaped
    assert a.check() == "ok"
    b.proc.wait()


@pytest.mark.parametrize("stop", ["unpoll", "close"])
def test_a_worker_that_stopped_accepting_is_not_a_sibling(
        children: Callable[..., _Child], listeners: Callable[..., socket.socket],
        stop: str) -> None:
    """A graceful reload: the old worker stops polling its listener (gunicorn's gthread) or
    closes it (uvicorn) and finishes its requests while the new one serves. Neither it nor
    the new worker refuses anything, even at a request the old one still serves."""
    shared = listeners()
    old, new = children(shared), children(shared)
    assert old.check("poll") == "ok" and new.check("poll") == "ok"
    assert old.check() == f"refused {new.pid}"          # both serving: a real misconfiguration
    assert old.check(stop) == "ok"                      # draining: no longer checked
    assert new.check() == "ok"                          # the old one is not counted
    assert old.check() == "ok" and new.check() == "ok"


def test_processes_without_a_listening_socket_are_not_checked(
        children: Callable[..., _Child], listeners: Callable[..., socket.socket],
        registry: Path) -> None:
    """In-process test clients name port 80 (or any port) where nothing of theirs listens:
    test processes of one parent (pytest-xdist, Django's test --parallel) are no workers."""
    a, b = children(None), children(None)
    elsewhere = listeners()                   # listening, but not where the request says
    c = children(elsewhere, server="80")
    for _ in range(3):
        assert (a.check(), b.check(), c.check()) == ("ok", "ok", "ok")
    assert list(registry.iterdir()) == []     # nothing registered either


def test_without_proc_workers_are_told_by_their_address(
        children: Callable[..., _Child], listeners: Callable[..., socket.socket]) -> None:
    """Where /proc is absent the listening sockets are found through /dev/fd: processes
    without one are still not checked, and workers listening on the same address are
    siblings once both serve (a draining one counts until it exits)."""
    shared = listeners()
    a, b = children(shared, mode="no-proc"), children(shared, mode="no-proc")
    client = children(None, mode="no-proc")
    assert a.check() == "ok" and b.check() == "ok" and client.check() == "ok"
    assert a.check() == f"refused {b.pid}" and b.check() == f"refused {a.pid}"
    assert client.check() == "ok"


def test_the_listening_socket_of_a_request_is_found_with_and_without_proc(
        listeners: Callable[..., socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    from secure_mw.session import _listeners

    tcp, unix = listeners(), listeners("unix")
    assert _listeners.find_listener(_address(tcp)) == _listeners.Listener(
        os.fstat(tcp.fileno()).st_ino, tcp.fileno())
    assert _listeners.find_listener(_address(unix)) == _listeners.Listener(
        os.fstat(unix.fileno()).st_ino, unix.fileno())
    assert _listeners.find_listener("80") is None
    with socket.create_connection(tcp.getsockname()) as connected:   # connected, not listening
        accepted, _ = tcp.accept()
        with accepted:
            assert _listeners.find_listener(str(connected.getsockname()[1])) is None
    monkeypatch.setattr(_listeners, "PROC", "/no-such-proc")
    assert _listeners.find_listener(_address(tcp)) == _listeners.Listener()
    assert _listeners.find_listener(_address(unix)) == _listeners.Listener()
    assert _listeners.find_listener("80") is None


def test_the_check_runs_at_most_once_per_interval(
        tmp_path: Path, listeners: Callable[..., socket.socket]) -> None:
    port = _address(listeners())
    registries = tmp_path / "registry"
    registries.mkdir(mode=0o700)
    clock = Clock(100.0)
    workers = SiblingWorkers("sid", explicit=False, directory=registries, clock=clock,
                             interval=5.0)
    assert workers.check(port) is None
    [registry] = registries.iterdir()
    fake = subprocess.Popen([PY, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        # A process that is not our sibling (another parent) never counts.
        registry.write_text(f"#5\n{os.getpid()} 1 1 - - -\n{fake.pid} 1 4 - - -\n")
        clock.advance(10)
        assert workers.check(port) is None and workers.siblings == ()
    finally:
        fake.kill()
        fake.wait()
    registry.write_text("#1\n")
    clock.advance(4.9)
    assert workers.check(port) is None and registry.read_text() == "#1\n"


def test_an_explicit_memory_store_only_warns_once(
        children: Callable[..., _Child], listeners: Callable[..., socket.socket]) -> None:
    shared = listeners()
    a, b = children(shared, mode="explicit"), children(shared, mode="explicit")
    assert a.check() == "ok" and b.check() == "ok"
    for _ in range(3):
        assert a.check() == f"ok {b.pid}"              # siblings seen, requests served
    a.stop()
    warnings = [line for line in a.errors.read_text().splitlines() if "several worker" in line]
    assert len(warnings) == 1 and 'session.store = "memory"' in warnings[0]
    assert 'use session.store = "sqlite" (one host) or "redis"' in warnings[0]


# -- the registry directory ---------------------------------------------------------------------


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_store, "_warned", set())


def _planted(where: Path, how: str) -> Path:
    """``where`` made by someone else: another user's directory, one open to everybody, a
    symbolic link to a directory of ours, or a file."""
    if how == "symlink":
        elsewhere = where.parent / f"elsewhere-{where.name}"
        elsewhere.mkdir(mode=0o700)
        where.symlink_to(elsewhere)
    elif how == "file":
        where.write_text("")
    else:
        where.mkdir()
        where.chmod(0o777)
        if how == "other-owner":
            os.chown(where, 65534, 65534)         # "nobody" got there first
    return where


PROBLEM = {"other-owner": "is owned by uid 65534", "open-to-all": "has mode 0777, not 0700",
           "symlink": "is a symbolic link", "file": "is not a directory"}


@pytest.mark.parametrize("how", list(PROBLEM))
def test_a_planted_registry_directory_is_skipped_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        fresh_warnings: None, how: str) -> None:
    if how == "other-owner" and os.getuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    temp, shm = tmp_path / "tmp", tmp_path / "shm"
    temp.mkdir()
    shm.mkdir()
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(temp))
    monkeypatch.setattr(memory_store, "_SHARED_MEMORY", shm)
    planted = _planted(temp / f"secure-mw-{os.getuid()}", how)
    fallback = shm / f"secure-mw-{os.getuid()}"
    with caplog.at_level("WARNING", logger="secure_mw.session"):
        assert [registry_directory() for _ in range(3)] == [fallback] * 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings                              # once per process
    assert str(planted) in warnings[0] and PROBLEM[how] in warnings[0]
    assert stat.S_IMODE(os.lstat(fallback).st_mode) == 0o700
    # Every candidate planted: nothing is checked, and a warning says so, once.
    caplog.clear()
    fallback.rmdir()
    _planted(fallback, how)
    with caplog.at_level("WARNING", logger="secure_mw.session"):
        assert [registry_directory() for _ in range(2)] == [None, None]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert messages.count("cannot check whether several worker processes") == 1, messages
    assert f"{planted}: {PROBLEM[how]}" in messages and f"{fallback}: {PROBLEM[how]}" in messages


def test_xdg_runtime_dir_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert registry_directory() == runtime / "secure-mw"


def test_two_workers_with_a_planted_directory_are_still_told_apart(
        registry: Path, listeners: Callable[..., socket.socket], tmp_path: Path) -> None:
    """Another local user creates ``<tmp>/secure-mw-<uid>`` first (services usually have no
    XDG_RUNTIME_DIR): the workers use the next candidate, are refused as they should be,
    and the log names the planted directory."""
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    temp, shm = tmp_path / "tmp", tmp_path / "shm"
    temp.mkdir()
    shm.mkdir()
    planted = _planted(temp / f"secure-mw-{os.getuid()}", "other-owner")
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(TMPDIR=str(temp), SECURE_MW_TEST_SHM=str(shm))
    shared = listeners()
    a, b = (_Child(registry, shared, mode="default-directory", env=env) for _ in range(2))
    try:
        assert a.check() == "ok" and b.check() == "ok"
        assert a.check() == f"refused {b.pid}"
    finally:
        a.stop()
        b.stop()
    errors = a.errors.read_text()
    assert f"{planted} is owned by uid 65534" in errors, errors
    used = shm / f"secure-mw-{os.getuid()}"
    assert [p.name.startswith("memory-store-") for p in used.iterdir()] == [True]


def test_no_temporary_directory_at_all_is_a_warning_not_an_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        fresh_warnings: None, listeners: Callable[..., socket.socket], tmp_path: Path) -> None:
    def no_temp() -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")

    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.gettempdir", no_temp)
    monkeypatch.setattr(memory_store, "_SHARED_MEMORY", tmp_path / "no-shm")
    workers = SiblingWorkers("sid", explicit=False, interval=0)
    port = _address(listeners())
    with caplog.at_level("WARNING", logger="secure_mw.session"):
        assert [workers.check(port) for _ in range(3)] == [None] * 3
    [warning] = [r.getMessage() for r in caplog.records]
    assert "cannot check whether several worker processes" in warning
    assert "no temporary directory" in warning and "XDG_RUNTIME_DIR" in warning


def test_a_check_that_fails_unexpectedly_never_fails_the_request(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from secure_mw.session import _listeners

    def broken(server: str, **_: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(_listeners, "find_listener", broken)
    workers = SiblingWorkers("sid", explicit=False, interval=0)
    with caplog.at_level("WARNING", logger="secure_mw.session"):
        assert [workers.check("8000") for _ in range(3)] == [None] * 3
    assert len(caplog.records) == 1 and "injected" in caplog.records[0].getMessage()


def test_requests_without_a_listening_address_are_not_checked() -> None:
    from secure_mw.http import RequestView
    from secure_mw.session.manager import SessionManager
    from secure_mw.settings import Settings

    manager = SessionManager(Settings.from_mapping({}).session, keyring=KeyRing.generate())
    assert manager.workers is not None and not manager.workers.explicit
    view = RequestView("GET", "http", "127.0.0.1", "/", "", {}, "127.0.0.1")
    assert view.server == "" and manager.worker_refusal(view) is None


def test_the_listening_port_is_read_from_the_connection_only_when_a_check_looks(
        tmp_path: Path) -> None:
    """gunicorn hands over the connection's socket: its port is read (a system call, which
    lets a threaded server's other threads take the interpreter) when the sibling check
    looks again, not for every request."""
    import socket

    from secure_mw.http import RequestView
    from secure_mw.session.memory_store import SiblingWorkers

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        calls = []

        class Connection:      # the accepted socket, counting what is asked of it
            def getsockname(self) -> tuple[str, int]:
                calls.append(1)
                return ("127.0.0.1", port)

        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "app",
                   "SERVER_PORT": "80", "wsgi.url_scheme": "http",
                   "gunicorn.socket": Connection()}
        clock = Clock(0.0)
        workers = SiblingWorkers("c", explicit=False, directory=tmp_path, clock=clock,
                                 interval=10.0)
        seen = []
        for _ in range(5):
            view = RequestView.from_environ(environ)
            assert view.server == "80" and calls == seen    # not read to build the view
            workers.check(view.listening)
            seen = calls[:]
            clock.advance(4.0)
        assert len(calls) == 2          # at 0 s and 12 s: once per interval
        view = RequestView.from_environ(environ)
        assert view.listening() == str(port) == view.listening() and len(calls) == 3


def test_the_memory_store_default_is_told_apart_from_a_chosen_one() -> None:
    from secure_mw.settings import Settings

    assert not Settings.from_mapping({}).session.store_explicit
    assert Settings.from_mapping({"session": {"store": "memory"}}).session.store_explicit
    assert Settings.from_mapping({}, environ={"SECURE_MW_SESSION__STORE": "memory"}
                                 ).session.store_explicit
    assert memory_store.CHECK_INTERVAL > 0
