"""Real external servers for the tests: started on free loopback ports, stopped after.

A missing program skips the tests that need it, unless ``SECURE_MW_REQUIRE_EXTERNAL=1``
(set by ``.ci/run``), in which case it fails them: CI never passes by skipping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_EXTERNAL = os.environ.get("SECURE_MW_REQUIRE_EXTERNAL", "") == "1"


def find_program(name: str) -> str:
    """Path of an external program, or skip/fail the test that needs it."""
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if path:
        return path
    message = f"external program {name!r} is not installed"
    if REQUIRE_EXTERNAL:
        pytest.fail(message + " and SECURE_MW_REQUIRE_EXTERNAL=1 forbids skipping", pytrace=False)
    pytest.skip(message + " (set SECURE_MW_REQUIRE_EXTERNAL=1 to make this a failure)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int | str, *, timeout: float = 10.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts connections on ``port`` (or at the Unix socket path
    ``port``), bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            if isinstance(port, str):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(0.2)
                    sock.connect(port)
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def wait_for_socket(path: Path, *, timeout: float = 10.0,
                    proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until something accepts connections on the Unix socket ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                sock.connect(str(path))
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {path} after {timeout} s")


class RedisServer:
    """A real redis-server on a free loopback port, with no persistence."""

    def __init__(self) -> None:
        self.program = find_program("redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="secure-mw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [self.program, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


def _redis_cli(*args: str, port: int) -> str:
    program = find_program("redis-cli")
    return subprocess.run([program, "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def _until(what: str, test: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Poll ``test`` until it holds (a server's state, not time, is what is awaited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if test():
                return
        except (subprocess.SubprocessError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} after {timeout} s")


class _RedisProcesses:
    """Several redis-server processes started together, stopped together."""

    dir: Path
    procs: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster(_RedisProcesses):
    """A real Redis Cluster of three masters on loopback ports (``redis-cli --cluster
    create``), with no persistence; each node's bus port is chosen free too."""

    def __init__(self, masters: int = 3) -> None:
        self.program = find_program("redis-server")
        find_program("redis-cli")
        self.dir = Path(tempfile.mkdtemp(prefix="secure-mw-cluster-"))
        self.ports = [free_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports:
            node = self.dir / str(port)
            node.mkdir(exist_ok=True)
            self.procs.append(subprocess.Popen(
                [self.program, "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--dir", str(node)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port, proc in zip(self.ports, self.procs, strict=True):
            wait_for_port(port, proc=proc)
        _redis_cli("--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                   "--cluster-replicas", "0", "--cluster-yes", port=self.ports[0])
        for port in self.ports:
            _until("the cluster is not ready", lambda port=port:
                   "cluster_state:ok" in _redis_cli("cluster", "info", port=port))

    def slot_owner(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot."""
        import redis

        client = redis.Redis(port=self.ports[0])
        try:
            slot = int(client.cluster("keyslot", key))
            for start, end, master, *_ in client.cluster("slots"):
                if start <= slot <= end:
                    return int(master[1])
        finally:
            client.close()
        raise RuntimeError("no node owns the slot")



class RedisSentinel(_RedisProcesses):
    """A real master, one replica and one Sentinel watching them (quorum 1), so a test can
    fail over (``SENTINEL FAILOVER``) and see the replica promoted."""

    MASTER = "secure-mw"

    def __init__(self) -> None:
        self.program = find_program("redis-server")
        find_program("redis-cli")
        self.dir = Path(tempfile.mkdtemp(prefix="secure-mw-sentinel-"))
        self.master_port, self.replica_port, self.sentinel_port = (free_port() for _ in "abc")
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.MASTER}/0"

    def _server(self, port: int, *extra: str) -> None:
        node = self.dir / str(port)
        node.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [self.program, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(node), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_for_port(port, proc=proc)

    def start(self) -> None:
        self._server(self.master_port)
        self._server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        _until("the replica is not in sync", lambda: "master_link_status:up" in _redis_cli(
            "info", "replication", port=self.replica_port))
        config = self.dir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
            f"sentinel failover-timeout {self.MASTER} 10000\n", encoding="utf-8")
        log = open(self.dir / "sentinel.log", "wb")  # noqa: SIM115 - the process keeps it
        proc = subprocess.Popen([self.program, str(config), "--sentinel"],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        wait_for_port(self.sentinel_port, proc=proc)
        _until("the sentinel does not see the replica in sync", self._replica_known)

    def _replica_known(self) -> bool:
        """Whether the Sentinel has read the replica's own INFO (until then it would refuse
        a failover: no suitable replica)."""
        lines = _redis_cli("sentinel", "replicas", self.MASTER,
                           port=self.sentinel_port).split("\n")
        fields = dict(zip(lines[::2], lines[1::2], strict=False))
        return (fields.get("master-link-status") == "ok" and fields.get("flags") == "slave"
                and int(fields.get("info-refresh", "100000")) < 5000
                and fields.get("slave-repl-offset", "0") != "0")

    def master(self) -> int:
        """The port of the master the Sentinel names now."""
        reply = _redis_cli("sentinel", "get-master-addr-by-name", self.MASTER,
                           port=self.sentinel_port).split()
        return int(reply[1])

    def failover(self) -> None:
        """Promote the replica and wait until it is the master and accepts writes."""
        before = self.master()
        _redis_cli("sentinel", "failover", self.MASTER, port=self.sentinel_port)
        _until("the failover did not happen", lambda: self.master() != before)
        after = self.master()
        _until("the new master does not say so", lambda: "role:master" in _redis_cli(
            "info", "replication", port=after))



def skip_or_fail(message: str) -> NoReturn:
    """Skip the test for a missing external dependency, or fail it in CI."""
    if REQUIRE_EXTERNAL:
        pytest.fail(message + " and SECURE_MW_REQUIRE_EXTERNAL=1 forbids skipping", pytrace=False)
    pytest.skip(message + " (set SECURE_MW_REQUIRE_EXTERNAL=1 to make this a failure)")


def npm_packages_installed(directory: Path) -> bool:
    """Whether ``directory/node_modules`` holds exactly the versions package.json pins."""
    manifest = json.loads((directory / "package.json").read_text(encoding="utf-8"))
    for name, version in manifest.get("dependencies", {}).items():
        installed = directory / "node_modules" / name / "package.json"
        try:
            if json.loads(installed.read_text(encoding="utf-8")).get("version") != version:
                return False
        except (OSError, ValueError):
            return False
    return True


@contextlib.contextmanager
def install_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock shared by every test process installing into ``directory``."""
    import fcntl

    tag = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"secure-mw-npm-{tag}.lock"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_npm_packages(directory: Path) -> None:
    """``npm ci`` in ``directory`` (scripts off) unless its pinned packages are there; a
    missing npm or a failed install skips the test, or fails it in CI."""
    if npm_packages_installed(directory):
        return
    npm = find_program("npm")
    with install_lock(directory):
        if npm_packages_installed(directory):   # another process installed them meanwhile
            return
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=directory, capture_output=True, text=True, timeout=600, check=False,
        )
        if result.returncode != 0 or not npm_packages_installed(directory):
            output = (result.stdout + result.stderr)[-2000:]
            skip_or_fail(f"`npm ci` in {directory} failed ({result.returncode}):\n{output}")


class ServerProcess:
    """A server started by its own command line (``uvicorn ... --workers 2``, ``gunicorn -w
    2 ...``) in the repository root, on ``port`` (or the Unix socket path ``port``, or the
    Unix socket ``uds``); its output is kept in ``log``. Stopped (SIGTERM to the process
    group it started, then SIGKILL) on leaving the ``with``."""

    def __init__(self, args: list[str], *, port: int | str = 0, env: dict[str, str],
                 log: Path, uds: Path | None = None) -> None:
        self.args = args
        self.port = port
        self.uds = uds
        self.env = env
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if isinstance(self.port, str):       # a Unix socket: httpx.HTTPTransport(uds=port)
            return "http://localhost"
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> ServerProcess:
        root = Path(__file__).resolve().parent.parent
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(self.args, cwd=root, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if self.uds is not None:
                wait_for_socket(self.uds, timeout=30, proc=self.proc)
            else:
                wait_for_port(self.port, timeout=30, proc=self.proc)
        except RuntimeError:
            self.__exit__()
            raise RuntimeError(f"{self.args[:3]} did not start:\n{self.log()[-3000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


class NginxServer:
    """A real nginx reverse proxy on a free loopback port in front of ``upstream`` (a base
    URL), with ``proxy_set_header`` lines as given (``{"Host": "$http_host"}``), in a
    directory of its own; use as a context manager."""

    def __init__(self, upstream: str, directory: Path, *,
                 headers: dict[str, str] | None = None, server_name: str = "_") -> None:
        self.program = find_program("nginx")
        self.port = free_port()
        self.dir = directory
        self.upstream = upstream
        self.headers = headers or {}
        self.server_name = server_name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> NginxServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"      proxy_set_header {name} {value};\n"
                        for name, value in self.headers.items())
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.dir}/nginx.pid;\n"
            f"error_log {self.dir}/error.log warn;\nevents {{ worker_connections 64; }}\n"
            "http {\n"
            f"  access_log off;\n  client_body_temp_path {self.dir}/body;\n"
            f"  proxy_temp_path {self.dir}/proxy;\n  fastcgi_temp_path {self.dir}/fastcgi;\n"
            f"  uwsgi_temp_path {self.dir}/uwsgi;\n  scgi_temp_path {self.dir}/scgi;\n"
            f"  server {{\n    listen 127.0.0.1:{self.port} default_server;\n"
            f"    server_name {self.server_name};\n"
            f"    location / {{\n      proxy_pass {self.upstream};\n{lines}    }}\n  }}\n}}\n")
        self.proc = subprocess.Popen([self.program, "-p", str(self.dir), "-c",
                                      str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(self.port, proc=self.proc)
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
