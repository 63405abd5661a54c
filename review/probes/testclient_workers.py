"""False positive of the multi-worker detection: test processes of one parent.

pytest-xdist, Django's ``test --parallel`` and multiprocessing pools run an app's test suite
in several processes of one parent. Each uses an in-process test client (Starlette's
TestClient: scope["server"] = ("testserver", 80); werkzeug/Flask's test client: SERVER_PORT
"80"), so each registers under (same parent, port "80", same cookie) and sees the others as
"sibling workers": every request of every test then gets 503 on the default settings.

python -m review.probes.testclient_workers [asgi|wsgi] [processes]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
from secure_mw import Settings, asgi, wsgi
from secure_mw.session import memory_store
memory_store.CHECK_INTERVAL = 0.2          # the real interval is 5 s: a suite runs longer
settings = Settings.from_mapping({"server": {"allowed_hosts": ["testserver", "localhost"]},
    "access_control": {"rules": [
    {"resources": ["^/"], "policy": "bypass"}]}}, environ={})
flavour = sys.argv[1]
if flavour == "asgi":
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient
    inner = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    client = TestClient(asgi.protect(inner, settings))
    get = lambda: client.get("/").status_code
else:
    from werkzeug.test import Client
    def inner(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    client = Client(wsgi.protect(inner, settings))
    get = lambda: client.get("/").status_code
statuses = []
for _ in range(15):                          # "tests" spread over 3 s
    statuses.append(get())
    time.sleep(0.2)
print(json.dumps(statuses), flush=True)
"""


def run(flavour: str, count: int) -> list[list[int]]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, flavour], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [json.loads(p.communicate(timeout=120)[0]) for p in procs]


if __name__ == "__main__":
    flavour = sys.argv[1] if len(sys.argv) > 1 else "asgi"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    for statuses in run(flavour, count):
        print(flavour, statuses)
