"""Review of the fast paths of issue 13 (second round): attacks on the warm session path,
the one-limit rate decision, the WSGI request view and ``RequestView.listening()``, on real
servers. Each test here failed on the reviewed head (7f50b65) and passed on d8e34d2."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.crypto import KeyRing
from secure_mw.login.core import CHECKED
from secure_mw.login.users import UsersFile
from secure_mw.session.memory_store import MemorySessionStore
from secure_mw.session.model import Session, new_session_id
from tests.apps import FLAVOURS, serve
from tests.bearer_tokens import AUDIENCE, ISSUER, Minter
from tests.clock import Clock
from tests.servers import NginxServer, ServerProcess
from tests.test_authz_e2e import raw_get
from tests.test_session_memory_store import _env, _status_of

PY = sys.executable
NOW = 1_800_000_000.0


# -- listening(): the sibling-worker refusal under gunicorn on a Unix socket ------------------


def _raw(path: str, host: str, *, finish: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n".encode())
    if finish:
        sock.sendall(b"Connection: close\r\n\r\n")
    return sock


def _answer(sock: socket.socket) -> int:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return _status_of(answer)


@pytest.mark.parametrize("host", ["localhost", "[::1]:8000"])
def test_a_host_header_without_a_port_does_not_lift_the_sibling_refusal(
        tmp_path: Path, host: str) -> None:
    """gunicorn -w 2 on a Unix socket, default memory store: gunicorn derives SERVER_PORT
    from the Host header there, "" for ``Host: localhost:`` or an IPv6 literal. d8e34d2 read
    the connection's socket (its path) for every request; the reviewed head only when
    ``view.server`` (SERVER_PORT) is not empty, so a client that sends such a Host header is
    served by a worker that must refuse (the memory store split over two processes: a
    sign-out at one worker does not reach the other)."""
    pytest.importorskip("gunicorn")
    path = str(tmp_path / "app.sock")
    with _two_workers(path, tmp_path):
        assert 503 in _while_one_is_held(path, host, lambda: _answer(_raw(path, host)))


def _two_workers(path: str, tmp_path: Path) -> ServerProcess:
    """gunicorn -w 2 (sync workers) on the Unix socket ``path``, the default memory store."""
    args = [PY, "-m", "gunicorn", "-w", "2", "-b", f"unix:{path}", "--log-level", "warning",
            "tests.e2e_app:wsgi_app()"]
    return ServerProcess(args, port=path, env=_env(), log=tmp_path / "gunicorn.log")


def _while_one_is_held(path: str, host: str, ask: Callable[[], int]) -> list[int]:
    """Statuses of ``ask()`` while a half-sent request for ``host`` holds one sync worker
    (so the other answers), and of the held one; up to 10 rounds, until one is a 503."""
    statuses: list[int] = []
    for _ in range(10):
        held = _raw(path, host, finish=False)
        statuses.append(ask())
        held.sendall(b"Connection: close\r\n\r\n")
        statuses.append(_answer(held))
        if 503 in statuses[-2:]:
            break
    return statuses


def test_behind_nginx_an_ipv6_host_lifts_the_sibling_refusal(tmp_path: Path) -> None:
    """The same behind nginx with ``proxy_set_header Host $host`` (nginx strips the port:
    ``Host: [::1]`` reaches gunicorn, whose SERVER_PORT is then ""): any client that names
    the server by an IPv6 literal is served by workers that refuse everyone else."""
    pytest.importorskip("gunicorn")
    path = str(tmp_path / "app.sock")
    with _two_workers(path, tmp_path), \
            NginxServer(f"http://unix:{path}", tmp_path / "nginx",
                        headers={"Host": "$host"}) as proxy:
        assert 503 in _while_one_is_held(path, "[::1]:8000",
                                        lambda: raw_get(proxy.url, "/x", host="[::1]"))


# -- the warm path and bearer tokens -----------------------------------------------------------


def _bearer_settings(tmp_path: Path, minter: Minter) -> Settings:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(minter.jwks))
    users = tmp_path / "users.toml"
    UsersFile(users)
    return Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(users), "totp_file": str(tmp_path / "totp.json")},
        "session": {"cookie_secure": False},
        "bearer_tokens": {"issuer": ISSUER, "audience": [AUDIENCE], "jwks_file": str(jwks),
                          "algorithms": ["ES256"], "required_scopes": ["api:read"]},
    }, environ={})


def _live_session(store: MemorySessionStore, sub: str = "carol") -> str:
    """A live local session checked against the users file a moment ago (the warm path
    serves it); the Cookie header naming it."""
    session = Session(id=new_session_id(), claims={"sub": sub, "groups": ["staff"]},
                      auth_level=1, source="local", created=NOW - 10, last_active=NOW - 1,
                      expires=NOW + 3600, remember=False, tokens={CHECKED: NOW - 1})
    assert store.save(session.id, session, 3600.0)
    return f"secure_mw_session={session.id}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_bearer_token_beside_a_live_session_cookie_is_still_decided_by_the_token(
        tmp_path: Path, flavour: str) -> None:
    """[bearer_tokens]: "a request with Authorization: Bearer outside the login pages is
    decided by the token alone" (BearerGate). The session middleware now asks
    ``core.warm_identity`` first, and BearerGate hands that attribute to the session core
    (``__getattr__``): with a live session cookie, the token is never looked at. A forged
    token passes with no 401 and no audit line, a token lacking the required scope is not
    refused (403), and a valid token of another user yields the cookie's identity."""
    clock = Clock(NOW)
    minter = Minter(clock=clock)
    settings = _bearer_settings(tmp_path, minter)
    store = MemorySessionStore(clock=clock)
    cookie = _live_session(store)
    protect = asgi.protect if flavour == "asgi" else wsgi.protect

    def build(inner: Any) -> Any:
        return protect(inner, settings, store=store, clock=clock)

    with serve(flavour, build) as url, httpx.Client(timeout=10) as client:
        def get(token: str | None) -> httpx.Response:
            headers = {"Accept": "application/json", "Cookie": cookie}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            return client.get(url + "/x", headers=headers)

        plain = get(None)
        assert plain.status_code == 200 and plain.json()["sub"] == "carol"  # the warm path
        forged = get("not-a-token")
        bob = get(minter.token(sub="bob"))
        narrow = get(minter.token(scope="api:other"))
        assert (forged.status_code, bob.status_code, narrow.status_code) == (401, 200, 403), \
            (forged.text, bob.text, narrow.text)
        assert bob.json()["sub"] == "bob" and bob.json()["source"] == "bearer"
