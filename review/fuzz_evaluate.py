"""Hostile requests and identities through AuthorizationLayer.decide/explain: no exception."""
from __future__ import annotations
import random, sys, traceback
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import logging
logging.getLogger("secure_mw").setLevel(logging.CRITICAL)
from review.differential_explain import BLOCKS, random_rule
from secure_mw.authz.layer import AuthorizationLayer
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.settings import Settings

HOSTS = ["", "[", "]", "[::1", "[::1]:80", ":", "::::", "a:b:c", "é.example", "\udcff", "a" * 10000, ".",
         "..", "*.example.com", "app.example.com:99999999999", "\x00", "x@y", "APP.EXAMPLE.COM."]
PATHS = ["/", "", "x", "/" * 9000, "/a" * 5000, "/\ud800", "/\x00", "/%", "/%zz", "/\u2028", "/..", "/../..",
         "/./.", "/a/../../b", "/é", "/\ufffd", "/a?b", "/a#b"]
QUERIES = ["", "&" * 70, ";" * 70, "=" * 9000, "a=" + "%" * 5, "%ff=%fe", "a=1&" * 63 + "a", "\x00=\x00",
           "a=%uD800", "x" * 9000, "a=1;b=2"]
CLIENTS = ["", "x", "::ffff:1.2.3.4", "fe80::1%eth0", "1.2.3.4:80", "[::1]", "300.1.1.1", "\x00"]

def main():
    rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    crashes = {}
    total = 0
    for _ in range(n):
        rules = [random_rule(rng) for _ in range(rng.randint(1, 5))]
        for r in rules:
            if rng.random() < 0.3 and r.get("policy") != "bypass":
                r["allow"] = rng.choice(BLOCKS + [{"and": [{"time_of_day": {"after": "22:00", "before": "06:00", "timezone": "Europe/Paris"}}]},
                                                  {"or": [{"day_of_week": "fri-mon"}, {"cors_preflight": True}]},
                                                  {"and": [{"client_certificate": {"spki_hash": "abc"}}]},
                                                  {"and": [{"claim/a/b/c": [1, "x", True]}]}])
        try:
            st = Settings.from_mapping({"access_control": {"rules": rules}}, environ={})
            layer = AuthorizationLayer(st)
        except Exception:
            continue
        for _ in range(per):
            ident = rng.choice([None, Identity(sub="u", email=rng.choice(["", "a@b", "@", "a@", "x@EXAMPLE.com", "\u212aate@example.com"]),
                                                email_verified=rng.random() < 0.5, groups=rng.choice([(), ("admins",), ("",)]),
                                                claims=rng.choice([{}, {"a": {"b": {"c": 1}}}, {"a": [1, 2]}, {"a": None}, {"email_verified": "true"}]))])
            view = RequestView(method=rng.choice(["GET", "", "X" * 100, "OPTIONS", "\x00"]), scheme="https",
                               host=rng.choice(HOSTS), path=rng.choice(PATHS), query_string=rng.choice(QUERIES),
                               headers=rng.choice([{}, {"origin": "x", "access-control-request-method": "GET"}]),
                               client=rng.choice(CLIENTS), websocket=rng.random() < 0.1,
                               client_cert=rng.choice([None, b"", b"\x30\x03\x02\x01\x00", b"garbage"]))
            raw = rng.choice([None, view.path.encode("utf-8", "surrogatepass"), b"/%2e%2E/", b"/%C0%AF"])
            total += 1
            try:
                layer.decide(view, ident, raw, root=rng.choice(["", "/app", "/"]))
                layer.explain(view, ident, raw)
            except Exception as exc:  # noqa: BLE001
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                if key not in crashes:
                    crashes[key] = f"{view!r} {ident!r} {rules}\n" + "".join(traceback.format_exception(exc)[-4:])
    print(f"decisions {total}, exception kinds {len(crashes)}")
    for k, v in crashes.items():
        print("==", k); print(v)

if __name__ == "__main__":
    main()
