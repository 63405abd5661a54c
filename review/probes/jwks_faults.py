"""JWKS outages that held: redirect loop, 20 MB body, gzip bomb, deep nesting, redirect
to http metadata. Review probe.

PYTHONPATH=. python review/probes/jwks_faults.py
"""
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from secure_mw.errors import StoreUnavailable
from secure_mw.tokens import RemoteKeySet
from tests.clock import Clock

hits = {}
BOMB = gzip.compress(b'{"keys": [' + b" " * (50 * 1024 * 1024) + b"]}")
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        hits[self.path] = hits.get(self.path, 0) + 1
        if self.path.startswith("/loop"):
            self.send_response(302); self.send_header("Location", self.path + "x"); self.end_headers(); return
        if self.path == "/huge":
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
            try:
                self.wfile.write(b'{"keys": [' + b" " * (20 * 1024 * 1024) + b"]}")
            except Exception: pass
            return
        if self.path == "/bomb":
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Encoding", "gzip"); self.send_header("Content-Length", str(len(BOMB))); self.end_headers(); self.wfile.write(BOMB); return
        if self.path == "/deep":
            body = b"[" * 100000 + b"]" * 100000
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body); return
        if self.path == "/https-redirect":
            self.send_response(302); self.send_header("Location", "http://169.254.169.254/latest"); self.end_headers(); return
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
for path in ["/loop", "/huge", "/bomb", "/deep", "/https-redirect"]:
    ks = RemoteKeySet(f"http://127.0.0.1:{srv.server_port}{path}", clock=Clock(0))
    t = time.monotonic()
    try:
        ks.get_key("x"); r = "no error"
    except StoreUnavailable as e:
        r = f"StoreUnavailable: {e}"
    except Exception as e:
        r = f"OTHER {type(e).__name__}: {e}"
    print(path, round(time.monotonic() - t, 2), r, "requests:", sum(v for k, v in hits.items() if k.startswith(path)))
