"""Methods against a subject gate restricted to GET and POST: HEAD is served by the GET
handler in Starlette, Flask and Django, but the rule does not select it."""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, cookie, raw, serve, settings_of

AC = {"default_policy": "deny", "rules": [
    {"resources": ["^/admin(/|$)"], "methods": ["GET", "POST"], "subject": [["group:admins"]],
     "policy": "authenticated"},
    {"policy": "authenticated"}]}
METHODS = ["GET", "get", "Get", "POST", "HEAD", "head", "OPTIONS", "PUT", "PROPFIND", "FOO", "G\u0130T", "GET\t"]

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, AC)
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for m in METHODS:
                try:
                    status, h, body = raw(addr, "/admin/users", method=m, cookie_=bob,
                                          headers=[("Content-Length", "0")])
                except Exception as exc:
                    print(f"{server:18} {m!r:10} error {exc!r}")
                    continue
                seen = app_saw(body)
                print(f"{server:18} {m!r:10} {status} app-method={seen and seen['method']!r} "
                      f"content-length={h.get('content-length')}")

if __name__ == "__main__":
    main()
