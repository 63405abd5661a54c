"""Host header tricks against a rule with `domain`: does the app route to the gated site
while the rules saw another host?"""
from __future__ import annotations
import sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from review.harness import SERVERS, app_saw, base_config, cookie, raw, serve, settings_of

AC = {"default_policy": "deny", "rules": [
    {"domain": ["admin.example.com"], "subject": [["group:admins"]], "policy": "authenticated"},
    {"policy": "authenticated"}]}
HOSTS = [["admin.example.com"], ["ADMIN.example.com"], ["admin.example.com."],
         ["admin.example.com:80"], ["admin.example.com:"], ["admin.example.com:80:80"],
         ["admin.example.com:x:y"], ["admin.example.com::"], ["admin.example.com:1:2:3"],
         ["admin.example.com, www.example.com"], ["www.example.com", "admin.example.com"],
         ["admin.example.com", "www.example.com"], ["admin.example.com\t"],
         [" admin.example.com"], ["admin.example.com@www.example.com"],
         ["www.example.com@admin.example.com"], ["admin.example.com/x"],
         ["admin.example.com#"], ["admin.example.com?"], ["[admin.example.com]"],
         ["admin.example.com%3a80"], ["admin.example.com..:80"], ["admin.example.com:80."],
         ["xn--admin.example.com"], ["admin.example.com\\"], []]

def main():
    tmp = Path(tempfile.mkdtemp())
    cfg = base_config(tmp, AC)
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    bad = total = 0
    for server in sys.argv[1:] or SERVERS:
        with serve(server, cfg, st) as addr:
            for hosts in HOSTS:
                total += 1
                status, h, body = raw(addr, "/settings", cookie_=bob, hosts=hosts)
                seen = app_saw(body)
                flag = "  <-- BYPASS: app routed the admin site" if seen and seen["app"] == "admin-site" else ""
                bad += bool(flag)
                print(f"{server:18} {hosts!r:45} {status} {seen and seen['app']}{flag}")
    print(f"requests {total}, bypasses {bad}")

main()
