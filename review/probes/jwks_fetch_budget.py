"""How many JWKS fetches unknown kids can cause: 10 lookups a second with random kids for
600 (injected) seconds, against a healthy and a failing endpoint. Review probe.

PYTHONPATH=. python review/probes/jwks_fetch_budget.py
"""

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from secure_mw.errors import StoreUnavailable
from secure_mw.tokens import RemoteKeySet, generate_private_jwks, public_jwks
from tests.clock import Clock

PUBLIC = json.dumps(public_jwks(generate_private_jwks(("ES256",)))).encode()
mode = {"ok": True}
count = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        count["n"] += 1
        if mode["ok"]:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(PUBLIC)
        else:
            self.send_response(503)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
for healthy in (True, False):
    mode["ok"] = healthy
    count["n"] = 0
    clock = Clock(0)
    keys = RemoteKeySet(f"http://127.0.0.1:{server.server_port}/jwks", clock=clock)
    if not healthy:       # a good set first, then the outage
        mode["ok"] = True
        keys.get_key(None)
        mode["ok"] = False
        count["n"] = 0
    outcomes = {"none": 0, "unavailable": 0}
    for _ in range(6000):
        clock.advance(0.1)
        try:
            found = keys.get_key(secrets.token_hex(8))
            outcomes["none" if found is None else "key"] = outcomes.get("none", 0) + 1
        except StoreUnavailable:
            outcomes["unavailable"] += 1
    print(f"{'healthy' if healthy else 'failing'} endpoint: {count['n']} fetches for 6000 "
          f"unknown-kid lookups over 600 s; outcomes {outcomes}")
server.shutdown()
