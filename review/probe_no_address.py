"""Probe: behind a Unix socket (uvicorn --uds, gunicorn -b unix:) the peer has no address,
and none can be trusted to forward one, so every attempt has no client address: the pair
and address budgets are skipped and only the per-name budget is left. One client sprays
60 names (and, with ``user_max_retries`` per name, 10 guesses each) unhindered.

Run: .venv/bin/python -m review.probe_no_address
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from review.probe_workers import environment

PY = sys.executable


def run(server: str) -> int:
    tmp = Path(tempfile.mkdtemp())
    count = tmp / "checked.txt"
    count.touch()
    sock = tmp / "app.sock"
    if server == "uvicorn":
        args = [PY, "-m", "uvicorn", "--factory", "review.worker_app:asgi_app", "--uds",
                str(sock), "--log-level", "warning", "--lifespan", "off",
                "--no-proxy-headers"]
    else:
        args = [PY, "-m", "gunicorn", "-w", "1", "-b", f"unix:{sock}", "--log-level",
                "warning", "review.worker_app:wsgi_app()"]
    env = environment(count, tmp, SECURE_MW_SESSION__STORE="cookie",
                      SECURE_MW_SERVER__TRUSTED_PROXIES=json.dumps(["127.0.0.1/32"]))
    # ServerProcess waits for a TCP port: start by hand and wait for the socket instead.
    with open(tmp / "server.log", "wb") as out:
        child = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1], env=env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            if sock.exists():
                break
            time.sleep(0.05)
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://localhost",
                          timeout=30) as client:
            for i in range(60):
                client.post("/login", data={"username": f"user{i}", "password": "Winter2026!"},
                            headers={"X-Forwarded-For": "198.51.100.7"})
    finally:
        os.killpg(child.pid, 15)
        child.wait(timeout=15)
    checked = len(count.read_text().splitlines())
    print(f"{server:8} over a Unix socket: one client, 60 names x 1 guess -> {checked} checked "
          f"(address budget 20)")
    return checked


def main() -> int:
    bad = 0
    for server in ("uvicorn", "gunicorn"):
        bad += run(server) > 20
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
