"""Logout from the provider's side end to end: the real OpenID provider with Back-Channel
Logout 1.0 on, two instances of the app (uvicorn and a WSGI server, separate processes)
sharing a real redis-server or one SQLite file, with the Redis, SQLite and cookie stores;
RP-initiated logout that ends the provider's session; forged, foreign and replayed logout
tokens (also twenty at once, to both instances); front-channel logout as an OP sends it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw.crypto import KeyRing
from secure_mw.tokens import SigningKey, sign
from tests.apps import browser
from tests.idp import IdPServer, dev_login, rp_logout
from tests.servers import RedisServer, free_port, wait_for_port

SECRET = "logout-client-secret-for-tests-only"
KEY = KeyRing.new_key_text()
USERS = [{"sub": "alice", "password": "alice-pw", "email": "alice@example.com",
          "email_verified": True, "name": "Alice"},
         {"sub": "bob", "password": "bob-pw", "email": "bob@example.com",
          "email_verified": True, "name": "Bob"}]
PORTS = [free_port(), free_port()]     # instance A (ASGI: receives logout tokens), B (WSGI)
COOKIE = "__Host-secure_mw_session"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: (session.store, where the cookie store keeps its marks): Redis, SQLite, the cookie store
#: with Redis and the cookie store with the SQLite file.
STORES = ["redis", "sqlite", "cookie", "cookie+sqlite"]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    uris = [f"http://127.0.0.1:{p}" for p in PORTS]
    server = IdPServer(clients=[{
        "client_id": "app", "client_secret": SECRET,
        "redirect_uris": [f"{u}/.auth/callback" for u in uris],
        "post_logout_redirect_uris": [f"{u}/.auth/logged-out" for u in uris],
        "backchannel_logout_uri": f"{uris[0]}/.auth/backchannel-logout",
        "backchannel_logout_session_required": True,
    }], users=USERS, backchannel_logout=True)
    server.start()
    yield server
    server.stop()


@contextmanager
def instances(idp: IdPServer, redis: RedisServer, store: str,
              **more: str) -> Iterator[tuple[str, str]]:
    """Instance A (uvicorn) and B (WSGI), separate processes on the same Redis (or, for
    ``sqlite`` and ``cookie+sqlite``, the same SQLite file and no Redis at all)."""
    directory = Path(tempfile.mkdtemp(prefix="bcl-"))
    directory.chmod(0o700)
    shared = {"SECURE_MW_SQLITE__PATH": str(directory / "store.sqlite3")} \
        if store.endswith("sqlite") else {"SECURE_MW_SESSION__REDIS_URL": redis.url}
    env = {**os.environ, "SECURE_MW_SESSION__STORE": store.partition("+")[0], **shared,
           "SECURE_MW_KEYS__ENCRYPTION_KEYS": json.dumps([KEY]),
           "SECURE_MW_OIDC__ISSUER": idp.issuer, "SECURE_MW_OIDC__CLIENT_ID": "app",
           "SECURE_MW_OIDC__CLIENT_SECRET": SECRET,
           "SECURE_MW_OIDC__FRONTCHANNEL_LOGOUT": "true",
           "SECURE_MW_OIDC__SCOPES": "openid,profile,email", **more}
    env.pop("SECURE_MW_CONFIG", None)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for flavour, port in (("asgi", PORTS[0]), ("wsgi", PORTS[1])):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.e2e_app", "--flavour", flavour,
                 "--port", str(port)], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(port, proc=procs[-1], timeout=30)
        yield f"http://127.0.0.1:{PORTS[0]}", f"http://127.0.0.1:{PORTS[1]}"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def login(client: httpx.Client, base: str, idp: IdPServer, user: str = "alice") -> str:
    """Sign in at ``base`` through the provider; the new session cookie's value."""
    client.cookies.delete(COOKIE)
    start = client.get(base + "/.auth/login?rd=/x")
    assert start.status_code == 302
    callback = dev_login(client, start.headers["location"], username=user,
                         password=f"{user}-pw")
    assert client.get(callback).status_code == 302
    value = client.cookies.get(COOKIE)
    assert value
    return str(value)


def at(base: str, cookie: str, path: str = "/x") -> httpx.Response:
    return httpx.get(base + path, headers={"Cookie": f"{COOKIE}={cookie}",
                                           "Accept": "application/json"})


def logout_token(idp: IdPServer, *, key: SigningKey | None = None,
                 headers: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": idp.issuer, "aud": "app", "iat": now, "exp": now + 120,
            "jti": secrets.token_urlsafe(16), "events": {EVENT: {}}, **claims}
    body = {k: v for k, v in body.items() if v is not None}
    key = key or SigningKey.from_jwk(idp.jwks_private["keys"][0])
    return sign(body, key, headers={"typ": "logout+jwt", **(headers or {})})


def post_token(base: str, token: str) -> httpx.Response:
    return httpx.post(base + "/.auth/backchannel-logout", data={"logout_token": token})


@pytest.mark.parametrize("store", STORES)
def test_provider_logout_ends_the_session_at_the_other_instance(
        idp: IdPServer, redis_server: RedisServer, store: str) -> None:
    with instances(idp, redis_server, store) as (a, b), browser() as client:
        first = login(client, a, idp)
        assert at(b, first).status_code == 200
        # A second session of the same provider session (no password asked this time).
        second = login(client, a, idp)
        assert second != first and at(b, second).status_code == 200
        # RP-initiated logout of the second from instance B, with id_token_hint: the
        # provider ends its session and POSTs a logout token for its sid to instance A ...
        csrf = at(b, second, "/.auth/me").json()["csrf_token"]
        out = httpx.post(b + "/.auth/logout", data={"csrf": csrf},
                         headers={"Cookie": f"{COOKIE}={second}"})
        assert out.status_code == 303 and "id_token_hint=" in out.headers["location"]
        back = rp_logout(client, out.headers["location"])
        assert back.startswith(b + "/.auth/logged-out?") and "state=" in back
        assert client.get(back).status_code == 200
        # ... so the first session is refused at B on its very next request.
        assert at(b, first).status_code == 401, idp.log_text()[-3000:]
        assert at(a, first).status_code == 401
        # The provider's session is really over: a new login asks for the password.
        client.cookies.delete(COOKIE)
        start = client.get(a + "/.auth/login").headers["location"]
        assert 'name="password"' in client.get(start, follow_redirects=True).text
        # A new login after the logout works.
        fresh = login(client, b, idp)
        assert at(a, fresh).status_code == 200


@pytest.mark.parametrize("store", STORES)
def test_logout_tokens_forged_foreign_replayed_and_for_a_subject(
        idp: IdPServer, redis_server: RedisServer, store: str) -> None:
    with instances(idp, redis_server, store) as (a, b), browser() as alice, \
            browser() as bob:
        alice_session = login(alice, a, idp)
        bob_one = login(bob, a, idp, "bob")
        bob_two = login(bob, b, idp, "bob")
        foreign = SigningKey.generate("ES256")
        impostor = SigningKey(foreign.private_key, kid=idp.jwks_private["keys"][0]["kid"])
        for token in (logout_token(idp, key=foreign, sub="bob"),
                      logout_token(idp, key=impostor, sub="bob"),
                      logout_token(idp, sub="bob", aud="another-client"),
                      logout_token(idp, sub="bob", iss="https://evil.example"),
                      logout_token(idp, sub="bob", nonce="n"),
                      logout_token(idp, sub="bob", events={EVENT: True}),
                      logout_token(idp, sub="bob", events=None),
                      logout_token(idp, sub="bob", jti=None),
                      logout_token(idp, sub="bob", exp=None),
                      logout_token(idp, sub="bob", headers={"typ": "at+jwt"}),
                      logout_token(idp)):              # neither sub nor sid
            refused = post_token(a, token)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"] == "invalid_request"
        assert at(b, bob_one).status_code == 200 and at(a, bob_two).status_code == 200
        # A token for the subject only ends every session of bob, at every instance.
        token = logout_token(idp, sub="bob")
        done = post_token(b, token)
        assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
        assert at(a, bob_one).status_code == 401 and at(a, bob_two).status_code == 401
        assert at(b, alice_session).status_code == 200
        # Replayed, at the same or at the other instance.
        assert post_token(b, token).status_code == 400
        assert post_token(a, token).status_code == 400
        # Bob signs in again after it: that session is not ended by the old logout.
        again = login(bob, a, idp, "bob")
        assert at(b, again).status_code == 200


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_twenty_parallel_posts_of_one_token_to_both_instances_end_it_once(
        idp: IdPServer, redis_server: RedisServer, store: str) -> None:
    with instances(idp, redis_server, store) as (a, b), browser() as client:
        cookie = login(client, a, idp)
        token = logout_token(idp, sub="alice")
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda i: post_token((a, b)[i % 2], token).status_code,
                                     range(20)))
        assert sorted(statuses) == [200] + [400] * 19
        assert at(a, cookie).status_code == 401 and at(b, cookie).status_code == 401


@pytest.mark.parametrize("store", ["redis", "cookie"])
def test_redis_down_is_503_with_retry_after_never_200(idp: IdPServer, store: str) -> None:
    own = RedisServer()
    own.start()
    try:
        with instances(idp, own, store) as (a, b), browser() as client:
            cookie = login(client, a, idp)
            token = logout_token(idp, sub="alice")
            own.stop()
            for base in (a, b):
                down = post_token(base, token)
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"].isdigit()
                assert at(base, cookie).status_code == 503
            own.start()
            # The token was not spent while the store was down: the provider's retry works.
            assert post_token(b, token).status_code == 200
            assert post_token(a, token).status_code == 400
    finally:
        own.stop()


def test_the_endpoint_is_rate_limited_per_client_address(
        idp: IdPServer, redis_server: RedisServer) -> None:
    rule = [{"key": "ip", "limit": "5/minute", "paths": ["^/\\.auth/backchannel-logout$"]}]
    with instances(idp, redis_server, "redis",
                   SECURE_MW_RATE_LIMITS__RULES=json.dumps(rule),
                   SECURE_MW_RATE_LIMITS__STORE="redis") as (a, b):
        token = logout_token(idp, sub="nobody", iss="https://evil.example")
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda i: post_token((a, b)[i % 2], token).status_code,
                                     range(12)))
        assert sorted(statuses) == [400] * 5 + [429] * 7


def test_the_endpoint_refuses_other_methods_and_bodies(
        idp: IdPServer, redis_server: RedisServer) -> None:
    with instances(idp, redis_server, "redis") as (a, _b):
        url = a + "/.auth/backchannel-logout"
        assert httpx.get(url).status_code == 405
        assert httpx.post(url, json={"logout_token": "x"}).status_code == 415
        assert httpx.post(url, data={"logout_token": "x.y.z"}).status_code == 400
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert httpx.post(url, content=b"", headers=form).status_code == 400
        both = httpx.post(url, content=b"logout_token=a&logout_token=b",
                          headers=form)
        assert both.status_code == 400
        huge = httpx.post(url, content=b"logout_token=" + b"a" * 100_000, headers=form)
        assert huge.status_code == 413


@pytest.mark.parametrize("store", STORES)
def test_front_channel_logout_as_a_provider_sends_it(
        idp: IdPServer, redis_server: RedisServer, store: str) -> None:
    with instances(idp, redis_server, store) as (a, b), browser() as client:
        cookie = login(client, a, idp)
        assert at(b, cookie).status_code == 200
        sid = _provider_sid(b, client, idp)
        wrong = httpx.get(a + "/.auth/frontchannel-logout",
                          params={"iss": "https://evil.example", "sid": sid})
        assert wrong.status_code == 400 and at(b, cookie).status_code == 200
        page = httpx.get(a + "/.auth/frontchannel-logout", params={"iss": idp.issuer,
                                                                    "sid": sid})
        assert page.status_code == 200
        assert f"frame-ancestors {idp.issuer}" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert at(b, cookie).status_code == 401


def _provider_sid(base: str, client: httpx.Client, idp: IdPServer) -> str:
    """The provider's sid of the browser's provider session: sign in once more through it,
    sign that session out here and read the sid of the id_token_hint it would send."""
    from urllib.parse import parse_qs, urlsplit

    from secure_mw._encoding import b64url_decode

    other = login(client, base, idp)
    csrf = at(base, other, "/.auth/me").json()["csrf_token"]
    out = httpx.post(base + "/.auth/logout", data={"csrf": csrf},
                     headers={"Cookie": f"{COOKIE}={other}"})
    hint = parse_qs(urlsplit(out.headers["location"]).query)["id_token_hint"][0]
    sid = json.loads(b64url_decode(hint.split(".")[1]))["sid"]
    assert isinstance(sid, str)
    return sid
