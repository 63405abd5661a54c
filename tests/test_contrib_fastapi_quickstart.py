"""docs/quickstart/fastapi.md, verbatim: its files written as the page shows them, its
commands run as the page says (``uvicorn app:app`` with a port added), then a sign-in."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from tests.apps import browser
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "quickstart" / "fastapi.md"
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def test_the_page_is_one_screen() -> None:
    code = blocks("python")
    assert len(code) == 1
    lines = [line for line in code[0].splitlines() if line.strip()]
    assert len(lines) <= 25, len(lines)


def test_the_quickstart_runs_verbatim(tmp_path: Path) -> None:
    for language in ("python", "toml"):
        (body,) = blocks(language)
        name = body.splitlines()[0].removeprefix("# ").strip()
        (tmp_path / name).write_text(body, encoding="utf-8")
    (shell,) = blocks("sh")
    commands = [shlex.split(line) for line in shell.splitlines() if line.strip()]
    assert commands[0][:2] == ["pip", "install"]      # installed here already
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    added = subprocess.run(commands[1], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60, check=True)
    password = added.stdout.strip().splitlines()[-1]
    port = free_port()
    assert commands[2] == ["uvicorn", "app:app"]
    server = subprocess.Popen([*commands[2], "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=30, proc=server)  # type: ignore[arg-type]
        with browser() as client:
            first = client.get(base + "/admin")
            assert first.status_code == 302
            form = client.get(base + first.headers["location"])
            state = re.search(r'name="state" value="([^"]+)"', form.text)
            assert state, form.text
            done = client.post(base + "/.auth/login", data={
                "state": state.group(1), "username": "alice", "password": password})
            assert done.status_code == 303 and done.headers["location"] == "/admin"
            assert client.get(base + "/admin").json() == {"secret": "only admins read this"}
            assert client.get(base + "/").json() == {"hello": "alice"}
            assert client.get(base + "/payments").headers["location"] == \
                "/.auth/2fa?rd=/payments"
            assert client.get(base + "/payments", headers={"Accept": "*/*"}).status_code \
                == 401
            docs = client.get(base + "/docs")
            assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
