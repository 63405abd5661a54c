"""Bearer tokens end to end on real servers (uvicorn, a threaded WSGI server): keys the test
makes, pinned in a jwks_file, the built-in login for the cookie sessions next to them, and
access rules deciding for both kinds of identity alike."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import PasswordHasher
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.session import MemorySessionStore
from tests.apps import FLAVOURS, browser, serve
from tests.bearer_tokens import AUDIENCE, ISSUER, Minter

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
RULES = [
    {"resources": ["^/public$"], "policy": "bypass"},
    {"resources": ["^/admin(/|$)"], "subject": [["group:admins"]], "policy": "authenticated"},
    {"resources": ["^/strong(/|$)"], "policy": "two_factor"},
    {"policy": "authenticated"},
]
MINTER = Minter()


@pytest.fixture(scope="module", params=FLAVOURS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[str]:
    flavour = str(request.param)
    tmp = tmp_path_factory.mktemp(f"bearer-{flavour}")
    users = UsersFile(tmp / "users.toml", hasher=FAST)
    users.add("carol", password="amber lantern 33", groups=["admins"])
    (tmp / "jwks.json").write_text(json.dumps(MINTER.jwks))
    settings = Settings.from_mapping({
        "local_users": {"file": str(users.path)},
        "access_control": {"default_policy": "deny", "rules": RULES},
        "bearer_tokens": {"issuer": ISSUER, "audience": AUDIENCE,
                          "jwks_file": str(tmp / "jwks.json"), "algorithms": ["ES256"],
                          "required_scopes": ["api:read"]},
    }, environ={})
    module = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: module.protect(
            inner, settings, users=users, store=MemorySessionStore(),
            delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))) as url:
        yield url


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", **headers}


def audit_events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "secure_mw.audit" and f'"event":"{name}"' in r.getMessage()]


def test_a_valid_token_is_the_identity(site: str) -> None:
    answer = httpx.get(site + "/api/items", headers=bearer(MINTER.token(groups=["admins"])))
    assert answer.status_code == 200
    body = answer.json()
    assert body["sub"] == "alice" and body["source"] == "bearer"
    assert body["groups"] == ["admins"] and "set-cookie" not in answer.headers
    assert httpx.get(site + "/admin", headers=bearer(MINTER.token(groups=["admins"]))
                     ).status_code == 200


@pytest.mark.parametrize("case", sorted(MINTER.refusals(huge=12 * 1024)))
def test_every_invalid_token_is_401_with_an_audit_line(
        site: str, case: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="secure_mw.audit")
    token = MINTER.refusals(huge=12 * 1024)[case]
    for accept in ("application/json", "text/html"):      # never a login redirect
        answer = httpx.get(site + "/api/items", headers=bearer(token, Accept=accept))
        assert answer.status_code == 401, case
        assert answer.headers["www-authenticate"] == 'Bearer realm="secure_mw", ' \
            'error="invalid_token"'
        assert token not in answer.text and "set-cookie" not in answer.headers
    events = audit_events(caplog, "invalid_token")
    assert len(events) == 2 and all(e["source"] == "bearer" and e["reason"] for e in events)
    assert token not in caplog.text


def test_a_huge_token_is_refused_not_a_500(site: str, tmp_path: Path) -> None:
    token = MINTER.token(pad="x" * 100 * 1024)
    try:
        answer = httpx.get(site + "/api/items", headers=bearer(token))
    except httpx.ReadError:     # uvicorn's h11 drops a 100 KB header before any app
        pass
    else:                       # 401 from us, or the server's own header limit
        assert answer.status_code in (400, 401, 431)
    # Where no server limit comes first (in-process), it is our 401.
    (tmp_path / "jwks.json").write_text(json.dumps(MINTER.jwks))
    settings = Settings.from_mapping({"bearer_tokens": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(tmp_path / "jwks.json")}},
        environ={})
    import asyncio

    from tests.apps import asgi_inner, wsgi_inner

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(asgi.protect(asgi_inner(), settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return await c.get("/api", headers=bearer(token))

    with httpx.Client(transport=httpx.WSGITransport(wsgi.protect(wsgi_inner, settings)),
                      base_url="http://localhost") as client:
        answers = [asyncio.run(call()), client.get("/api", headers=bearer(token))]
    for answer in answers:
        assert answer.status_code == 401 and answer.json() == {"error": "invalid_token"}


def test_a_cookie_next_to_a_token_is_ignored(site: str) -> None:
    with browser() as carol:
        form = carol.get(site + "/.auth/login")
        state = re.search(r'name="state" value="([^"]+)"', form.text)
        assert state
        carol.post(site + "/.auth/login", data={"state": state.group(1), "username": "carol",
                                                "password": "amber lantern 33"})
        assert carol.get(site + "/admin").status_code == 200     # the session works
        # An invalid token next to a valid session: 401, never the session.
        refused = carol.get(site + "/admin", headers=bearer("garbage.token.here"))
        assert refused.status_code == 401
        # A valid token of a user who is not an admin: the token decides, not the session.
        denied = carol.get(site + "/admin", headers=bearer(MINTER.token(groups=["staff"])))
        assert denied.status_code == 403
        mine = carol.get(site + "/api/x", headers=bearer(MINTER.token(sub="dave")))
        assert mine.status_code == 200 and mine.json()["sub"] == "dave"


def test_no_token(site: str) -> None:
    api = httpx.get(site + "/api/items", headers={"Accept": "application/json"})
    assert api.status_code == 401
    offers = api.headers.get_list("www-authenticate")
    assert offers[0] == 'Bearer realm="secure_mw"'      # RFC 6750 §3.1: no error code
    page = httpx.get(site + "/api/items", headers={"Accept": "text/html"})
    assert page.status_code == 302 and page.headers["location"].startswith("/.auth/login")
    basic = httpx.get(site + "/api/items", headers={"Accept": "text/html",
                                                    "Authorization": "Basic dTpw"})
    assert basic.status_code == 401 and basic.headers.get_list("www-authenticate")[0] == \
        'Bearer realm="secure_mw"'
    assert httpx.get(site + "/public").status_code == 200


def test_insufficient_scope_and_rules(site: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="secure_mw.audit")
    scant = httpx.get(site + "/api/items", headers=bearer(MINTER.token(scope="api:write")))
    assert scant.status_code == 403 and scant.json() == {"error": "insufficient_scope"}
    assert scant.headers["www-authenticate"] == \
        'Bearer realm="secure_mw", error="insufficient_scope", scope="api:read"'
    scp = httpx.get(site + "/api/items", headers=bearer(MINTER.token(scope=None,
                                                                     scp=["api:read"])))
    assert scp.status_code == 200
    ruled = httpx.get(site + "/admin", headers=bearer(MINTER.token(groups=["staff"])))
    assert ruled.status_code == 403 and ruled.json() == {"error": "forbidden"}
    denied = audit_events(caplog, "authorization_denied")
    assert [e["user"] for e in denied] == ["alice", "alice"]


def test_a_token_is_never_sent_to_a_second_step(site: str) -> None:
    for accept in ("application/json", "text/html"):
        answer = httpx.get(site + "/strong", headers=bearer(MINTER.token(), Accept=accept))
        assert answer.status_code == 403, answer.text


def test_many_parallel_invalid_tokens_are_each_refused(site: str) -> None:
    import concurrent.futures

    tokens = [MINTER.token(header={"kid": f"k{n}"}) for n in range(40)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(
            lambda t: httpx.get(site + "/api/items", headers=bearer(t)).status_code, tokens))
    assert statuses == [401] * 40


# -- docs/bearer-tokens.md, as written ----------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "bearer-tokens.md"


def documented(title: str, language: str) -> str:
    text = DOC.read_text()
    marker = f"<!-- example: {title} -->"
    assert marker in text, f"docs/bearer-tokens.md has no example {title!r}"
    return text.split(marker, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_documented_example_works_with_curl(flavour: str, tmp_path: Path) -> None:
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    minter = Minter()
    (tmp_path / "issuer-jwks.json").write_text(json.dumps(minter.jwks))
    (tmp_path / "secure-mw.toml").write_text(documented("bearer", "toml"))
    settings = Settings.from_file(tmp_path / "secure-mw.toml", environ={})
    module = asgi if flavour == "asgi" else wsgi
    token = minter.token(iss="https://idp.example.com", aud="https://api.example.com",
                         scope="api:read")
    with serve(flavour, lambda inner: module.protect(inner, settings,
                                                     store=MemorySessionStore())) as base:
        outputs = []
        for line in documented("curl", "sh").strip().splitlines():
            command = line.replace("http://127.0.0.1:8000", base)
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                  env={"TOKEN": token, "PATH": "/usr/bin:/bin"}, timeout=30)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
    assert json.loads(outputs[0])["sub"] == "alice"
    assert outputs[1].strip() == "401"
    assert outputs[2].startswith("HTTP/1.") and " 401" in outputs[2].splitlines()[0]
    assert 'www-authenticate: bearer realm="secure_mw"' in outputs[2].lower()


def test_a_websocket_handshake_with_a_token(site: str, request: pytest.FixtureRequest
                                            ) -> None:
    if request.node.callspec.params["site"] != "asgi":
        pytest.skip("WebSocket is ASGI only")
    import websockets.exceptions
    from websockets.sync.client import connect

    url = "ws" + site[4:] + "/ws"
    with connect(url, additional_headers={"Authorization": "Bearer " + MINTER.token()}
                 ) as ws:
        assert json.loads(ws.recv())["sub"] == "alice"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": "Bearer forged.token.x"}).close()
    assert refused.value.response.status_code == 403
