"""Probe: a Flask login that reads ``request.values`` (query string first, then the form)
behind the WSGI login guard. The guard reads only the body: ``POST /login?username=alice&
password=GUESS`` with a body naming a throw-away user is counted for the throw-away user,
and a banned attempt's decoy replaces only the body's password — the app checks the guess.

Run: .venv/bin/python -m review.probe_flask_values
"""

from __future__ import annotations

import sys
from urllib.parse import urlencode

import httpx
from flask import Flask, request

from secure_mw import Settings, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.guards.timing import LoginDelay
from tests.apps import wsgi_server

checked: list[str] = []


def make() -> Flask:
    app = Flask(__name__)

    @app.post("/login")
    def login() -> tuple[str, int]:
        user, password = request.values.get("username"), request.values.get("password", "")
        if len(password) != 32:
            checked.append(password)
        if user == "alice" and password == "correct horse battery":
            return "welcome", 200
        return "invalid", 401

    return app


def main() -> int:
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]}},
                                     environ={})
    app = wsgi.LoginGuardMiddleware(make(), settings=settings, paths=["/login"],
                                    delay=LoginDelay(floor=0.001, seed=0.001, jitter=0))
    with wsgi_server(app) as base:
        for i in range(30):
            query = urlencode({"username": "alice", "password": f"guess {i}"})
            httpx.post(f"{base}/login?{query}", data={"username": f"decoy{i % 5}",
                                                      "password": "x"})
        query = urlencode({"username": "alice", "password": "correct horse battery"})
        last = httpx.post(f"{base}/login?{query}", data={"username": "decoy0",
                                                         "password": "x"})
    print(f"flask request.values: 30 guesses at alice in the query string -> {len(checked)} "
          f"checked; the right one then -> {last.status_code}")
    return 1 if len(checked) > 3 else 0


if __name__ == "__main__":
    sys.exit(main())
