"""300,000 random Host values: whenever HostPolicy allows one, Starlette, urllib and
werkzeug must parse it to a listed host (0 mismatches). Review probe.
"""
import random
from urllib.parse import urlsplit

from starlette.datastructures import URL
from werkzeug.sansio.utils import get_host

from secure_mw.guards.hosts import HostPolicy

pol = HostPolicy(["app.example.com", "*.good.example", "[::1]", "127.0.0.1", "admin.example.com:8443"])
ok_names = {"app.example.com", "127.0.0.1", "::1", "[::1]"}
def allowed_name(name, port):
    if name is None: return False
    n = name.lower()
    if n in ("app.example.com", "127.0.0.1", "::1", "[::1]"): return True
    if n.endswith(".good.example"): return True
    if n == "admin.example.com" and port == 8443: return True
    return False
atoms = ["app", "example", "com", ".", ":", "8443", "80", "[", "]", "::1", "@", "%", "-", "_", "good", "a", "evil", " ", "\t", ",", ";", "/", "\\", "#", "?", "0", "x", "A", "admin", "*", "127.0.0.1", "ffff", "%2e", "。", "ｅ"]
random.seed(1)
bad = {}
allowed = 0
N=300000
for i in range(N):
    h = "".join(random.choice(atoms) for _ in range(random.randint(0 if i % 2 else 1, 2 if i % 2 else 8)))
    if random.random() < 0.5:
        h = random.choice(["app.example.com", "x.good.example", "[::1]", "admin.example.com", "127.0.0.1"]) + h
    if not pol.allows(h):
        continue
    allowed += 1
    # what Starlette and werkzeug think the host is
    try:
        u = URL(f"http://{h}/x")
        s_name, s_port = u.hostname, u.port
    except Exception as e:
        s_name, s_port = f"ERR {e}", None
    try:
        sp = urlsplit(f"http://{h}/x"); u_name = sp.hostname; u_port = sp.port
    except Exception as e:
        u_name, u_port = f"ERR {e}", None
    w = get_host("http", h, None, None)
    wn = w.rsplit(":",1)[0] if not w.startswith("[") else w[:w.find("]")+1]
    if not allowed_name(s_name, s_port) or not allowed_name(u_name, u_port):
        bad.setdefault(h, (s_name, s_port, u_name, u_port, w))
print("allowed", allowed, "of", N, "mismatches", len(bad))
for k, v in list(bad.items())[:40]:
    print(repr(k), v)
