"""The Django sample app end to end, started as its README says
(``python -m sample_apps.django_app``): on gunicorn (the WSGI entry) and uvicorn (the ASGI
entry), through the built-in login and through the real OpenID provider; an admin gets
the admin page, a non-admin is refused, the two-factor page needs a second factor, and
logout ends the Django login too."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyotp
import pytest

from secure_mw.crypto import PasswordHasher
from secure_mw.login import UsersFile
from tests.apps import browser
from tests.idp import IdPServer, dev_login
from tests.servers import ServerProcess, free_port

pytest.importorskip("django")
pytestmark = pytest.mark.slow

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
SECRET = "django-app-client-secret-for-tests-only"
PORTS = {"wsgi": free_port(), "asgi": free_port()}
IDP_USERS = [
    {"sub": "alice", "password": "alice-pw", "email": "alice@example.com",
     "email_verified": True, "name": "Alice Example", "groups": ["admins", "staff"]},
    {"sub": "bob", "password": "bob-pw", "email": "bob@example.com",
     "email_verified": True, "name": "Bob Example", "groups": ["staff"]},
]


@pytest.fixture(params=["wsgi", "asgi"])
def entry(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def sample_app(entry: str, state: Path, **env: str) -> Iterator[tuple[str, str]]:
    """The app on a free port; yields its URL and the demo password it printed."""
    port = PORTS[entry]
    args = [sys.executable, "-m", "sample_apps.django_app", "--bind", f"127.0.0.1:{port}",
            "--state-dir", str(state)] + (["--asgi"] if entry == "asgi" else [])
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    with ServerProcess(args, port=port, env={**environ, **env},
                       log=state.parent / f"{state.name}.log") as server:
        printed = re.search(r"with password '([^']+)'", server.log())
        yield server.url, printed.group(1) if printed else ""


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory whose users file already has a non-admin, ``bob``."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    UsersFile(state / "users.toml", hasher=FAST).add("bob", password="velvet harbor 22",
                                                      groups=["staff"])
    return state


def sign_in(client: httpx.Client, base: str, user: str, password: str) -> None:
    first = client.get(base + "/")
    assert first.status_code == 302 and first.headers["location"] == "/.auth/login?rd=/"
    form = client.get(base + "/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state, form.text
    done = client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": user, "password": password})
    assert done.status_code == 303, done.text


def sign_out(client: httpx.Client, base: str) -> httpx.Response:
    csrf = client.get(base + "/.auth/me").json()["csrf_token"]
    out = client.post(base + "/.auth/logout", data={"csrf": csrf})
    assert out.status_code == 303
    return out


def test_built_in_login_admin_api_two_factor_and_logout(entry: str, state: Path) -> None:
    with sample_app(entry, state) as (base, password), browser() as client:
        assert password
        assert client.get(base + "/healthz").text == "ok"
        sign_in(client, base, "demo", password)
        home = client.get(base + "/")
        assert home.status_code == 200 and "Hello, Demo Admin" in home.text
        assert client.get(base + "/admin-only/").status_code == 200
        me = client.get(base + "/api/me").json()
        assert me == {"user": "demo", "email": "demo@example.com", "groups": ["admins"],
                      "auth_level": 1, "source": "local"}
        django_session = client.cookies.get("sessionid")
        assert django_session
        # The two-factor page sends a one-factor session to the second step; enrol there.
        step = client.get(base + "/two-factor/")
        assert step.status_code == 302
        assert step.headers["location"] == "/.auth/2fa?rd=/two-factor/"
        page = client.get(base + step.headers["location"])
        secret = re.search(r"Or type the key: <code>([A-Z2-7]+)</code>", page.text)
        enrol = re.search(r'name="enrol" value="([^"]+)"', page.text)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert secret and enrol and csrf
        done = client.post(base + step.headers["location"], data={
            "csrf": csrf.group(1), "enrol": enrol.group(1),
            "code": pyotp.TOTP(secret.group(1)).now()})
        assert done.status_code == 303 and done.headers["location"] == "/two-factor/"
        strong = client.get(base + "/two-factor/")
        assert strong.status_code == 200 and "second factor" in strong.text
        assert client.get(base + "/api/me").json()["auth_level"] == 2
        sign_out(client, base)
        assert client.get(base + "/").status_code == 302
        api = client.get(base + "/api/me", headers={"Accept": "application/json"})
        assert api.status_code == 401
        # The Django session cookie alone is worth nothing, and is ended at once.
        leftover = httpx.get(base + "/healthz", cookies={"sessionid": django_session})
        assert leftover.status_code == 200
        again = httpx.get(base + "/api/me", headers={"Accept": "application/json"},
                          cookies={"sessionid": django_session})
        assert again.status_code == 401


def test_built_in_login_refuses_a_non_admin(entry: str, state: Path) -> None:
    with sample_app(entry, state) as (base, _), browser() as client:
        sign_in(client, base, "bob", "velvet harbor 22")
        refused = client.get(base + "/admin-only/")
        assert refused.status_code == 403 and "Access denied" in refused.text
        assert client.get(base + "/api/me").json()["groups"] == ["staff"]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    uris = [f"http://127.0.0.1:{p}" for p in PORTS.values()]
    server = IdPServer(clients=[{
        "client_id": "django-app", "client_secret": SECRET,
        "token_endpoint_auth_method": "client_secret_basic",
        "redirect_uris": [f"{u}/.auth/callback" for u in uris],
        "post_logout_redirect_uris": [f"{u}/.auth/logged-out" for u in uris],
        "grant_types": ["authorization_code"], "response_types": ["code"],
    }], users=IDP_USERS)
    server.start()
    yield server
    server.stop()


def oidc_sign_in(client: httpx.Client, base: str, idp: IdPServer, user: str) -> None:
    first = client.get(base + "/")
    assert first.status_code == 302
    start = client.get(base + first.headers["location"])
    assert start.status_code == 302 and start.headers["location"].startswith(idp.issuer)
    callback = dev_login(client, start.headers["location"], username=user,
                         password=f"{user}-pw")
    assert callback.startswith(base + "/.auth/callback?")
    assert client.get(callback).status_code in (302, 303)


def test_openid_provider_admin_non_admin_and_logout(entry: str, tmp_path: Path,
                                                    idp: IdPServer) -> None:
    state = tmp_path / "state"
    env = {"SECURE_MW_OIDC__ISSUER": idp.issuer, "SECURE_MW_OIDC__CLIENT_ID": "django-app",
           "SECURE_MW_OIDC__CLIENT_SECRET": SECRET,
           "SECURE_MW_OIDC__SCOPES": '["openid", "profile", "email", "groups"]'}
    with sample_app(entry, state, **env) as (base, password), browser() as alice:
        assert password == ""                       # no demo user: the provider signs in
        oidc_sign_in(alice, base, idp, "alice")
        assert "Hello, Alice Example" in alice.get(base + "/").text
        assert alice.get(base + "/admin-only/").status_code == 200
        me = alice.get(base + "/api/me").json()
        assert me["user"] == "alice" and me["source"] == "oidc"
        assert me["groups"] == ["admins", "staff"]
        out = sign_out(alice, base)
        assert out.headers["location"].startswith(idp.issuer)
        assert alice.get(base + "/").status_code == 302
        with browser() as bob:
            oidc_sign_in(bob, base, idp, "bob")
            assert bob.get(base + "/admin-only/").status_code == 403
            assert bob.get(base + "/api/me").json()["groups"] == ["staff"]
