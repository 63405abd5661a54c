"""WebSocket handshakes to a gated path (uvicorn, both HTTP parsers)."""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import ASGI_SERVERS, base_config, cookie, raw, serve, settings_of
from review.probe_paths import example

def ws(addr, target, c, host="app.example.com"):
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
               ("Origin", "http://app.example.com")]
    import socket
    hostname, port = addr.split(":")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    if c:
        lines.append(f"Cookie: {c}")
    with socket.create_connection((hostname, int(port)), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = s.recv(65536)
        try:
            data += s.recv(65536)
        except Exception:
            pass
    first = data.split(b"\r\n", 1)[0].decode()
    return int(first.split(" ")[1]) if first else 0, data

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, example("layout")["access_control"])
    st = settings_of(cfg)
    who = {"anon": "", "bob": cookie(st, "bob", groups=("staff",)),
           "alice1": cookie(st, "alice", groups=("admins",)),
           "alice2": cookie(st, "alice", groups=("admins",), two_factor=True)}
    total = opened = 0
    for server in sys.argv[1:] or ASGI_SERVERS:
        with serve(server, cfg, st) as addr:
            for t in ["/admin/ws", "//admin/ws", "/x/../admin/ws", "/admin/ws?x=1", "/admin/./ws", "/ws"]:
                row = []
                for name, c in who.items():
                    status, data = ws(addr, t, c)
                    total += 1
                    if status == 101 and name != "alice2" and "admin" in t:
                        opened += 1
                        row.append(f"{name}={status}!!")
                    else:
                        row.append(f"{name}={status}")
                print(f"{server:18} {t!r:20} " + " ".join(row))
    print(f"handshakes {total}, opened to a non-admin or one factor on /admin: {opened}")

if __name__ == "__main__":
    main()
