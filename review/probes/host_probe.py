"""Host header tricks against real servers behind HostGuardMiddleware (review probe).

python -m review.probes.host_probe [--proxies 127.0.0.0/8] [--fwd forwarded]
Prints, per server and crafted request, the status and what the app saw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVERS = {
    "uvicorn-h11": lambda p: [str(BIN / "uvicorn"), "--factory",
                              "review.probes.host_apps:asgi_app", "--http", "h11",
                              "--port", str(p), "--no-proxy-headers", "--log-level", "error"],
    "uvicorn-httptools": lambda p: [str(BIN / "uvicorn"), "--factory",
                                    "review.probes.host_apps:asgi_app", "--http", "httptools",
                                    "--port", str(p), "--no-proxy-headers",
                                    "--log-level", "error"],
    "hypercorn": lambda p: [str(BIN / "hypercorn"), "review.probes.host_asgi:app",
                            "--bind", f"127.0.0.1:{p}"],
    "werkzeug": lambda p: [PY, "-c", "from werkzeug.serving import run_simple;"
                           "from review.probes.host_apps import wsgi_app;"
                           f"run_simple('127.0.0.1', {p}, wsgi_app(), threaded=True)"],
    "gunicorn": lambda p: [str(BIN / "gunicorn"), "-b", f"127.0.0.1:{p}", "-w", "1",
                           "review.probes.host_apps:wsgi_app()"],
}


@contextlib.contextmanager
def server(name: str, env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(SERVERS[name](port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def raw(port: int, data: bytes) -> tuple[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(OSError):
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    text = b"".join(chunks).decode("latin-1")
    status = text.split("\r\n", 1)[0][9:12] if text else "---"
    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
    if "{" in body and "}" in body:
        body = body[body.index("{"):body.rindex("}") + 1]
    return status, body


def req(target: str = "/x", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


H = "Host: app.example.com"
CASES: list[tuple[str, bytes]] = [
    ("plain", req("/x", H)),
    ("upper", req("/x", "Host: APP.Example.COM")),
    ("trailing dot", req("/x", "Host: app.example.com.")),
    ("port", req("/x", "Host: app.example.com:8080")),
    ("port:port", req("/x", "Host: app.example.com:80:80")),
    ("empty port", req("/x", "Host: app.example.com:")),
    ("evil", req("/x", "Host: evil.com")),
    ("empty host", req("/x", "Host: ")),
    ("no host 1.1", req("/x")),
    ("no host 1.0", req("/x", version="1.0")),
    ("abs evil, host ok", req("http://evil.com/x", H)),
    ("abs ok, host evil", req("http://app.example.com/x", "Host: evil.com")),
    ("abs evil, no host 1.0", req("http://evil.com/x", version="1.0")),
    ("abs https evil", req("https://evil.com/x", H)),
    ("two hosts ok,evil", req("/x", H, "Host: evil.com")),
    ("two hosts evil,ok", req("/x", "Host: evil.com", H)),
    ("comma", req("/x", "Host: app.example.com, evil.com")),
    ("userinfo", req("/x", "Host: app.example.com@evil.com")),
    ("evil@ok", req("/x", "Host: evil.com@app.example.com")),
    ("wildcard sub", req("/x", "Host: a.b.good.example")),
    ("wildcard base", req("/x", "Host: good.example")),
    ("ipv6 loop", req("/x", "Host: [::1]")),
    ("punycode", req("/x", "Host: xn--app-example-com")),
    ("tab after", req("/x", "Host: app.example.com\t")),
    ("space inside", req("/x", "Host: app.example.com evil.com")),
    ("semicolon", req("/x", "Host: app.example.com;evil.com")),
    ("slash", req("/x", "Host: app.example.com/evil")),
    ("backslash", req("/x", "Host: app.example.com\\evil.com")),
    ("hash", req("/x", "Host: evil.com#app.example.com")),
    ("question", req("/x", "Host: evil.com?.app.example.com")),
    ("xfh evil (peer)", req("/x", H, "X-Forwarded-Host: evil.com",
                            "X-Forwarded-For: 203.0.113.9")),
    ("xfh ok (peer), host evil", req("/x", "Host: evil.com", "X-Forwarded-Host: app.example.com",
                                     "X-Forwarded-For: 203.0.113.9")),
    ("xfh two values", req("/x", H, "X-Forwarded-Host: evil.com, app.example.com",
                           "X-Forwarded-For: 203.0.113.9")),
    ("xfh two headers", req("/x", H, "X-Forwarded-Host: app.example.com",
                            "X-Forwarded-Host: evil.com", "X-Forwarded-For: 203.0.113.9")),
    ("xfh junk", req("/x", "Host: evil.com", "X-Forwarded-Host: app.example.com:99999",
                     "X-Forwarded-For: 203.0.113.9")),
    ("fwd host evil", req("/x", H, 'Forwarded: for=203.0.113.9;host=evil.com')),
    ("fwd host ok, host evil", req("/x", "Host: evil.com",
                                   'Forwarded: for=203.0.113.9;host="app.example.com"')),
    ("obs-fold host", b"GET /x HTTP/1.1\r\nHost: evil.com\r\n app.example.com\r\n"
                      b"Connection: close\r\n\r\n"),
    ("host with NUL", b"GET /x HTTP/1.1\r\nHost: app.example.com\x00evil\r\n"
                      b"Connection: close\r\n\r\n"),
    ("non-utf8 path", req("/%c0%ae", H)),
    ("raw non-utf8 path", b"GET /\xc0\xae HTTP/1.1\r\nHost: app.example.com\r\n"
                          b"Connection: close\r\n\r\n"),
    ("abs non-utf8 path", req("http://app.example.com/%c0%ae", H)),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxies", default="")
    parser.add_argument("--fwd", default="x-forwarded-for")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    env = {**os.environ, "PROBE_PROXIES": args.proxies, "PROBE_FWD": args.fwd,
           "PYTHONPATH": str(ROOT)}
    for name in args.servers.split(","):
        print(f"== {name} (trusted proxies: {args.proxies or 'none'}, {args.fwd})")
        with server(name, env) as port:
            for label, data in CASES:
                if args.only and args.only not in label:
                    continue
                status, body = raw(port, data)
                try:
                    seen = json.loads(body)
                    short = {k: v for k, v in seen.items() if v not in (None, "", [])}
                except ValueError:
                    short = body[:90].replace("\n", " ")
                print(f"  {label:26} {status}  {short if status == '200' else str(short)[:60]}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
