"""docs/authorization.md's first example (verbatim): /admin is gated on app.example.com only;
the same server answers /admin for any other Host through the catch-all rule."""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, cookie, raw, serve, settings_of
from review.probe_paths import example

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, example("layout")["access_control"])
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    alice1 = cookie(st, "alice", groups=("admins",))
    bad = total = 0
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for who, c in (("bob", bob), ("alice-1fa", alice1)):
                for hosts in (["app.example.com"], ["evil.example"], ["127.0.0.1"], ["app.example.com:80:80"],
                              ["app.example.com", "evil.example"], ["evil.example", "app.example.com"]):
                    status, _, body = raw(addr, "/admin/users", cookie_=c, hosts=hosts)
                    seen = app_saw(body)
                    total += 1
                    hit = status == 200 and seen is not None and seen["path"] == "/admin/users"
                    bad += hit
                    print(f"{server:18} {who:9} Host={hosts!r:42} {status}{'  <-- /admin served' if hit else ''}")
    print(f"requests {total}, /admin served to a non-admin or one factor: {bad}")

if __name__ == "__main__":
    main()
