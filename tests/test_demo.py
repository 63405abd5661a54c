"""The README's main job: the demo app, started as a user starts it, on a real uvicorn."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps import browser
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    port = free_port()
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "secure_mw.demo", "--port", str(port),
         "--state-dir", str(state)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        yield f"http://127.0.0.1:{port}", state, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _password(proc: subprocess.Popen[str]) -> str:
    """The demo user's password, from the line the demo prints at start-up."""
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"sign in as 'demo' with password '([^']+)'", line)
        if match:
            return match.group(1)
        if "open http://" in line:
            break
    raise AssertionError("the demo printed no password")


def test_demo_signs_in_and_protects_its_cookie(demo: tuple[str, Path, subprocess.Popen[str]]
                                               ) -> None:
    base, state, proc = demo
    password = _password(proc)
    key_file = state / "encryption.keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "users.toml").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "secure-mw.sqlite3").stat().st_mode) == 0o600
    with browser() as client:
        # A new visitor is sent to the login page, signs in, and sees who they are.
        start = client.get(base + "/")
        assert start.status_code == 302 and start.headers["location"] == "/.auth/login?rd=/"
        form = client.get(base + start.headers["location"])
        assert form.status_code == 200 and 'name="password"' in form.text
        state_value = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state_value
        wrong = client.post(base + "/.auth/login", data={
            "state": state_value.group(1), "username": "demo", "password": "wrong"})
        assert wrong.status_code == 401
        state_value = re.search(r'name="state" value="([^"]+)"', wrong.text)
        assert state_value
        signed_in = client.post(base + "/.auth/login", data={
            "state": state_value.group(1), "username": "demo", "password": password})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
        first = client.get(base + "/")
        assert first.status_code == 200 and 'id="who">Demo User<' in first.text
        assert 'id="rule">rule 2: authenticated<' in first.text
        assert 'id="visits">1<' in first.text and "identity source" in first.text
        second = client.get(base + "/")
        assert 'id="visits">2<' in second.text
        visits = client.cookies.get("demo_visits")
        assert visits and len(visits) > 60  # the encrypted envelope, not the plain count
        session = client.cookies.get("__Host-secure_mw_session")
        # every character changed in turn: refused (count resets), never a 500
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for i in range(0, len(visits), 7):
            swapped = alphabet[(alphabet.index(visits[i]) + 1) % 64]
            forged = visits[:i] + swapped + visits[i + 1:]
            reply = httpx.get(base + "/", headers={
                "Cookie": f"__Host-secure_mw_session={session}; demo_visits={forged}"})
            assert reply.status_code == 200 and 'id="visits">1<' in reply.text, i
        # The guards: security headers with a fresh nonce that styles the page, and an
        # off-site redirect parameter refused.
        csp = first.headers["content-security-policy"]
        nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
        assert f'<style nonce="{nonce}">' in first.text
        assert first.headers["x-frame-options"] == "DENY"
        assert client.get(base + "/", params={"next": "https://evil.example/"}).status_code \
            == 400
        assert client.get(base + "/healthz").json() == {"status": "ok"}
        assert httpx.get(base + "/healthz").status_code == 200          # bypassed: public
        two_step = client.get(base + "/two-factor")
        assert two_step.status_code == 302
        assert two_step.headers["location"] == "/.auth/2fa?rd=/two-factor"
        # the rule, not the page's own check (303), answers a query string too
        for target in ("/two-factor?x=1", "/two-factor/?x=1"):
            queried = client.get(base + target)
            assert queried.status_code == 302, target
            assert queried.headers["location"].startswith("/.auth/2fa?rd=/two-factor")
    # Ctrl-C stops it cleanly; the refusals were audited without any secret.
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert '"event":"cookie_rejected"' in out and '"event":"unsafe_redirect"' in out
    assert '"event":"login_failure"' in out and '"event":"login_success"' in out
    assert visits not in out and str(session) not in out


def test_demo_reuses_its_key_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    from secure_mw import Settings
    from secure_mw.demo.run import _key_ring

    settings = Settings.from_mapping({})
    ring1, where1 = _key_ring(state, settings)
    ring2, where2 = _key_ring(state, settings)
    assert "generated" in where1 and "read from" in where2
    assert ring2.decrypt(ring1.encrypt(b"x")) == b"x"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_dev_py_demo_stops_its_server_with_it(tmp_path: Path, signum: int) -> None:
    """``python3 dev.py demo`` passes a signal on to the demo and waits for it: once dev.py
    has exited, nothing serves the demo's port any more."""
    if not (Path(sys.prefix) / ".secure-mw-installed").exists():
        pytest.skip("runs in the venv dev.py made (python3 dev.py test)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["SECURE_MW_VENV"] = sys.prefix
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "dev.py"), "demo", "--port", str(port),
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, timeout=60, proc=proc)  # type: ignore[arg-type]
        proc.send_signal(signum)      # to dev.py alone, as `kill` or a supervisor sends it
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "secure_mw demo: stopped" in out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_secure_mw_demo_serves_without_fastapi_or_uvicorn(tmp_path: Path) -> None:
    """``secure-mw demo`` from a plain install: the demo ships in the package and runs on the
    base dependencies, with every extra's package made unimportable."""
    from tests.test_plain_install import _BLOCKER

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    code = _BLOCKER + (
        "import sys\nfrom secure_mw.cli import main\n"
        f"sys.exit(main(['demo', '--port', '{port}', '--state-dir', 'state']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401   # the stack is there
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "secure_mw demo: stopped" in out and "sign in as 'demo'" in out


def _start_demo(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "secure_mw.demo", "--port", str(port),
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_port(port, timeout=30, proc=proc)  # type: ignore[arg-type]
    return proc


def _stop_demo(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    return out


def test_demo_sessions_live_in_sqlite_and_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    proc = _start_demo(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        password = _password(proc)
        with browser() as client:
            form = client.get(base + "/.auth/login")
            state_value = re.search(r'name="state" value="([^"]+)"', form.text)
            assert state_value
            client.post(base + "/.auth/login", data={
                "state": state_value.group(1), "username": "demo", "password": password})
            assert client.get(base + "/").status_code == 200
            cookies = dict(client.cookies)
    finally:
        _stop_demo(proc)
    assert stat.S_IMODE((tmp_path / "state" / "secure-mw.sqlite3").stat().st_mode) == 0o600
    proc = _start_demo(tmp_path, port)
    try:
        with browser() as client:
            client.cookies.update(cookies)
            again = client.get(base + "/")
            assert again.status_code == 200 and 'id="who">Demo User<' in again.text
    finally:
        _stop_demo(proc)
