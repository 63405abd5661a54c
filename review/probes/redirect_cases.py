"""Redirect targets for the WHATWG differential (redirect_whatwg.mjs). Review probe.

python review/probes/redirect_cases.py && node review/probes/redirect_whatwg.mjs
"""
import json
import random

from secure_mw.guards.redirect import RedirectPolicy

pol = RedirectPolicy(["app.example.com", "*.good.example", "admin.example.com:8443"])
atoms = ["//", "/", "\\", "app.example.com", "evil.com", "@", ":", "8443", "443", "80", ".", "..", "%2f", "%5c", "%2e", "%40", "?", "#", "x.good.example", "good.example", "\t", "\n", " ", "%09", "。", "ａ", "%00", "[::1]", "[", "]", "admin.example.com", "evil", ";", ",", "&", "=", "http:", "https:", "HTTP:", "javascript:", "0x7f.1", "%252f", "\u3002", "\uff0f", "ß", "xn--", "-", "_"]
random.seed(7)
out = []
seen = set()
for i in range(60000):
    n = random.randint(1, 7)
    u = random.choice(["//", "//", "///", "/\\", "\\\\", "//app.example.com", "//x.good.example", "https://app.example.com", ""]) + "".join(random.choice(atoms) for _ in range(n))
    if u in seen: continue
    seen.add(u)
    out.append([u, pol.is_safe(u)])
json.dump(out, open("/tmp/rv/redirects.json", "w"))
print(len(out), sum(1 for _, s in out if s))
