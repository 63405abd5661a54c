"""The Flask sample app (sample_apps/flask_app) end to end on gunicorn, a real WSGI server:
sign-in through the built-in login (and its second step) and through the real OpenID
provider, refusal of a non-admin, logout; and ``flask run`` serving the protected app."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest

from secure_mw.crypto import PasswordHasher
from secure_mw.login import UsersFile
from tests.apps import browser
from tests.idp import IdPServer, dev_login, rp_logout
from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.slow

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
PASSWORDS = {"admin": "correct horse battery", "user": "plum orchard staple"}
SECRET = "flask-sample-client-secret"
APP_PORT = free_port()
JSON = {"Accept": "application/json"}


def env_for(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env.update({"SAMPLE_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1", **extra})
    return env


def gunicorn(port: int, env: dict[str, str], log: Path) -> ServerProcess:
    pytest.importorskip("gunicorn")
    return ServerProcess([sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4",
                          "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                          "sample_apps.flask_app:create_app()"], port=port, env=env, log=log)


@pytest.fixture
def local_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    users = UsersFile(state / "users.toml", hasher=FAST)
    users.add("admin", password=PASSWORDS["admin"], display_name="Ada Admin",
              groups=["admins"])
    users.add("user", password=PASSWORDS["user"], display_name="Uma User")
    return state


@pytest.fixture
def local_app(local_state: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with gunicorn(port, env_for(local_state), tmp_path / "gunicorn.log") as server:
        yield server.url


def sign_in(client: httpx.Client, base: str, name: str, path: str) -> httpx.Response:
    first = client.get(base + path)
    assert first.status_code == 302, first.text
    assert first.headers["location"] == f"/.auth/login?rd={path}"
    form = client.get(base + first.headers["location"])
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert form.status_code == 200 and state
    done = client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": name, "password": PASSWORDS[name]})
    assert done.status_code == 303 and done.headers["location"] == path, done.text
    return client.get(base + path)


def sign_out(client: httpx.Client, base: str) -> httpx.Response:
    csrf = client.get(base + "/.auth/me").json()["csrf_token"]
    out = client.post(base + "/.auth/logout", data={"csrf": csrf})
    assert out.status_code == 303
    return out


def test_anonymous_gets_the_public_page_and_is_sent_to_the_login(local_app: str) -> None:
    with browser() as client:
        home = client.get(local_app + "/")
        assert home.status_code == 200 and "Nobody is signed in" in home.text
        assert "default-src 'self'" in home.headers["content-security-policy"]
        assert client.get(local_app + "/admin").headers["location"] == "/.auth/login?rd=/admin"
        api = client.get(local_app + "/api/me", headers=JSON)
        assert api.status_code == 401 and api.json()["login_url"] == "/.auth/login"


def test_built_in_login_admin_page_api_two_factors_and_logout(local_app: str) -> None:
    with browser() as client:
        page = sign_in(client, local_app, "admin", "/admin")
        assert page.status_code == 200 and "Only members of the admins group" in page.text
        assert '<strong id="who">Ada Admin</strong>' in page.text
        me = client.get(local_app + "/api/me", headers=JSON).json()["user"]
        assert me["sub"] == "admin" and me["groups"] == ["admins"] and me["auth_level"] == 1
        # The two-factor page sends a one-factor session to the second step: enrol TOTP.
        step = client.get(local_app + "/two-factor")
        assert step.headers["location"] == "/.auth/2fa?rd=/two-factor"
        enrol_page = client.get(local_app + step.headers["location"])
        secret = re.search(r"Or type the key: <code>([A-Z2-7]+)</code>", enrol_page.text)
        enrol = re.search(r'name="enrol" value="([^"]+)"', enrol_page.text)
        csrf = re.search(r'name="csrf" value="([^"]+)"', enrol_page.text)
        assert secret and enrol and csrf
        done = client.post(local_app + "/.auth/2fa?rd=/two-factor", data={
            "csrf": csrf.group(1), "enrol": enrol.group(1),
            "code": pyotp.TOTP(secret.group(1)).now()})
        assert done.status_code == 303 and done.headers["location"] == "/two-factor"
        strong = client.get(local_app + "/two-factor")
        assert strong.status_code == 200 and "second step" in strong.text
        assert sign_out(client, local_app).headers["location"] == "/.auth/logged-out"
        assert client.get(local_app + "/admin").status_code == 302
        assert client.get(local_app + "/api/me", headers=JSON).status_code == 401


def test_built_in_login_non_admin_is_refused(local_app: str) -> None:
    with browser() as client:
        refused = sign_in(client, local_app, "user", "/admin")
        assert refused.status_code == 403 and "Access denied" in refused.text
        api = client.get(local_app + "/admin", headers=JSON)
        assert api.status_code == 403 and api.json() == {"error": "forbidden"}
        assert client.get(local_app + "/api/me", headers=JSON).json()["user"]["sub"] == "user"
        assert "Uma User" in client.get(local_app + "/").text


@pytest.fixture(scope="module")
def idp() -> Iterator[IdPServer]:
    base = f"http://127.0.0.1:{APP_PORT}"
    server = IdPServer(clients=[{
        "client_id": "flask-sample", "client_secret": SECRET,
        "redirect_uris": [f"{base}/.auth/callback"],
        "post_logout_redirect_uris": [f"{base}/.auth/logged-out"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic"}], users=[
        {"sub": "alice", "password": "alice-pw", "email": "alice@example.com",
         "email_verified": True, "name": "Alice Example", "groups": ["admins"]},
        {"sub": "bob", "password": "bob-pw", "email": "bob@example.com",
         "email_verified": True, "name": "Bob Example", "groups": ["staff"]}])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def oidc_app(idp: IdPServer, tmp_path: Path) -> Iterator[str]:
    env = env_for(tmp_path / "state", SECURE_MW_OIDC__ISSUER=idp.issuer,
                  SECURE_MW_OIDC__CLIENT_ID="flask-sample",
                  SECURE_MW_OIDC__CLIENT_SECRET=SECRET,
                  SECURE_MW_OIDC__SCOPES=json.dumps(["openid", "profile", "email", "groups"]))
    with gunicorn(APP_PORT, env, tmp_path / "gunicorn.log") as server:
        yield server.url
    assert not (tmp_path / "state" / "users.toml").exists()   # no built-in users then


def provider_sign_in(client: httpx.Client, base: str, idp: IdPServer, user: str,
                     path: str) -> httpx.Response:
    first = client.get(base + path)
    assert first.headers["location"] == f"/.auth/login?rd={path}"
    start = client.get(base + first.headers["location"])
    assert start.status_code == 302 and start.headers["location"].startswith(idp.issuer)
    callback = dev_login(client, start.headers["location"], username=user,
                         password=f"{user}-pw")
    assert callback.startswith(base + "/.auth/callback?")
    back = client.get(callback)
    assert back.status_code == 302 and back.headers["location"] == path
    return client.get(base + path)


def test_provider_sign_in_admin_page_and_logout(oidc_app: str, idp: IdPServer) -> None:
    with browser() as client:
        page = provider_sign_in(client, oidc_app, idp, "alice", "/admin")
        assert page.status_code == 200 and "Alice Example" in page.text
        me = client.get(oidc_app + "/api/me", headers=JSON).json()["user"]
        assert me["sub"] == "alice" and me["source"] == "oidc"
        # A provider's session cannot be stepped up here: the two-factor page refuses it.
        assert client.get(oidc_app + "/two-factor").status_code == 403
        end_session = sign_out(client, oidc_app).headers["location"]
        assert end_session.startswith(idp.issuer)
        back = rp_logout(client, end_session)
        assert back.startswith(oidc_app + "/.auth/logged-out")
        assert client.get(oidc_app + "/admin").status_code == 302
        assert client.get(oidc_app + "/api/me", headers=JSON).status_code == 401


def test_provider_sign_in_non_admin_is_refused(oidc_app: str, idp: IdPServer) -> None:
    with browser() as client:
        refused = provider_sign_in(client, oidc_app, idp, "bob", "/admin")
        assert refused.status_code == 403 and "Access denied" in refused.text
        assert client.get(oidc_app + "/api/me", headers=JSON).json()["user"]["sub"] == "bob"


def test_flask_run_serves_the_protected_app(local_state: Path, tmp_path: Path) -> None:
    port = free_port()
    flask = Path(sys.executable).with_name("flask")
    command = [str(flask) if flask.exists() else "flask", "--app", "sample_apps.flask_app",
               "run", "--port", str(port)]
    with ServerProcess(command, port=port, env=env_for(local_state),
                       log=tmp_path / "flask.log") as server, browser() as client:
        home = client.get(server.url + "/")
        assert home.status_code == 200 and "content-security-policy" in home.headers
        page = sign_in(client, server.url, "admin", "/admin")
        assert page.status_code == 200 and "Ada Admin" in page.text
