"""Start-up cost of AccessPolicy.unreachable() on 10,000-rule layouts."""
from __future__ import annotations
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from secure_mw.authz.rules import AccessPolicy
from secure_mw.settings import Settings

def layout(name, n):
    if name == "hosts":
        return [{"domain": [f"h{i}.example.com"], "resources": [f"^/r{i}"], "policy": "authenticated"} for i in range(n)]
    if name == "same-host-same-resource-subjects":
        return [{"domain": ["app.example.com"], "resources": ["^/api"], "subject": [f"user:u{i}"], "subject_mismatch": "continue", "policy": "authenticated"} for i in range(n)]
    if name == "same-host-distinct-resources":
        return [{"domain": ["app.example.com"], "resources": [f"^/r{i}"], "policy": "authenticated"} for i in range(n)]
    if name == "wildcards-deep":
        return [{"domain": [f"*.{'.'.join(['a'] * (i % 50))}.example.com"], "resources": [f"^/r{i}"], "policy": "authenticated"} for i in range(n)]
    if name == "no-host-many-methods":
        return [{"resources": ["^/x"], "methods": ["GET"], "networks": [f"10.{i // 256 % 256}.{i % 256}.0/24"], "policy": "deny"} for i in range(n)]
    if name == "long-host-names":
        return [{"domain": ["a." * 100 + f"h{i}.example.com"], "policy": "authenticated", "resources": ["^/"]} for i in range(n)]

for name in ["hosts", "same-host-same-resource-subjects", "same-host-distinct-resources", "wildcards-deep", "no-host-many-methods", "long-host-names"]:
    rules = layout(name, 10_000)
    t0 = time.perf_counter()
    st = Settings.from_mapping({"access_control": {"rules": rules}}, environ={})
    t1 = time.perf_counter()
    p = AccessPolicy.from_settings(st.access_control)
    t2 = time.perf_counter()
    found = p.unreachable()
    t3 = time.perf_counter()
    print(f"{name:36} settings {t1-t0:6.2f}s compile {t2-t1:6.2f}s unreachable {t3-t2:6.2f}s flagged {len(found)}")
