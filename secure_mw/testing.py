"""Helpers for your own test suite: log a user in without an identity provider, and let an
in-process test client through the Host allow-list.

::

    from secure_mw.testing import allow_test_host, session_cookie

    settings = allow_test_host(settings)              # Host: testserver is answered too

    def test_dashboard(client):                       # any HTTP test client
        cookie = session_cookie(settings, {"sub": "alice", "groups": ["admins"]})
        response = client.get("/dashboard", headers={"Cookie": cookie})

Starlette's and FastAPI's ``TestClient`` and Django's test client send ``Host: testserver``,
which the default allow-list (the loopback names, or the host of ``server.external_url``)
refuses with 400: list it in ``server.allowed_hosts`` of the test settings, or build them
with :func:`allow_test_host`. The session is written to the store ``settings`` configures —
the process-wide memory store, the Redis server, or (cookie store) into the cookie itself —
so the app under test, built from the same settings, accepts it exactly as it accepts a real
login.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from secure_mw._driver import run_sync
from secure_mw.authz.rules import claim_names
from secure_mw.crypto import KeyRing
from secure_mw.session.manager import SessionManager, SessionStore
from secure_mw.session.model import identity_claims
from secure_mw.settings import Settings

__all__ = ["TEST_CLIENT_HOST", "allow_test_host", "session_cookie"]

#: The ``Host`` that Starlette's and FastAPI's ``TestClient`` and Django's test client send.
TEST_CLIENT_HOST = "testserver"


def allow_test_host(settings: Settings, host: str = TEST_CLIENT_HOST) -> Settings:
    """``settings`` whose ``server.allowed_hosts`` also lists ``host`` (an in-process test
    client's), keeping what was allowed: the listed hosts, or when none are listed the host
    of ``server.external_url`` or the loopback names. Unchanged when ``host`` is allowed."""
    from secure_mw.guards.hosts import HostPolicy, check_entries

    policy = HostPolicy.from_settings(settings.server)
    if policy.allows(host):
        return settings
    problem = check_entries([host])
    if problem is not None:
        raise ValueError(problem)
    server = dataclasses.replace(settings.server, allowed_hosts=[*policy.entries, host])
    return dataclasses.replace(settings, server=server)


def session_cookie(settings: Settings, claims: Mapping[str, Any], *, auth_level: int = 1,
                   remember: bool = False, keyring: KeyRing | None = None,
                   store: SessionStore | None = None, source: str = "test",
                   clock: Callable[[], float] | None = None) -> str:
    """A ``name=value`` Cookie header value for a new session of ``claims`` (``sub``
    required; ``email``, ``email_verified``, ``name`` and ``groups`` are kept, and the claims
    the access rules of ``settings`` read with ``claim/…``, as a login keeps them; access
    rules that admit by email need ``"email_verified": True``).

    Pass ``store`` when the app under test was given a store object of its own, and
    ``clock`` when it was given a clock (the session then starts at that clock's time).
    """
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise ValueError("claims need a non-empty 'sub'")
    if keyring is None:
        if settings.session.store in ("cookie", "redis", "sqlite") and not (
                settings.keys.encryption_keys or settings.keys.encryption_passphrase):
            raise ValueError("the cookie, redis and sqlite stores need keys.encryption_keys")
        keyring = KeyRing.from_settings(settings.keys)
    manager = SessionManager(settings.session, keyring=keyring, store=store,
                             clock=time.time if clock is None else clock,
                             secure=settings.session.cookie_secure, sqlite=settings.sqlite)
    groups_claim = settings.oidc.groups_claim if settings.oidc else "groups"
    assume = settings.oidc.assume_email_verified if settings.oidc else False
    kept = identity_claims(claims, groups_claim, assume_email_verified=assume,
                           keep=claim_names(settings.access_control))
    session = manager.new(claims={**kept, "sub": claims["sub"]},
                          auth_level=auth_level, source=source, remember=remember)
    set_cookies = run_sync(manager.save(session, new=True))
    assert set_cookies is not None   # a new record is always written
    pairs = [line.split(";", 1)[0] for line in set_cookies if "Max-Age=0" not in line]
    return "; ".join(pairs)
