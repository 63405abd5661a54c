"""``secure-mw serve`` behind Debian's nginx (integrations/nginx, as shipped) and Caddy
(integrations/caddy), in front of a service that knows nothing of secure_mw: sign in
through the proxy, the Remote-* headers and the signed assertion reach the service, a rule
refuses, a client's own Remote-User is stripped, path tricks are refused."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpcore
import httpx
import pytest

from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.login import UsersFile
from tests.apps import browser
from tests.servers import ServerProcess, find_program, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
AUTH, APP = "auth.example.test", "app.example.test"


class _Loopback(httpcore.SyncBackend):
    """Every *.example.test name is this host (the proxy listens on loopback)."""

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any
                    ) -> httpcore.NetworkStream:
        return super().connect_tcp("127.0.0.1", port, *args, **kwargs)


def client() -> httpx.Client:
    transport = httpx.HTTPTransport()
    transport._pool._network_backend = _Loopback()
    return browser(transport=transport)


@dataclass
class Site:
    port: int
    portal_log: Path

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"


def write_config(tmp_path: Path, port: int) -> Path:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11", groups=["admins"],
              email="alice@example.com", display_name="Zoë Example")
    users.add("bob", password="velvet harbor 22", groups=["staff"])
    config = tmp_path / "secure-mw.toml"
    config.write_text(f"""
[keys]
encryption_keys = ["{KeyRing.new_key_text()}"]

[local_users]
file = "{users.path}"

[server]
external_url = "http://{AUTH}:{port}"
trusted_proxies = ["127.0.0.1/32"]
allowed_hosts = ["{AUTH}:{port}", "{APP}:{port}"]

[session]
cookie_domain = "example.test"
cookie_secure = false

[access_control]
default_policy = "deny"

[[access_control.rules]]
resources = ["^/public(/|$)"]
policy = "bypass"

[[access_control.rules]]
resources = ["^/admin(/|$)"]
subject = [["group:admins"]]
policy = "authenticated"

[[access_control.rules]]
policy = "authenticated"
""", encoding="utf-8")
    return config


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}


@contextmanager
def upstream_and_portal(tmp_path: Path, port: int) -> Iterator[tuple[int, int, Path]]:
    """The echo service (the system's python3, no secure_mw) and ``secure-mw serve``."""
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    up, pp = free_port(), free_port()
    config = write_config(tmp_path, port)
    echo = subprocess.Popen([python, str(ROOT / "tests" / "forward_auth_upstream.py"),
                             str(up)], env={"PATH": "/usr/bin:/bin"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(up, proc=echo)
        log = tmp_path / "portal.log"
        with ServerProcess([sys.executable, "-m", "secure_mw.cli", "serve", "--config",
                            str(config), "--port", str(pp)], port=pp, env=clean_env(),
                           log=log):
            yield up, pp, log
    finally:
        echo.terminate()
        echo.wait(timeout=10)


def nginx_site(port: int, portal: int, upstream: int) -> str:
    """integrations/nginx/site.conf with this test's names, ports and no TLS; every edit
    must apply, so the shipped file is the one tested."""
    text = (ROOT / "integrations" / "nginx" / "site.conf").read_text(encoding="utf-8")
    edits = [("server 127.0.0.1:9091;", f"server 127.0.0.1:{portal};", 1),
             ("listen 443 ssl;", f"listen 127.0.0.1:{port};", 2),
             ("auth.example.com", AUTH, None), ("app.example.com", APP, None),
             ("include /etc/nginx/snippets/", f"include {ROOT}/integrations/nginx/", 2),
             ("proxy_pass http://127.0.0.1:8080;", f"proxy_pass http://127.0.0.1:{upstream};",
              1)]
    for old, new, count in edits:
        assert old in text and (count is None or text.count(old) == count), old
        text = text.replace(old, new)
    return "\n".join(line for line in text.splitlines() if "ssl_certificate" not in line)


@pytest.fixture
def nginx_site_running(tmp_path: Path) -> Iterator[Site]:
    program = find_program("nginx")
    port = free_port()
    with upstream_and_portal(tmp_path, port) as (up, pp, log):
        conf = tmp_path / "nginx"
        conf.mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""
        (conf / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {conf}/nginx.pid;\n"
            f"error_log {conf}/error.log warn;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {conf}/body;\n"
            f"  proxy_temp_path {conf}/proxy;\n  fastcgi_temp_path {conf}/fastcgi;\n"
            f"  uwsgi_temp_path {conf}/uwsgi;\n  scgi_temp_path {conf}/scgi;\n"
            f"{nginx_site(port, pp, up)}\n}}\n", encoding="utf-8")
        proc = subprocess.Popen([program, "-p", str(conf), "-c", str(conf / "nginx.conf")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(port, proc=proc)
            yield Site(port, log)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            assert proc.stderr is not None
            proc.stderr.close()


def caddyfile(port: int, portal: int, upstream: int) -> str:
    text = (ROOT / "integrations" / "caddy" / "Caddyfile").read_text(encoding="utf-8")
    edits = [("127.0.0.1:9091", f"127.0.0.1:{portal}", None),
             ("reverse_proxy 127.0.0.1:8080", f"reverse_proxy 127.0.0.1:{upstream}", 1),
             ("auth.example.com {", f"http://{AUTH}:{port} {{", 1),
             ("app.example.com {", f"http://{APP}:{port} {{", 1)]
    for old, new, count in edits:
        assert old in text and (count is None or text.count(old) == count), old
        text = text.replace(old, new)
    return ("{\n\tadmin off\n\tauto_https off\n\tstorage file_system " +
            "{\n\t\troot {$CADDY_STATE}\n\t}\n}\n\n" + text)


@pytest.fixture
def caddy_site_running(tmp_path: Path) -> Iterator[Site]:
    program = find_program("caddy")
    port = free_port()
    with upstream_and_portal(tmp_path, port) as (up, pp, log):
        conf = tmp_path / "Caddyfile"
        conf.write_text(caddyfile(port, pp, up), encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
               "CADDY_STATE": str(tmp_path / "caddy"), "XDG_DATA_HOME": str(tmp_path),
               "XDG_CONFIG_HOME": str(tmp_path)}
        out = tmp_path / "caddy.log"
        with open(out, "wb") as sink:
            proc = subprocess.Popen([program, "run", "--config", str(conf), "--adapter",
                                     "caddyfile"], env=env, stdout=sink,
                                    stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port(port, proc=proc)
            except RuntimeError:
                raise RuntimeError(out.read_text(errors="replace")[-3000:]) from None
            yield Site(port, log)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def echoed(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return dict(response.json()["headers"])


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def raw_get(port: int, target: str, host: str, cookie: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                     "Accept: application/json\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.decode("latin-1").partition("\r\n\r\n")
    return int(head.split(" ", 2)[1]), body


def sign_in_through_the_proxy(site: Site, user: str, password: str) -> httpx.Client:
    browser_ = client()
    first = browser_.get(site.url(APP, "/page?x=1"))
    assert first.status_code == 302, first.text
    login = site.url(AUTH, "/.auth/login?rd=") + quote(site.url(APP, "/page?x=1"), safe="")
    assert first.headers["location"] == login
    form = browser_.get(first.headers["location"])
    assert form.status_code == 200, form.text
    state = form.text.split('name="state" value="', 1)[1].split('"', 1)[0]
    done = browser_.post(site.url(AUTH, "/.auth/login"),
                         data={"state": state, "username": user, "password": password})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == site.url(APP, "/page?x=1")   # the sibling host
    return browser_


def cookie_header(browser_: httpx.Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in browser_.cookies.jar)


def check_the_site(site: Site) -> None:
    with client() as anonymous:
        api = anonymous.get(site.url(APP, "/page"), headers={"accept": "application/json"})
        assert api.status_code == 401
        assert "www-authenticate" in api.headers, dict(api.headers)   # the API's challenge
        spoofed = anonymous.get(site.url(APP, "/public/x"), headers={
            "remote-user": "alice", "remote-groups": "admins",
            "x-secure-mw-jwt-assertion": "forged"})
        seen = echoed(spoofed)
        # Absent (nginx) or empty (Caddy 2.6 copies an empty value): never the client's.
        for name in ("remote-user", "remote-groups", "x-secure-mw-jwt-assertion"):
            assert not seen.get(name), json.dumps(seen)
        # Only the proxy asks for decisions.
        assert anonymous.get(site.url(AUTH, "/api/authz/forward-auth")).status_code in (
            403, 404)
    alice = sign_in_through_the_proxy(site, "alice", "quartz falcon 11")
    try:
        seen = echoed(alice.get(site.url(APP, "/admin/panel")))
        assert seen["remote-user"] == "alice" and seen["remote-groups"] == "admins"
        assert seen["remote-email"] == "alice@example.com"
        assert seen["remote-name"] == "Zo%C3%AB Example"
        token = claims(seen["x-secure-mw-jwt-assertion"])
        assert token["sub"] == "alice" and token["aud"] == APP
    finally:
        alice.close()
    # oauth2-proxy GHSA-7x63-xv5r-3p2x: a client's own description of the request it makes
    # never replaces the proxy's.
    spoof = {"x-original-url": site.url(APP, "/public/x"), "x-original-method": "GET",
             "x-forwarded-uri": "/public/x", "x-forwarded-method": "GET",
             "x-forwarded-host": f"{APP}:{site.port}"}
    with client() as anonymous:
        assert anonymous.get(site.url(APP, "/page"), headers={
            **spoof, "accept": "application/json"}).status_code == 401
    bob = sign_in_through_the_proxy(site, "bob", "velvet harbor 22")
    try:
        assert bob.get(site.url(APP, "/admin/panel")).status_code == 403
        assert bob.get(site.url(APP, "/admin/panel"), headers=spoof).status_code == 403
        seen = echoed(bob.get(site.url(APP, "/page"), headers={
            "remote-user": "alice", "remote-groups": "admins"}))
        assert seen["remote-user"] == "bob" and seen["remote-groups"] == "staff"
        cookie = cookie_header(bob)
    finally:
        bob.close()
    host = f"{APP}:{site.port}"
    for trick in ("/public/../admin/panel", "/public/%2e%2e/admin", "/public/..;/admin",
                  "//admin", "/public%2f..%2fadmin", "/./admin"):
        status, body = raw_get(site.port, trick, host, cookie)
        assert status in (400, 403, 404), (trick, status, body[:200])
    assert raw_get(site.port, "/page", host, cookie)[0] == 200


@pytest.mark.external("nginx")
def test_nginx_auth_request_in_front_of_a_plain_service(nginx_site_running: Site) -> None:
    check_the_site(nginx_site_running)
    log = nginx_site_running.portal_log.read_text(errors="replace")
    assert "quartz falcon" not in log and "velvet harbor" not in log


@pytest.mark.external("caddy")
def test_caddy_forward_auth_in_front_of_a_plain_service(caddy_site_running: Site) -> None:
    check_the_site(caddy_site_running)


def test_serve_help_and_its_configuration_errors(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "secure_mw.cli", "serve"]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, check=False,
                           cwd=ROOT)
    assert shown.returncode == 0 and "/api/authz/auth-request" in shown.stdout
    config = tmp_path / "bad.toml"
    config.write_text('[session]\nstore = "nowhere"\n', encoding="utf-8")
    failed = subprocess.run([*run, "--config", str(config)], capture_output=True, text=True,
                            check=False, cwd=ROOT, env=clean_env(), timeout=60)
    assert failed.returncode == 1
    for key in ("session.store", "server.trusted_proxies", "server.external_url"):
        assert key in failed.stderr, failed.stderr
