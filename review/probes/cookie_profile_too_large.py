"""F6: the provider removes "admins" and adds 600 groups; with the cookie store the
refreshed profile does not fit, and the old cookie keeps "admins". Review probe.

PYTHONPATH=. python review/probes/cookie_profile_too_large.py asgi|wsgi
"""
import sys

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from tests.apps import browser, serve
from tests.clock import Clock
from tests.idp import IdPServer, dev_login
from tests.servers import free_port

port = free_port()
S = "s" * 32
idp = IdPServer(clients=[{"client_id": "app", "client_secret": S,
        "redirect_uris": [f"http://127.0.0.1:{port}/.auth/callback"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}],
    users=[{"sub": "bob", "password": "pw", "email": "b@x", "email_verified": True, "name": "B", "groups": ["admins"]}],
    ttl={"AccessToken": 120})
idp.start()
try:
    clock = Clock()
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": {"store": "cookie", "inactivity": "10m"},
        "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": S,
                 "scopes": ["openid", "profile", "email", "groups"]}}, environ={})
    flavour = sys.argv[1]
    mod = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: mod.protect(inner, settings, clock=clock), port=port) as base, browser() as client:
        first = client.get(base + "/x")
        start = client.get(base + first.headers["location"])
        client.get(dev_login(client, start.headers["location"], username="bob", password="pw"))
        print("signed in:", client.get(base + "/x", headers={"Accept": "application/json"}).status_code)
        idp.set_groups("bob", [f"cn=group-{i:04d},ou=groups,dc=example,dc=com" for i in range(600)])
        clock.advance(100)
        for i in range(4):
            r = client.get(base + "/x")
            print(f"t+{100 + 30*i}", r.status_code, r.json().get("groups") if r.status_code == 200 else None, r.headers.get("set-cookie", "")[:40], r.text[:160].replace("\n"," ") if r.status_code != 200 else "")
            clock.advance(30)
        idp.disable_user("bob")
        for i in range(6):
            clock.advance(300)
            r = client.get(base + "/x", headers={"Accept": "application/json"})
            print(f"disabled, +{300*(i+1)} s", r.status_code, r.json().get("groups") if r.status_code == 200 else r.text[:80])
        clock.advance(3600 * 2)
        r = client.get(base + "/x")
        print("t+2h", r.status_code)
finally:
    idp.stop()
