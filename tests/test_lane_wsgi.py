"""The WSGI lane (secure_mw/wsgi/_lane.py) serves a plain request exactly as the chain would,
and hands every other one to the chain before it has changed anything: the WSGI twin of
tests/test_lane.py, on the same random and hostile requests, written as a server's environ."""

from __future__ import annotations

import random
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

import secure_mw.asgi
import secure_mw.wsgi
import secure_mw.wsgi._lane as lane_module
from secure_mw.guards.ratelimit import MemoryRateLimiter
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from secure_mw.tokens.headers import current_assertion
from tests.test_lane import HOST, Recorder, _payload, _request, _settings, _state
from tests.test_lane import _app as asgi_app

_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
_NONCE = re.compile(r"'nonce-[A-Za-z0-9+/=_-]+'")
_NEW_SID = re.compile(r"(secure_mw_session=)[A-Za-z0-9_-]{43}")
_CSRF = re.compile(rb'"csrf_token":"[^"]*"')


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    identity = environ.get("secure_mw.identity")
    environ["seen"] = {
        key: _JWT.sub("<token>", value) if isinstance(value, str) else value
        for key, value in environ.items()
        if key.startswith(("HTTP_", "PATH_", "SCRIPT_", "REMOTE_", "wsgi.url"))
    } | {
        "identity": None if identity is None else (identity.sub, identity.groups),
        "decision": environ.get("secure_mw.decision"),
        "client": environ.get("secure_mw.client"),
        "nonce": bool(environ.get("secure_mw.csp_nonce")),
        "assertion": None if environ.get("secure_mw.assertion") is None
        else _payload(environ["secure_mw.assertion"].encode()),
        "outbound": None if current_assertion.get() is None
        else _payload(current_assertion.get().encode()),  # type: ignore[union-attr]
        "keys": sorted(key for key in environ if key.startswith("secure_mw.")),
    }
    headers = [("Content-Type", "text/plain")]
    path = environ.get("PATH_INFO")
    if path == "/go-evil":
        headers.append(("Location", "https://evil.example/x"))
    elif path == "/go-home":
        headers.append(("location", "/home"))
    elif path == "/refresh":
        headers.append(("Refresh", "0; url=https://evil.example/"))
    start_response("200 OK", headers)
    return [b"ok"]


class Stack:
    def __init__(self, now: list[float], *, lane: bool, **extra: Any) -> None:
        clock = lambda: now[0]  # noqa: E731
        settings = _settings(**extra)
        self.audit = Recorder(clock)
        self.store = MemorySessionStore(clock=clock)
        self.limiter = MemoryRateLimiter(clock=clock)
        self.app = secure_mw.wsgi.protect(_app, settings, store=self.store, clock=clock,
                                          audit=self.audit, rate_limiter=self.limiter)
        assert self.app.lane is not None
        if not lane:
            self.app.lane = None
        self.cookies = {
            name: session_cookie(settings, claims, store=self.store, clock=clock)
            for name, claims in (
                ("alice", {"sub": "alice", "groups": ["staff"]}),
                ("bob", {"sub": "bob", "groups": ["admins"]}))}

    def call(self, environ: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], object]:
            started.append((status, headers))
            return lambda data: None

        body = b"".join(self.app(environ, start_response))
        assert current_assertion.get() is None      # reset once the app has returned
        text = repr((started, _CSRF.sub(b"<csrf>", body)))
        text = _NEW_SID.sub(r"\1<new>", _NONCE.sub("'nonce-N'", text))
        seen = repr(environ.get("seen", {}))
        for name, cookie in self.cookies.items():
            sid = cookie.split("=", 1)[1]
            text, seen = text.replace(sid, f"<{name}>"), seen.replace(sid, f"<{name}>")
        return text, {"seen": seen}


def _environ(scope: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """What a WSGI server hands the app for ``scope``'s request (repeated headers joined, as
    gunicorn and werkzeug do), with a server's variations."""
    raw = scope["raw_path"].decode("latin-1")
    path = re.sub("%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), raw)
    script = rng.choice(["", "", "", "/app"])
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"], "SCRIPT_NAME": script, "PATH_INFO": path,
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope["scheme"], "wsgi.input": None,
        "wsgi.errors": None, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if scope["client"] is not None:
        environ["REMOTE_ADDR"] = scope["client"][0]
        environ["REMOTE_PORT"] = str(scope["client"][1])
    target = rng.choice(["RAW_URI", "REQUEST_URI", None])
    if target is not None:
        query = scope["query_string"].decode("latin-1")
        environ[target] = script + raw + ("?" + query if query else "")
    variation = rng.random()
    if variation < 0.05:
        environ["gunicorn.socket"] = None
    elif variation < 0.08:
        environ["secure_mw.view"] = None    # a key a stack around it set
    elif variation < 0.10:
        environ["SSL_CLIENT_CERT"] = "-----BEGIN CERTIFICATE-----"
    for name, value in scope["headers"]:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = environ[key] + "," + text if key in environ else text
    return environ


def count_hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    handed: list[int] = []
    real_run = lane_module.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:
        handed.append(1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(lane_module, "run", counting_run)
    return handed


@pytest.mark.parametrize(("seed", "server"), [
    (11, {}), (12, {}), (13, {"trusted_proxies": ["10.0.0.1"]}),
    (14, {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": "forwarded"})])
def test_the_wsgi_lane_answers_every_request_as_the_chain_does(
        seed: int, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.time()]
    extra = {"server": {"allowed_hosts": [HOST, "*.apps.example.com"], **server}}
    fast, slow = Stack(now, lane=True, **extra), Stack(now, lane=False, **extra)
    handed = count_hand_overs(monkeypatch)
    rng = random.Random(seed)
    total = 600
    for index in range(total):
        if rng.random() < 0.25:
            now[0] += rng.choice([0.5, 2.0, 4.0, 11.0, 11.0, 61.0])
        state = rng.getstate()
        a_sent, a_seen = fast.call(_environ(_request(rng, fast), rng))  # type: ignore[arg-type]
        rng.setstate(state)
        b_sent, b_seen = slow.call(_environ(_request(rng, slow), rng))  # type: ignore[arg-type]
        where = f"request {index} (seed {seed})"
        assert a_sent == b_sent, where
        assert a_seen == b_seen, where
        assert fast.audit.lines == slow.audit.lines, where
        assert _state(fast.limiter, now[0]) == _state(slow.limiter, now[0]), where
    served = total - len(handed)
    assert served >= 80, served
    assert len(handed) >= 200, len(handed)


def test_a_refused_count_is_answered_by_the_chain_once() -> None:
    now = [time.time()]
    stack = Stack(now, lane=True)
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/",
               "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.9", "wsgi.url_scheme": "https",
               "HTTP_HOST": HOST, "HTTP_COOKIE": stack.cookies["alice"]}
    statuses = [stack.call(dict(environ))[0].split("'")[1] for _ in range(23)]
    assert statuses == ["200 OK"] * 20 + ["429 Too Many Requests"] * 3
    assert sum(event == "rate_limited" for event, _ in stack.audit.lines) == 3


def test_a_kept_ticket_is_asked_again_on_every_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/test_lane.py's ticket test for WSGI; a ticket is also one per server socket
    (the view reads the listening port from it), never another connection's."""
    now = [time.time()]
    stack = Stack(now, lane=True)
    lane = stack.app.lane
    handed = count_hand_overs(monkeypatch)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))

    def environ(name: str, sock: Any = None) -> dict[str, Any]:
        env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/",
               "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.7", "SERVER_PORT": "8000",
               "wsgi.url_scheme": "http", "HTTP_HOST": HOST,
               "HTTP_COOKIE": stack.cookies[name]}
        if sock is not None:
            env["gunicorn.socket"] = sock
        return env

    def status(name: str, sock: Any = None) -> str:
        return stack.call(environ(name, sock))[0].split("'")[1]

    try:
        assert [status("alice"), status("bob")] == ["200 OK"] * 2
        kept = lane._plain(environ("alice"))
        assert kept is not None and lane._plain(environ("alice")) is kept
        on_socket = lane._plain(environ("alice", listening))
        assert on_socket is not None and on_socket is not kept
        assert lane._plain(environ("alice", listening)) is on_socket
        handed.clear()
        assert [status("alice"), status("bob"), status("alice", listening)] == \
            ["200 OK"] * 3 and handed == []
        stack.store.delete(stack.cookies["alice"].split("=", 1)[1])
        assert status("alice").startswith("401") and handed == [1]
        now[0] += 61
        handed.clear()
        assert [status("bob"), status("bob")] == ["200 OK"] * 2 and handed == [1]
        now[0] += 31 * 60
        handed.clear()
        assert status("bob").startswith("401") and handed == [1]
    finally:
        listening.close()


def test_https_on_gunicorns_tls_socket_takes_the_chain_behind_a_proxy_the_lane(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn hands over its socket: a TLS one holds the client certificate the chain's
    view reads, so the lane leaves it alone; ``https`` gunicorn took from a proxy it trusts
    (``X-Forwarded-Proto``) comes on a plain socket, and the lane serves it."""
    now = [time.time()]
    stack = Stack(now, lane=True)
    handed = count_hand_overs(monkeypatch)
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).wrap_socket(
        socket.socket(), server_side=True, do_handshake_on_connect=False)

    def status(sock: Any) -> str:
        return stack.call({"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/",
                           "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.7",
                           "SERVER_PORT": "443", "wsgi.url_scheme": "https",
                           "HTTP_HOST": HOST, "HTTP_COOKIE": stack.cookies["alice"],
                           "gunicorn.socket": sock})[0].split("'")[1]

    try:
        assert status(plain) == "200 OK"        # the chain first (it keeps the verdict)
        handed.clear()
        assert [status(plain), status(plain)] == ["200 OK"] * 2 and handed == []
        assert [status(tls), status(tls)] == ["200 OK"] * 2 and handed == [1, 1]
    finally:
        plain.close()
        tls.close()


@pytest.mark.parametrize("flavour", ["asgi", "wsgi"])
def test_chains_the_lane_cannot_follow_have_none(flavour: str) -> None:
    """Both flavours decide alike which stacks get a lane (LaneCore.parts_of)."""
    protect, app = (secure_mw.asgi.protect, asgi_app) if flavour == "asgi" \
        else (secure_mw.wsgi.protect, _app)
    two_rules = _settings(rate_limits={"rules": [{"key": "ip", "limit": "6/minute"},
                                                  {"key": "ip", "limit": "100/hour"}]})
    assert protect(app, two_rules).lane is None
    by_user = _settings(rate_limits={"rules": [{"key": "user", "limit": "6/minute"}]})
    assert protect(app, by_user).lane is None
    observed = _settings(metrics={"enabled": True})
    assert getattr(protect(app, observed), "lane", None) is None


def test_a_malformed_environ_gets_the_chain_answer_not_an_error() -> None:
    now = [time.time()]
    fast, slow = Stack(now, lane=True), Stack(now, lane=False)
    for change in ({"PATH_INFO": b"/"}, {"QUERY_STRING": None}, {"REQUEST_METHOD": None},
                   {"RAW_URI": ["/"]}, {"HTTP_HOST": ""}, {"wsgi.url_scheme": None}):
        answers = []
        for stack in (fast, slow):
            environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/",
                       "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.5",
                       "wsgi.url_scheme": "https", "HTTP_HOST": HOST,
                       "HTTP_COOKIE": stack.cookies["alice"], **change}
            try:
                answers.append(stack.call(environ)[0])
            except Exception as exc:    # the chain's own error: compared too
                answers.append(type(exc).__name__)
        assert answers[0] == answers[1], change
