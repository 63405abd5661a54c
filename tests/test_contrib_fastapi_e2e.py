"""sample_apps/fastapi_app end to end, started as its README says (``python -m
sample_apps.fastapi_app``) on a real uvicorn: the built-in login and the real OpenID provider
sign people in, the admin page and the admin API refuse a non-admin, the two-step page asks
for the second factor, logout ends the session."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.apps import browser
from tests.idp import IdPServer, dev_login, rp_logout
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sample-app-client-secret-for-tests"
PORT = free_port()
BASE = f"http://127.0.0.1:{PORT}"


class Sample:
    def __init__(self, proc: subprocess.Popen[str], passwords: dict[str, str]) -> None:
        self.proc = proc
        self.passwords = passwords
        self.output: list[str] = []


@contextmanager
def sample(tmp_path: Path, config: Path | None = None) -> Iterator[Sample]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PYTHONPATH"] = str(ROOT)
    if config is not None:
        env["SECURE_MW_CONFIG"] = str(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sample_apps.fastapi_app", "--port", str(PORT),
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    passwords: dict[str, str] = {}
    output: list[str] = []
    drain = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            found = re.search(r"sign in as '(\w+)' with password '([^']+)'", line)
            if found:
                passwords[found.group(1)] = found.group(2)
            if "open http://" in line:
                break
        drain = threading.Thread(target=lambda: output.extend(proc.stdout or ()),
                                 daemon=True)
        drain.start()
        wait_for_port(PORT, timeout=30, proc=proc)  # type: ignore[arg-type]
        running = Sample(proc, passwords)
        running.output = output
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if drain is not None:
            drain.join(timeout=5)


def local_sign_in(client: httpx.Client, user: str, password: str, path: str = "/admin"
                  ) -> None:
    first = client.get(BASE + path)
    assert first.status_code == 302, first.text
    assert first.headers["location"] == f"/.auth/login?rd={path}"
    form = client.get(BASE + first.headers["location"])
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state, form.text
    done = client.post(BASE + "/.auth/login", data={
        "state": state.group(1), "username": user, "password": password})
    assert done.status_code == 303 and done.headers["location"] == path, done.text


def sign_out(client: httpx.Client) -> httpx.Response:
    csrf = client.get(BASE + "/.auth/me").json()["csrf_token"]
    out = client.post(BASE + "/.auth/logout", data={"csrf": csrf})
    assert out.status_code == 303
    return out


def test_built_in_login_admin_non_admin_two_factor_and_logout(tmp_path: Path) -> None:
    with sample(tmp_path) as app:
        assert set(app.passwords) == {"alice", "bob"}
        assert httpx.get(BASE + "/healthz").json() == {"status": "ok"}      # public
        assert httpx.get(BASE + "/api/me").status_code == 401                # API: no redirect
        with browser() as alice:
            local_sign_in(alice, "alice", app.passwords["alice"])
            page = alice.get(BASE + "/admin")
            assert page.status_code == 200 and "only admins see this page" in page.text
            nonce = page.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
            assert f'<style nonce="{nonce}">' in page.text
            assert alice.get(BASE + "/api/reports", headers={"Accept": "*/*"}).status_code \
                == 200
            me = alice.get(BASE + "/api/me", headers={"Accept": "*/*"}).json()
            assert me["sub"] == "alice" and me["groups"] == ["admins"]
            step = alice.get(BASE + "/two-factor")
            assert step.status_code == 302
            assert step.headers["location"] == "/.auth/2fa?rd=/two-factor"
            api_step = alice.get(BASE + "/two-factor", headers={"Accept": "*/*"})
            assert api_step.status_code == 401
            assert api_step.json()["detail"]["error"] == "second_factor_required"
            assert sign_out(alice).headers["location"] == "/.auth/logged-out"
            assert alice.get(BASE + "/admin").status_code == 302              # signed out
        with browser() as bob:
            local_sign_in(bob, "bob", app.passwords["bob"], path="/")
            assert 'id="who">Bob User<' in bob.get(BASE + "/").text
            refused = bob.get(BASE + "/admin")
            assert refused.status_code == 403
            api = bob.get(BASE + "/api/reports", headers={"Accept": "*/*"})
            assert api.status_code == 403 and api.json() == {"detail": {"error": "forbidden"}}
    log = "".join(app.output).split("(Ctrl-C stops)", 1)[1]     # what it logged since
    assert '"event":"authorization_denied"' in log and '"user":"bob"' in log
    assert app.passwords["bob"] not in log and app.passwords["alice"] not in log


@pytest.fixture
def idp() -> Iterator[IdPServer]:
    server = IdPServer(clients=[{
        "client_id": "sample", "client_secret": SECRET,
        "redirect_uris": [f"{BASE}/.auth/callback"],
        "post_logout_redirect_uris": [f"{BASE}/.auth/logged-out"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic"}], users=[
        {"sub": "ada", "password": "ada-pw", "email": "ada@example.com",
         "email_verified": True, "name": "Ada Admin", "groups": ["admins"]},
        {"sub": "ben", "password": "ben-pw", "email": "ben@example.com",
         "email_verified": True, "name": "Ben Staff", "groups": ["staff"]}])
    server.start()
    yield server
    server.stop()


def oidc_sign_in(client: httpx.Client, idp: IdPServer, user: str, path: str) -> None:
    first = client.get(BASE + path)
    assert first.status_code == 302
    start = client.get(BASE + first.headers["location"])
    assert start.status_code == 302 and start.headers["location"].startswith(idp.issuer)
    callback = dev_login(client, start.headers["location"], username=user,
                         password=f"{user}-pw")
    assert callback.startswith(BASE + "/.auth/callback?")
    back = client.get(callback)
    assert back.status_code in (302, 303) and back.headers["location"] == path


def test_openid_provider_sign_in_admin_non_admin_and_logout(tmp_path: Path,
                                                            idp: IdPServer) -> None:
    config = tmp_path / "secure-mw.toml"
    config.write_text(f"""
[oidc]
issuer = "{idp.issuer}"
client_id = "sample"
client_secret = "{SECRET}"
scopes = ["openid", "profile", "email", "groups"]
""", encoding="utf-8")
    with sample(tmp_path, config) as app:
        assert app.passwords == {}
        assert not (tmp_path / "state" / "users.toml").exists()
        with browser() as ada:
            oidc_sign_in(ada, idp, "ada", "/admin")
            assert "only admins see this page" in ada.get(BASE + "/admin").text
            # An OpenID provider's session cannot be stepped up here: refused.
            assert ada.get(BASE + "/two-factor").status_code == 403
            end_session = sign_out(ada).headers["location"]
            assert end_session.startswith(idp.issuer)
            back = rp_logout(ada, end_session)
            assert back.startswith(BASE + "/.auth/logged-out")
            assert ada.get(BASE + "/admin").status_code == 302
        with browser() as ben:
            oidc_sign_in(ben, idp, "ben", "/")
            assert 'id="who">Ben Staff<' in ben.get(BASE + "/").text
            assert ben.get(BASE + "/admin").status_code == 403
            assert ben.get(BASE + "/api/reports", headers={"Accept": "*/*"}).status_code == 403
