"""The README's main job: the demo app, started as a user starts it, on a real uvicorn."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    port = free_port()
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sample_apps.fastapi_demo", "--port", str(port),
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


def test_demo_serves_and_protects_its_cookie(demo: tuple[str, Path, subprocess.Popen[str]]
                                            ) -> None:
    base, state, proc = demo
    key_file = state / "encryption.keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with httpx.Client(base_url=base) as client:
        first = client.get("/")
        assert first.status_code == 200 and 'id="visits">1<' in first.text
        assert "identity source" in first.text
        second = client.get("/")
        assert 'id="visits">2<' in second.text
        cookie = client.cookies["demo_visits"]
        assert len(cookie) > 60  # the encrypted envelope, not the plain count
        # every character changed in turn: refused (count resets), never a 500
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for i in range(0, len(cookie), 7):
            swapped = alphabet[(alphabet.index(cookie[i]) + 1) % 64]
            forged = cookie[:i] + swapped + cookie[i + 1:]
            reply = httpx.get(base + "/", cookies={"demo_visits": forged})
            assert reply.status_code == 200 and 'id="visits">1<' in reply.text, i
        assert httpx.get(base + "/healthz").json() == {"status": "ok"}
        # The guards: security headers with a fresh nonce that styles the page, and an
        # off-site redirect parameter refused.
        csp = first.headers["content-security-policy"]
        nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
        assert f'<style nonce="{nonce}">' in first.text
        assert first.headers["x-frame-options"] == "DENY"
        assert client.get("/", params={"next": "https://evil.example/"}).status_code == 400
    # Ctrl-C stops it cleanly, and the refusals were audited without the cookie value.
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "open http://127.0.0.1:" in out and "generated into" in out
    assert '"event":"cookie_rejected"' in out
    assert '"event":"unsafe_redirect"' in out
    assert cookie not in out


def test_demo_reuses_its_key_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    from sample_apps.fastapi_demo.run import _key_ring
    from secure_mw import Settings

    settings = Settings.from_mapping({})
    ring1, where1 = _key_ring(state, settings)
    ring2, where2 = _key_ring(state, settings)
    assert "generated" in where1 and "read from" in where2
    assert ring2.decrypt(ring1.encrypt(b"x")) == b"x"
