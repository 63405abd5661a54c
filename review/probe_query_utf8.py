"""A query condition on a non-ASCII value: raw UTF-8 bytes in the query string are read as
latin-1 by the rules, as UTF-8 by the WSGI frameworks (werkzeug, Django)."""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, cookie, raw, serve, settings_of

AC = {"default_policy": "deny", "rules": [
    {"query": [{"key": "lang", "value": "é"}], "policy": "deny"},
    {"query": [{"key": "q", "operator": "pattern", "value": "ü"}], "policy": "deny"},
    {"policy": "authenticated"}]}

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, AC)
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for target in ["/p?lang=%C3%A9", "/p?lang=é", "/p?q=%C3%BC", "/p?q=Grüße", "/p?l%61ng=%C3%A9"]:
                status, _, body = raw(addr, target, cookie_=bob)
                seen = app_saw(body)
                flag = "  <-- the app read the refused value" if status == 200 and seen and any(
                    (k, v) in (("lang", "é"),) or (k == "q" and "ü" in v) for k, v in seen["query"]) else ""
                print(f"{server:18} {target!r:22} {status} app-query={seen and seen['query']}{flag}")

if __name__ == "__main__":
    main()
