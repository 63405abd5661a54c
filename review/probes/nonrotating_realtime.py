"""A provider that does not rotate refresh tokens (Google, Auth0 and Okta by default): the
second refresh never happens, and on the real clock the session ends when the kept access
token expires (userinfo refuses it). Real time, ~45 s. (review probe)

PYTHONPATH=. python -m review.probes.nonrotating_realtime [asgi|wsgi] [memory|redis|cookie]
"""

from __future__ import annotations

import sys
import time

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from tests.apps import browser, serve
from tests.idp import IdPServer, dev_login
from tests.servers import RedisServer, free_port

SECRET = "review-secret-" + "x" * 20


def main() -> None:
    flavour = sys.argv[1] if len(sys.argv) > 1 else "asgi"
    store = sys.argv[2] if len(sys.argv) > 2 else "memory"
    port = free_port()
    idp = IdPServer(clients=[{
        "client_id": "app", "client_secret": SECRET,
        "redirect_uris": [f"http://127.0.0.1:{port}/.auth/callback"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}],
        users=[{"sub": "bob", "password": "pw", "email": "bob@example.com",
                "email_verified": True, "name": "Bob", "groups": []}],
        ttl={"AccessToken": 8}, rotate_refresh_tokens=False)
    redis = RedisServer() if store in ("redis", "cookie") else None
    idp.start()
    if redis:
        redis.start()
    try:
        session: dict[str, object] = {"store": store, "inactivity": "10m"}
        if redis:
            session["redis_url"] = redis.url
        settings = Settings.from_mapping({
            "keys": {"encryption_keys": [KeyRing.new_key_text()]}, "session": session,
            "oidc": {"issuer": idp.issuer, "client_id": "app", "client_secret": SECRET,
                     "scopes": ["openid", "profile", "email"]}}, environ={})
        module = asgi if flavour == "asgi" else wsgi
        with serve(flavour, lambda inner: module.protect(inner, settings), port=port) as base, \
                browser() as client:
            first = client.get(base + "/x")
            start = client.get(base + first.headers["location"])
            client.get(dev_login(client, start.headers["location"], username="bob",
                                 password="pw"))
            t0 = time.monotonic()
            log = []
            while time.monotonic() - t0 < 45:
                answer = client.get(base + "/x", headers={"Accept": "application/json"})
                log.append((round(time.monotonic() - t0), answer.status_code))
                if answer.status_code != 200:
                    break
                time.sleep(1)
            print(flavour, store, "seconds after login, status:", log)
    finally:
        idp.stop()
        if redis:
            redis.stop()


if __name__ == "__main__":
    main()
