"""F7: the cookie store in two processes, as the multi-worker 503 page advises: parallel
requests at refresh time end the session (5 of 5 trials). Review probe, injected clock.

PYTHONPATH=. python review/probes/cookie_two_workers.py asgi|wsgi
"""
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from tests.apps import browser, serve
from tests.clock import Clock
from tests.idp import IdPServer, dev_login
from tests.servers import free_port

ports = [free_port(), free_port()]
S = "s" * 32
idp = IdPServer(clients=[{"client_id": "app", "client_secret": S,
        "redirect_uris": [f"http://127.0.0.1:{p}/.auth/callback" for p in ports],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}],
    users=[{"sub": "bob", "password": "pw", "email": "b@x", "email_verified": True, "name": "B", "groups": ["admins"]}],
    ttl={"AccessToken": 120})
idp.start()
flavour = sys.argv[1]
try:
    results = []
    for trial in range(5):
        clock = Clock()
        settings = Settings.from_mapping({"keys": {"encryption_keys": [KeyRing.new_key_text()]},
            "session": {"store": "cookie", "inactivity": "10m"},
            "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": S,
                     "scopes": ["openid", "profile", "email", "groups"]}}, environ={})
        mod = asgi if flavour == "asgi" else wsgi
        with serve(flavour, lambda inner: mod.protect(inner, settings, clock=clock), port=ports[0]) as a, \
             serve(flavour, lambda inner: mod.protect(inner, settings, clock=clock), port=ports[1]) as b, browser() as client:
            start = client.get(a + "/.auth/login")
            client.get(dev_login(client, start.headers["location"], username="bob", password="pw"))
            cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar if c.name.startswith("__Host-secure_mw_session") and not c.name.endswith("_login"))
            clock.advance(100)
            def one(i):
                return httpx.get((a, b)[i % 2] + "/x", headers={"Cookie": cookie, "Accept": "application/json"}).status_code
            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(one, range(6)))
            # the browser keeps whichever cookie; replay the original 30 s later on each instance
            clock.advance(30)
            after = [one(0), one(1)]
            results.append((statuses, after))
    for r in results: print(flavour, "parallel at refresh:", r[0], "then:", r[1])
finally:
    idp.stop()
