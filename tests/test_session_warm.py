"""The session gate's warm path (:meth:`SessionGate.warm_identity`): a request whose live
session needs nothing refreshed, written or audited is served without the flow. Whenever it
answers, the flow would have answered the same identity with no reply, no cookie and the
stored record untouched; every other case (an ended, inactive, foreign or due session, a
malformed or chunked cookie, our own pages) it leaves to the flow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secure_mw._driver import run_sync
from secure_mw.crypto import KeyRing
from secure_mw.http import RequestView
from secure_mw.login.core import CHECKED, LocalLoginCore
from secure_mw.login.users import UsersFile
from secure_mw.oidc.core import OIDCSessionCore
from secure_mw.session.gate import SessionGate
from secure_mw.session.memory_store import MemorySessionStore
from secure_mw.session.model import Session
from secure_mw.settings import Settings
from tests.clock import Clock

OIDC = {"issuer": "https://idp.example", "client_id": "app", "client_secret": "s" * 32}
NOW = 1_800_000_000.0


@dataclass
class Gate:
    core: SessionGate
    store: MemorySessionStore
    clock: Clock

    def keep(self, session: Session) -> str:
        """``session``'s record in the store (as a login left it, the clock having moved
        since); the request's Cookie header."""
        assert self.store.save(session.id, session, 86400.0)
        return f"{self.core.sessions.cookie_name}={session.id}"


def _gate(tmp_path: Path, kind: str) -> Gate:
    users = tmp_path / "users.toml"
    UsersFile(users)
    mapping: dict[str, Any] = {"keys": {"encryption_keys": [KeyRing.new_key_text()]}}
    if kind != "oidc":
        mapping["local_users"] = {"file": str(users), "totp_file": str(tmp_path / "t.json")}
    if kind != "local":
        mapping["oidc"] = OIDC
    settings = Settings.from_mapping(mapping, environ={})
    clock = Clock(NOW)
    store = MemorySessionStore(clock=clock)
    core: SessionGate = OIDCSessionCore(settings, store=store, clock=clock) if kind == "oidc" \
        else LocalLoginCore(settings, store=store, clock=clock)
    return Gate(core, store, clock)


def _view(cookie: str | None, path: str = "/") -> RequestView:
    headers = [(b"host", b"app.example"), (b"accept", b"text/html")]
    if cookie is not None:
        headers.append((b"cookie", f"lang=en; {cookie}".encode()))
    return RequestView.from_scope({
        "type": "http", "method": "GET", "scheme": "https", "path": path,
        "raw_path": path.encode(), "query_string": b"", "headers": headers,
        "client": ("192.0.2.7", 5000), "server": ("127.0.0.1", 8000)})


def _session(gate: Gate, source: str, **changes: Any) -> Session:
    tokens: dict[str, Any] = {"cid": "app", "ae": NOW + 3600, "pa": NOW}
    tokens.update(changes.pop("tokens", {}))
    session = gate.core.sessions.new(claims={"sub": "alice", "groups": ["staff"]},
                                     source=source, tokens=tokens)
    return session.evolve(**changes) if changes else session


#: (name, source, changes, served warm). Sessions a flow would refresh through the provider
#: are only shown to be left to it (the flow would call the provider).
SESSIONS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("fresh", "oidc", {}, True),
    ("touched a moment ago", "oidc", {"last_active": NOW - 5}, True),
    ("due for a touch", "oidc", {"last_active": NOW - 120}, False),
    ("inactive", "oidc", {"last_active": NOW - 10 * 86400}, False),
    ("expired", "oidc", {"expires": NOW - 1}, False),
    ("expired this instant", "oidc", {"expires": NOW}, False),
    ("another client's", "oidc", {"tokens": {"cid": "other"}}, False),
    ("access token due", "oidc", {"tokens": {"ae": NOW - 1}}, False),
    ("refresh due", "oidc", {"tokens": {"rd": NOW}}, False),
    ("profile due", "oidc", {"tokens": {"pa": NOW - 301}}, False),
    ("local, checked just now", "local", {"tokens": {CHECKED: NOW - 1}}, True),
    ("local, checked long ago", "local", {"tokens": {CHECKED: NOW - 301}}, False),
    ("local, checked in the future", "local", {"tokens": {CHECKED: NOW + 5}}, False),
    ("local, check time not a number", "local", {"tokens": {CHECKED: "soon"}}, False),
    ("of no login method", "test", {}, True),
]
CALLS_PROVIDER = {"access token due", "refresh due", "profile due"}


#: Each session on each gate that has its login method (and OpenID sessions on a gate
#: without a provider: foreign there).
CASES = [pytest.param(kind, *case, id=f"{kind}: {case[0]}")
         for kind in ("oidc", "local", "local+oidc") for case in SESSIONS
         if (case[1] != "local" or kind != "oidc")
         and (case[1] != "oidc" or kind != "local" or case[0] in ("fresh", "another client's"))]


@pytest.mark.parametrize(("kind", "name", "source", "changes", "warm"), CASES)
def test_the_warm_path_answers_only_what_the_flow_answers(
        tmp_path: Path, kind: str, name: str, source: str, changes: dict[str, Any],
        warm: bool) -> None:
    gate = _gate(tmp_path, kind)
    session = _session(gate, source, **changes)
    view = _view(gate.keep(session))
    identity = gate.core.warm_identity(view)
    if source == "oidc" and kind == "local":   # an OpenID session, no provider: foreign
        warm = False
    assert (identity is not None) is warm
    if name in CALLS_PROVIDER:
        return
    stored = gate.store.load(session.id)
    outcome = run_sync(gate.core.handle(view))
    if identity is not None:
        assert outcome.reply is None and outcome.cookies == []
        assert outcome.identity == identity
        assert gate.store.load(session.id) is stored     # nothing was written


@pytest.mark.parametrize("kind", ["oidc", "local"])
def test_cookies_and_paths_the_warm_path_leaves_to_the_flow(tmp_path: Path,
                                                            kind: str) -> None:
    gate = _gate(tmp_path, kind)
    session = _session(gate, "local" if kind == "local" else "oidc",
                       tokens={CHECKED: NOW} if kind == "local" else {})
    cookie = gate.keep(session)
    name = gate.core.sessions.cookie_name
    assert gate.core.warm_identity(_view(cookie)) is not None
    for view in [
        _view(None),                                   # no cookie
        _view(f"{name}={session.id[:-1]}"),            # not an id: audited by the flow
        _view(f"{name}={session.id}!"),
        _view(f"{name}={'A' * 43}"),                   # an unknown id
        _view(f"{cookie}; {name}.1=x"),                # a chunk beside a server-side id
        _view(cookie, "/.auth/me"),                    # our own pages
        _view(cookie, "/.auth/logout"),
    ]:
        assert gate.core.warm_identity(view) is None, view
    gate.clock.advance(3600)                           # gone inactive meanwhile
    assert gate.core.warm_identity(_view(cookie)) is None


def test_a_logout_ends_the_warm_path_at_once(tmp_path: Path) -> None:
    gate = _gate(tmp_path, "oidc")
    session = _session(gate, "oidc")
    view = _view(gate.keep(session))
    assert gate.core.warm_identity(view) is not None
    run_sync(gate.core.sessions.destroy(session, sent=[gate.core.sessions.cookie_name]))
    assert gate.core.warm_identity(_view(f"{gate.core.sessions.cookie_name}={session.id}")) \
        is None


def test_stores_that_wait_or_live_in_the_cookie_take_the_flow(tmp_path: Path) -> None:
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]}, "oidc": OIDC,
        "session": {"store": "cookie"}}, environ={})
    core = OIDCSessionCore(settings, clock=Clock(NOW))
    session = core.sessions.new(claims={"sub": "alice"},
                                tokens={"cid": "app", "ae": NOW + 3600, "pa": NOW})
    cookies = run_sync(core.sessions.save(session, new=True))
    assert cookies
    view = _view("; ".join(c.split(";", 1)[0] for c in cookies))
    assert core.warm_identity(view) is None
    assert run_sync(core.handle(view)).identity is not None   # the flow serves it
