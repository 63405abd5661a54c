"""Hostile requests through the whole protect() stack with rules: never a 500."""
from __future__ import annotations
import random, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, base_config, cookie, raw, serve, settings_of
from review.differential_explain import BLOCKS

AC = {"default_policy": "deny", "networks": [{"name": "office", "networks": ["10.0.0.0/8"]}], "rules": [
    {"resources": ["^/healthz$"], "policy": "bypass"},
    {"domain": ["app.example.com", "*.app.example.com"], "resources": ["^/admin(/|$)"], "subject": [["group:admins"]], "policy": "two_factor"},
    {"query": [{"key": "debug", "value": "1"}], "policy": "deny"},
    {"networks": ["office"], "allow": {"and": [{"time_of_day": {"after": "08:00", "before": "18:00", "timezone": "Europe/Paris"}}]}, "resources": ["^/office"]},
    {"resources": ["^/b"], "allow": BLOCKS[0], "deny": BLOCKS[5]},
    {"policy": "authenticated"}]}
TARGETS = ["/", "/admin", "/%ff", "/%", "/a%zz", "/" + "a" * 9000, "/?" + "a=1&" * 200, "/?" + "x" * 10000,
           "/b?%ff=%fe", "/office", "/admin/%C0%AF", "/.auth/me", "/.auth/login?rd=//evil", "/.auth/%2e%2e/admin",
           "/.auth/login?rd=%0d%0a", "/healthz?debug=1"]
HOSTS = ["app.example.com", "", "[", "[::1", "a" * 300, "app.example.com:99999999", "é", "app.example.com:0",
         "-", "app..example.com", "[::ffff:1.2.3.4]:80"]
HEADERS = [[], [("Cookie", "x" * 50000)], [("Cookie", "__Host-secure_mw_session=" + "A" * 4000)],
           [("Accept", "text/html")], [("X-Forwarded-For", "1.2.3.4")], [("Origin", "null"), ("Access-Control-Request-Method", "GET")],
           [("Cookie", "a=b; a=c; ;;; =x")], [("X-Secure-MW-Jwt-Assertion", "a.b.c")]]

def main():
    rng = random.Random(0)
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, AC)
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    fives = total = 0
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for _ in range(150):
                t, h, hd = rng.choice(TARGETS), rng.choice(HOSTS), rng.choice(HEADERS)
                m = rng.choice(["GET", "POST", "HEAD", "OPTIONS"])
                c = bob if rng.random() < 0.5 else ""
                hd = hd + ([("Content-Length", "0")] if m == "POST" else [])
                if c and any(k == "Cookie" for k, _ in hd):
                    c = ""
                try:
                    status, _, body = raw(addr, t, method=m, host=h, cookie_=c, headers=hd)
                except Exception as exc:
                    print(server, "client error", exc)
                    continue
                total += 1
                if status >= 500 or status == 0:
                    fives += 1
                    print(f"{server} {m} {t[:60]!r} Host={h[:40]!r} {[(k, v[:20]) for k, v in hd]} -> {status} {body[:100]!r}")
    print(f"requests {total}, 5xx or no answer {fives}")

if __name__ == "__main__":
    main()
