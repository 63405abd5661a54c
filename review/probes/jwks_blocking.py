"""SignedHeaderMiddleware (ASGI) verifies with the blocking RemoteKeySet.get_key: while a
JWKS fetch hangs, the whole event loop waits, so every other request of the worker waits
too. Any client can start such a fetch (an assertion with an unknown kid); during an
outage the new retry backoff lets it start one after 1, 2, 4 ... s instead of one a minute.

PYTHONPATH=. python -m review.probes.jwks_blocking      (review probe, ~30 s real time)
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from secure_mw import Settings, asgi
from tests.apps import asgi_inner, uvicorn_server
from tests.servers import free_port

HANG = 4.0
fetches: list[float] = []


class SlowJWKS(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        fetches.append(time.monotonic())
        time.sleep(HANG)                       # an outage: the answer never comes in time
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def forged(kid: str) -> str:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'ES256', 'kid': kid})}.{b64({'sub': 'x'})}.{'A' * 86}"


def main() -> None:
    jwks = ThreadingHTTPServer(("127.0.0.1", free_port()), SlowJWKS)
    threading.Thread(target=jwks.serve_forever, daemon=True).start()
    settings = Settings.from_mapping({"signed_headers": {"issue": False, "verify": {
        "jwks_url": f"http://127.0.0.1:{jwks.server_port}/jwks", "issuer": "proxy",
        "audience": "app"}}}, environ={})
    app = asgi.SignedHeaderMiddleware(asgi_inner(), settings=settings)
    with uvicorn_server(app) as base:
        stop = time.monotonic() + 30
        attacker_sent = 0

        def attack() -> None:
            nonlocal attacker_sent
            while time.monotonic() < stop:
                attacker_sent += 1
                httpx.get(base + "/x", headers={"X-Pomerium-Jwt-Assertion": forged(
                    f"k{attacker_sent}")}, timeout=30)
        threading.Thread(target=attack, daemon=True).start()
        slowest = 0.0
        stalled = 0
        probes = 0
        while time.monotonic() < stop:
            t = time.monotonic()
            httpx.get(base + "/x", timeout=30)          # no assertion: 401 at once
            took = time.monotonic() - t
            probes += 1
            slowest = max(slowest, took)
            stalled += took > 1.0
            time.sleep(0.2)
        print(f"30 s: {len(fetches)} JWKS fetches started by {attacker_sent} attacker "
              f"requests; {stalled} of {probes} unrelated requests waited > 1 s "
              f"(slowest {slowest:.1f} s)")
    jwks.shutdown()


if __name__ == "__main__":
    main()
