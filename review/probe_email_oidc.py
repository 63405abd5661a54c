"""Email criteria through the real OpenID provider: email_verified as "false", "TRUE", 1,
null, absent; uppercase, plus-addressed and Unicode emails. Both flavours, both values of
oidc.assume_email_verified."""
from __future__ import annotations
import logging, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
logging.getLogger("secure_mw").setLevel(logging.CRITICAL)
from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.session import MemorySessionStore
from tests.apps import browser, serve
from tests.idp import IdPServer, dev_login
from tests.servers import free_port

RULES = [
    {"resources": ["^/boss(/|$)"], "subject": ["email:boss@example.com"], "policy": "authenticated"},
    {"resources": ["^/kate(/|$)"], "subject": ["email:kate@example.com"], "policy": "authenticated"},
    {"resources": ["^/corp(/|$)"], "allow": {"or": [{"domain": "example.com"}]}},
    {"resources": ["^/claim(/|$)"], "allow": {"or": [{"claim/email_verified": True}]}},
    {"policy": "authenticated"},
]
USERS = [
    ("str-false", "boss@example.com", "false"), ("str-TRUE", "boss@example.com", "TRUE"),
    ("int-one", "boss@example.com", 1), ("null", "boss@example.com", None), ("absent", "boss@example.com", "-"),
    ("upper", "BOSS@Example.COM", True), ("plus", "boss+x@example.com", True),
    ("kelvin", "\u212aate@example.com", True), ("dotted-domain", "x@example.com.", True),
    ("sub-domain", "x@sub.example.com", True), ("quoted", '"boss@example.com"@evil.test', True),
    ("str-true-space", "boss@example.com", " true "), ("bool-false", "boss@example.com", False),
]
SECRET = "review-client-secret-for-tests-only"

def main():
    ports = [free_port() for _ in range(4)]
    uris = [f"http://127.0.0.1:{p}" for p in ports]
    users = []
    for sub, email, verified in USERS:
        u = {"sub": sub, "password": f"{sub}-pw", "email": email}
        if verified != "-":
            u["email_verified"] = verified
        users.append(u)
    idp = IdPServer(clients=[{"client_id": "rv", "client_secret": SECRET,
                              "redirect_uris": [f"{u}/.auth/callback" for u in uris],
                              "grant_types": ["authorization_code"], "response_types": ["code"],
                              "token_endpoint_auth_method": "client_secret_basic"}], users=users)
    idp.start()
    try:
        k = 0
        for flavour in ("asgi", "wsgi"):
            for assume in (False, True):
                settings = Settings.from_mapping({
                    "keys": {"encryption_keys": [KeyRing.new_key_text()]},
                    "oidc": {"issuer": idp.issuer, "client_id": "rv", "client_secret": SECRET,
                             "assume_email_verified": assume},
                    "access_control": {"default_policy": "deny", "rules": RULES}}, environ={})
                module = asgi if flavour == "asgi" else wsgi
                with serve(flavour, lambda inner: module.protect(inner, settings, store=MemorySessionStore()),
                           port=ports[k]) as base:
                    k += 1
                    for sub, email, verified in USERS:
                        with browser() as c:
                            start = c.get(base + "/.auth/login?rd=/")
                            cb = dev_login(c, start.headers["location"], username=sub, password=f"{sub}-pw")
                            r = c.get(cb)
                            if r.status_code != 302:
                                print(f"{flavour} assume={assume} {sub}: login failed {r.status_code} {r.text[:100]}")
                                continue
                            me = c.get(base + "/.auth/me").json()
                            res = {p: c.get(base + p).status_code for p in ("/boss", "/kate", "/corp", "/claim")}
                            print(f"{flavour} assume={assume!s:5} {sub:15} email={email!r:32} claim={verified!r:8} "
                                  f"-> verified={me.get('email_verified')} {res}")
    finally:
        idp.stop()

if __name__ == "__main__":
    main()
