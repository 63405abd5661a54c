"""docs/quickstart/flask.md works verbatim: its app and its commands (but ``pip install``)
are run as written in an empty directory, under ``flask run``; the signed-in admin sees the
admin page, another user gets 403, logout ends the session. The testing snippet runs too."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from secure_mw.crypto import KeyRing
from tests.apps import browser
from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parent.parent / "docs" / "quickstart" / "flask.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)


def run_commands(directory: Path, port: int) -> tuple[list[str], str]:
    """The shell block's commands: all but the last run here (``pip install`` skipped);
    returns the server's command line (on ``port``) and what the commands printed."""
    lines = [line for line in blocks("sh")[0].splitlines() if line.strip()]
    assert lines[0].startswith("pip install") and lines[-1] == "flask --app app run"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    printed = ""
    for line in lines[1:-1]:
        done = subprocess.run(shlex.split(line), cwd=directory, env=env, capture_output=True,
                              text=True, check=True, timeout=120)
        printed += done.stdout
    return [*shlex.split(lines[-1]), "--port", str(port)], printed


def sign_in(client: httpx.Client, base: str, name: str, password: str) -> None:
    first = client.get(base + "/admin")
    assert first.headers["location"] == "/.auth/login?rd=/admin"
    form = client.get(base + first.headers["location"])
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state
    done = client.post(base + "/.auth/login", data={
        "state": state.group(1), "username": name, "password": password})
    assert done.status_code == 303, done.text


def test_the_quickstart_runs_verbatim(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(blocks("python")[0])
    port = free_port()
    command, printed = run_commands(tmp_path, port)
    password = printed.strip().splitlines()[-1]
    from secure_mw.login import UsersFile

    UsersFile(tmp_path / "users.toml").add("bob", password="plum orchard staple")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command[0] = str(Path(sys.executable).with_name("flask"))
    # ServerProcess starts in the repository root: the app must come from tmp_path.
    with ServerProcess(["sh", "-c", f"cd {shlex.quote(str(tmp_path))} && exec "
                        + shlex.join(command)], port=port, env=env,
                       log=tmp_path / "flask.log") as server:
        base = server.url
        with browser() as client:
            assert client.get(base + "/").headers["location"] == "/.auth/login?rd=/"
            sign_in(client, base, "alice", password)
            admin = client.get(base + "/admin")
            assert admin.status_code == 200 and admin.text == "Only admins see this."
            assert client.get(base + "/").text == "Hello, alice!"
            csrf = client.get(base + "/.auth/me").json()["csrf_token"]
            assert client.post(base + "/.auth/logout", data={"csrf": csrf}).status_code == 303
            assert client.get(base + "/admin").status_code == 302
        with browser() as client:
            sign_in(client, base, "bob", "plum orchard staple")
            assert client.get(base + "/admin").status_code == 403


def test_the_testing_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECURE_MW_KEYS__ENCRYPTION_KEYS", f'["{KeyRing.new_key_text()}"]')
    namespace: dict[str, object] = {"__name__": "quickstart_app"}
    exec(compile(blocks("python")[0], "app.py", "exec"), namespace)
    exec(compile(blocks("python")[2], "test_app.py", "exec"), namespace)


def test_the_rules_and_provider_snippets_configure_the_app(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from secure_mw.contrib.flask import settings_from

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("SECURE_MW_")]:
        monkeypatch.delenv(name)
    (tmp_path / "secure-mw.toml").write_text(blocks("toml")[0])
    app_code = blocks("python")[0].replace(
        '{"local_users": {"file": "users.toml"}}', '"secure-mw.toml"')
    assert app_code != blocks("python")[0]
    namespace: dict[str, object] = {"__name__": "quickstart_rules"}
    exec(compile(app_code, "app.py", "exec"), namespace)
    client = namespace["app"].test_client()                      # type: ignore[attr-defined]
    assert client.get("/").status_code == 200                    # public now
    assert client.get("/admin", headers={"Accept": "text/html"}).status_code == 302
    secret = tmp_path / "oidc-client-secret"
    secret.write_text("a-client-secret-of-the-provider\n")
    secret.chmod(0o600)
    exec(compile(blocks("python")[1], "app.py", "exec"), namespace)
    settings = settings_from(namespace["app"].config["SECURE_MW"],    # type: ignore[attr-defined]
                             base_dir=tmp_path)
    assert settings.oidc is not None and settings.oidc.client_id == "my-app"
    assert settings.oidc.client_secret == "a-client-secret-of-the-provider"
