"""docs/quickstart/django.md, verbatim: a project made by ``django-admin startproject``,
the page's blocks written where their markers say, its commands run as printed, then served
by gunicorn: the admin signs in and gets the report, a non-admin is refused."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apps import browser
from tests.servers import ServerProcess, free_port

pytest.importorskip("django")
pytestmark = pytest.mark.slow

PAGE = Path(__file__).resolve().parent.parent / "docs" / "quickstart" / "django.md"
BLOCK = re.compile(r"<!-- quickstart: (\w+) ?(\S*) -->\n```\w+\n(.*?)```", re.S)


def test_the_quickstart_as_written(tmp_path: Path) -> None:
    text = PAGE.read_text(encoding="utf-8")
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    setup = re.search(r"\$ (django-admin startproject mysite) && cd mysite", text)
    assert setup, "the page starts a project with django-admin"
    subprocess.run(shlex.split(setup.group(1)), cwd=tmp_path, env=env, check=True)
    project = tmp_path / "mysite"
    commands: list[str] = []
    for action, where, body in BLOCK.findall(text):
        if action == "append":
            with open(project / where, "a", encoding="utf-8") as f:
                f.write("\n" + body)
        elif action == "write":
            (project / where).write_text(body, encoding="utf-8")
        else:
            assert action == "run"
            commands = [line[2:] for line in body.splitlines() if line.startswith("$ ")]
    assert len(commands) == 4 and commands[-1] == "gunicorn mysite.wsgi"
    password = ""
    for command in commands[:-1]:
        done = subprocess.run(shlex.split(command), cwd=project, env=env,
                              capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        if "--generate" in command:
            password = done.stdout.strip().splitlines()[-1]
        if command.endswith("check"):
            assert "secure_mw.E" not in done.stderr + done.stdout
    bob = subprocess.run(["secure-mw", "users", "add", "bob", "--file", "users.toml",
                          "--generate"], cwd=project, env=env, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{port} --chdir {project}"
    with ServerProcess(shlex.split(commands[-1]), port=port, env=env,
                       log=tmp_path / "gunicorn.log") as server:
        base = server.url
        for user, secret, status in (("alice", password, 200), ("bob", bob, 403)):
            with browser() as client:
                first = client.get(base + "/report/")
                assert first.status_code == 302, server.log()
                assert first.headers["location"] == "/.auth/login?rd=/report/"
                form = client.get(base + "/.auth/login")
                state = re.search(r'name="state" value="([^"]+)"', form.text)
                assert state
                done = client.post(base + "/.auth/login", data={
                    "state": state.group(1), "username": user, "password": secret})
                assert done.status_code == 303, done.text
                report = client.get(base + "/report/")
                assert report.status_code == status, server.log()
                if status == 200:
                    assert report.text == "Hello, Alice"
