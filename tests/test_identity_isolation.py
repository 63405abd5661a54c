"""No identity ever crosses sessions: many clients with distinct sessions, in parallel,
against a server with several worker processes sharing a real redis-server; every answer,
and the signed assertion the app received with it, must name the client that asked.

``SECURE_MW_ISOLATION_REQUESTS`` sets the total (default 10,000; CI: 100,000)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from secure_mw import Settings
from secure_mw.crypto import KeyRing
from secure_mw.testing import session_cookie
from tests.servers import RedisServer, ServerProcess, free_port

CLIENTS = 200
TOTAL = int(os.environ.get("SECURE_MW_ISOLATION_REQUESTS", "10000"))
KEY = KeyRing.new_key_text()


def _command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--factory", "tests.e2e_app:asgi_app",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                "--log-level", "warning", "--lifespan", "off", "--no-proxy-headers"]
    return [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "16",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "tests.e2e_app:wsgi_app()"]


async def _client(base: str, sub: str, cookie: str, count: int, key: Any,
                  seen: dict[str, str], wrong: list[str], pids: set[int]) -> int:
    served = 0
    async with httpx.AsyncClient(timeout=60, headers={"Cookie": cookie,
                                                      "Accept": "application/json"}) as client:
        for i in range(count):
            response = await client.get(f"{base}/who?i={i}")
            if response.status_code != 200:
                wrong.append(f"{sub}: status {response.status_code}")
                continue
            body = response.json()
            pids.add(body.get("pid"))
            if body.get("sub") != sub:
                wrong.append(f"{sub} was answered as {body.get('sub')!r}")
            token = body.get("assertion") or ""
            named = seen.get(token)
            if named is None:         # a new assertion: verify it once
                claims = jwt.decode(token, key, algorithms=["ES256"],
                                    options={"verify_aud": False})
                named = seen[token] = str(claims.get("sub"))
            if named != sub:
                wrong.append(f"{sub} got an assertion for {named!r}")
            served += 1
    return served


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_no_identity_crosses_sessions(server: str, redis_server: RedisServer,
                                      tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update(SECURE_MW_KEYS__ENCRYPTION_KEYS=KEY, SECURE_MW_SESSION__STORE="redis",
               SECURE_MW_SESSION__REDIS_URL=redis_server.url, PYTHONUNBUFFERED="1",
               SECURE_MW_LOCAL_USERS__FILE=str(tmp_path / "users.toml"))
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]},
        "session": {"store": "redis", "redis_url": redis_server.url}}, environ={})
    cookies = {f"user{i:03d}": session_cookie(settings, {"sub": f"user{i:03d}",
                                                         "groups": [f"g{i}"]})
               for i in range(CLIENTS)}
    port = free_port()
    with ServerProcess(_command(server, port), port=port, env=env,
                       log=tmp_path / "server.log") as process:
        base = process.url
        jwks = httpx.get(base + "/.well-known/secure-mw/jwks.json").json()
        key = jwt.PyJWK(jwks["keys"][0]).key
        seen: dict[str, str] = {}
        wrong: list[str] = []
        pids: set[int] = set()

        async def run() -> list[int]:
            each = TOTAL // CLIENTS
            return await asyncio.gather(*(
                _client(base, sub, cookie, each, key, seen, wrong, pids)
                for sub, cookie in cookies.items()))

        served = asyncio.run(run())
    assert wrong == [], wrong[:10]
    assert sum(served) == TOTAL // CLIENTS * CLIENTS
    assert len(seen) >= CLIENTS             # every client had its own assertion
    assert len(pids) == 2                   # both workers served, from one Redis
