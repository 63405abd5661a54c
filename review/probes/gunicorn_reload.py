"""False positive of the multi-worker detection: gunicorn -w 1, graceful reload (HUP) while
a long request is in flight. The new worker finds the old one (same parent, same port, still
finishing its request) and answers 503 until the old one is gone and 5 s have passed.

python -m review.probes.gunicorn_reload
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    os.makedirs("/tmp/rv", exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({"SECURE_MW_ACCESS_CONTROL__RULES": json.dumps(
        [{"resources": ["^/"], "policy": "bypass"}]), "PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread",
                             "--threads", "4", "--graceful-timeout", "30",
                             "-b", f"127.0.0.1:{port}", "review.probes.slow_app:wsgi_app()"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                first = httpx.get(base + "/x", headers={"Accept": "application/json"})
                break
            except httpx.TransportError:
                time.sleep(0.1)
        print("before reload:", first.status_code, first.json())
        release = f"/tmp/rv/release-{port}"
        slow = threading.Thread(target=lambda: print(
            "held request:", httpx.get(base + "/hold?" + release, timeout=40).status_code))
        slow.start()
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGHUP)            # graceful reload
        statuses = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 16:
            if time.monotonic() - t0 > 8:
                open(release, "w").close()           # the in-flight request ends at 8 s
            try:
                r = httpx.get(base + "/x", headers={"Accept": "application/json"}, timeout=5)
                statuses.append((round(time.monotonic() - t0, 1), r.status_code,
                                 r.json().get("pid") if r.status_code == 200 else None))
            except httpx.TransportError:
                statuses.append((round(time.monotonic() - t0, 1), "conn", None))
            time.sleep(0.5)
        slow.join()
        print("after HUP (seconds, status, pid):", statuses)
        print("503s:", sum(1 for s in statuses if s[1] == 503), "of", len(statuses))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


if __name__ == "__main__":
    main()
