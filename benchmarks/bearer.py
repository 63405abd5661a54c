"""What a bearer-authenticated request costs over a session-authenticated one, through
the whole protect() stack, in-process (the style of benchmarks/sessions.py).

  asgi-session       protect() around Starlette, memory session store, warm session cookie
  asgi-bearer        the same stack, ``Authorization: Bearer`` (ES256 JWT, verified once,
                     then found in the verified-token cache)                vs asgi-session
  asgi-bearer-full   the same, cache_size = 0: every request verifies the signature
                                                                            vs asgi-session
  wsgi-session       protect() around a WSGI callable, memory session store
  wsgi-bearer        the same with the bearer token (cached)                vs wsgi-session
  wsgi-bearer-full   the same, cache_size = 0                               vs wsgi-session

Every case runs in the same interleaved repeat loop; each figure is a median, each ratio
against its baseline of the same run.

    python -m benchmarks.bearer           # or: python3 dev.py bench bearer
    python -m benchmarks.bearer --quick   # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import secure_mw.asgi
import secure_mw.wsgi
from benchmarks.sessions import (
    Case,
    _wsgi_hello,
    asgi_runner,
    asgi_scope,
    check_asgi,
    check_wsgi,
    measure,
    starlette_app,
    wsgi_environ,
    wsgi_runner,
)
from secure_mw import Settings
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from secure_mw.tokens import SigningKey, sign

ISSUER = "https://idp.example.com"
AUDIENCE = "https://api.example.com"
CLAIMS = {"sub": "alice", "email": "alice@example.com", "groups": ["staff", "admins"]}


def build(loop: asyncio.AbstractEventLoop, directory: Path) -> list[Case]:
    now = time.time()

    def fixed() -> float:
        return now

    key = SigningKey.generate("ES256")
    (directory / "jwks.json").write_text(json.dumps({"keys": [key.public_jwk()]}))
    token = sign({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "client_id": "bench",
                  "iat": int(now), "exp": int(now) + 3600, "scope": "api:read",
                  "jti": "bench-1", "groups": ["staff", "admins"]}, key,
                 headers={"typ": "at+jwt"})
    keys = [KeyRing.new_key_text()]
    cases: list[Case] = []

    def settings(cache_size: int) -> Settings:
        return Settings.from_mapping({
            "keys": {"encryption_keys": keys},
            "server": {"allowed_hosts": ["app.example.com"]},
            "local_users": {"file": str(directory / "users.toml")},
            "bearer_tokens": {"issuer": ISSUER, "audience": AUDIENCE,
                              "jwks_file": str(directory / "jwks.json"),
                              "algorithms": ["ES256"], "cache_size": cache_size},
        }, environ={})

    bearer_header = ("authorization", f"Bearer {token}")
    for flavour in ("asgi", "wsgi"):
        for name, cache_size, bearer in (("session", 10_000, False),
                                         ("bearer", 10_000, True),
                                         ("bearer-full", 0, True)):
            config = settings(cache_size)
            store = MemorySessionStore(clock=fixed)
            cookie = None if bearer else session_cookie(config, CLAIMS, store=store)
            key_name = f"{flavour}-{name}"
            baseline = None if not bearer else f"{flavour}-session"
            label = {"session": "protect(), session cookie (memory store)",
                     "bearer": "protect(), bearer JWT, verified-token cache",
                     "bearer-full": "protect(), bearer JWT, verified every time"}[name]
            if flavour == "asgi":
                app = secure_mw.asgi.protect(starlette_app(), config, store=store,
                                             clock=fixed)
                scope = asgi_scope(cookie)
                if bearer:
                    scope["headers"] = [*scope["headers"],
                                        tuple(v.encode() for v in bearer_header)]
                check_asgi(loop, app, scope, user="alice")
                cases.append(Case(key_name, label, asgi_runner(loop, app, scope), baseline))
            else:
                wapp = secure_mw.wsgi.protect(_wsgi_hello, config, store=store, clock=fixed)
                environ: dict[str, Any] = wsgi_environ(cookie)
                if bearer:
                    environ["HTTP_AUTHORIZATION"] = bearer_header[1]
                check_wsgi(wapp, environ, user="alice")
                cases.append(Case(key_name, label, wsgi_runner(wapp, environ), baseline))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=31, help="timed runs per case")
    parser.add_argument("--run-ms", type=float, default=40.0, help="length of one timed run")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run (5 repeats of 5 ms)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.run_ms = 5, 5.0
    import logging

    logging.getLogger("secure_mw").setLevel(logging.ERROR)   # start-up advice, not results
    loop = asyncio.new_event_loop()
    try:
        with tempfile.TemporaryDirectory() as directory:
            cases = build(loop, Path(directory))
            print(f"secure_mw bearer benchmark: in-process warm GET / through protect(), "
                  f"median of {args.repeats} interleaved runs of ~{args.run_ms:g} ms; "
                  f"Python {sys.version.split()[0]}")
            us = {k: s * 1e6 for k, s in measure(cases, args.repeats,
                                                 args.run_ms / 1000).items()}
    finally:
        loop.close()
    print()
    print(f"  {'case':18}{'config':46}{'us/req':>9}{'+us':>9}{'ratio':>8}")
    for case in cases:
        line = f"  {case.key:18}{case.label:46}{us[case.key]:>9.2f}"
        if case.baseline:
            base = us[case.baseline]
            line += f"{us[case.key] - base:>+9.2f}{us[case.key] / base:>8.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
