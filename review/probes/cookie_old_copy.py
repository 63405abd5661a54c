"""F5: a cookie-store copy older than the last refresh, replayed after the user was
disabled at the provider, is served on the rotation record. Review probe.

PYTHONPATH=. python review/probes/cookie_old_copy.py asgi|wsgi remember|plain
"""
import sys

import httpx

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
flavour, remember = sys.argv[1], sys.argv[2] == "remember"
try:
    clock = Clock()
    settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "session": {"store": "cookie"},
        "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": S,
                 "scopes": ["openid", "profile", "email", "groups"]}}, environ={})
    mod = asgi if flavour == "asgi" else wsgi
    with serve(flavour, lambda inner: mod.protect(inner, settings, clock=clock), port=port) as base, browser() as client:
        start = client.get(base + "/.auth/login" + ("?remember_me=1" if remember else ""))
        client.get(dev_login(client, start.headers["location"], username="bob", password="pw"))
        stolen = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar if c.name.startswith("__Host-secure_mw_session") and not c.name.endswith("_login"))
        clock.advance(100)
        print("legit refresh:", client.get(base + "/x", headers={"Accept": "application/json"}).status_code)
        idp.disable_user("bob")
        print("stolen names:", [c.split("=")[0] for c in stolen.split("; ")]); print("immediate replay:", httpx.get(base + "/x", headers={"Cookie": stolen, "Accept": "application/json"}).status_code)
        served = []
        for i in range(1, 13):
            clock.advance(60 if not remember else 300)
            r = httpx.get(base + "/x", headers={"Cookie": stolen, "Accept": "application/json"})
            served.append((int(clock.now - 0) , r.status_code))
        t0 = served[0][0] - (60 if not remember else 300)
        print(flavour, "remember" if remember else "no-remember", "old copy replayed after the user was disabled:", [(t - t0, s) for t, s in served])
finally:
    idp.stop()
