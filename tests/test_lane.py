"""The lane (secure_mw/asgi/_lane.py) serves a plain request exactly as the chain would, and
hands every other one to the chain before it has changed anything.

Two stacks are built from the same settings with the same clock: one with its lane, one
whose chain decides everything. The same random requests (hostile ones among them) go to
both; the replies, what the app sees, the audit lines and the rate-limit state must be the
same, request by request."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

import secure_mw.asgi
import secure_mw.asgi._lane as lane_module
from secure_mw import Settings
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.guards.ratelimit import MemoryRateLimiter
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from secure_mw.tokens.headers import current_assertion

HOST = "app.example.com"
KEY = KeyRing.new_key_text()


def _settings(**extra: Any) -> Settings:
    return Settings.from_mapping({
        "oidc": {"issuer": "https://idp.example.com", "client_id": "lane",
                 "client_secret": "lane-secret"},
        "keys": {"encryption_keys": [KEY]},
        "rate_limits": {"rules": [{"key": "ip", "limit": "20/minute"}]},
        "server": {"allowed_hosts": [HOST, "*.apps.example.com"]},
        "session": {"inactivity": "30m"},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/public$"], "policy": "bypass"},
            {"resources": ["^/admin(/|$)"], "subject": [["group:admins"]],
             "policy": "authenticated"},
            {"policy": "authenticated"}]},
        **extra,
    }, environ={})


class Recorder(AuditLogger):
    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.lines: list[tuple[str, dict[str, object]]] = []

    def event(self, event: str, /, **fields: object) -> str:
        self.lines.append((event, {k: v for k, v in fields.items() if k != "level"}))
        return event


def _payload(token: bytes) -> dict[str, Any]:
    """The claims of an assertion (each stack signs with its own key)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    claims.pop("jti", None)
    claims.pop("sid", None)     # (each stack has its own session ids)
    return claims               # (iat, nbf, exp: both stacks' signers read one clock)


_JWT = re.compile(rb"eyJ[\w-]+\.[\w-]+\.[\w-]+")


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    seen = scope.setdefault("seen", {})
    identity = scope.get("secure_mw.identity")
    seen.update({
        "path": scope.get("path"), "raw_path": scope.get("raw_path"),
        "user": getattr(scope.get("user"), "sub", None),
        "identity": None if identity is None else (identity.sub, identity.groups),
        "auth": list(scope["auth"].scopes) if "auth" in scope else None,
        "decision": scope.get("secure_mw.decision"),
        "client": scope.get("secure_mw.client"),
        "nonce": bool(scope.get("secure_mw.csp_nonce")),
        "assertion": None if scope.get("secure_mw.assertion") is None
        else _payload(scope["secure_mw.assertion"].encode()),
        "headers": [(n, _JWT.sub(b"<token>", v)) for n, v in scope["headers"]],
        "client_addr": scope.get("client"),
        "outbound": None if current_assertion.get() is None
        else _payload(current_assertion.get().encode()),   # type: ignore[union-attr]
    })
    headers = [(b"content-type", b"text/plain")]
    if scope["path"] == "/go-evil":
        headers.append((b"Location", b"https://evil.example/x"))
    elif scope["path"] == "/go-home":
        headers.append((b"location", b"/home"))
    elif scope["path"] == "/refresh":
        headers.append((b"refresh", b"0; url=https://evil.example/"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


class Stack:
    def __init__(self, now: list[float], *, lane: bool, **extra: Any) -> None:
        """``extra``: settings sections that replace the test's own."""
        clock = lambda: now[0]  # noqa: E731
        settings = _settings(**extra)
        self.audit = Recorder(clock)
        self.store = MemorySessionStore(clock=clock)
        self.limiter = MemoryRateLimiter(clock=clock)
        self.app = secure_mw.asgi.protect(_app, settings, store=self.store, clock=clock,
                                          audit=self.audit, rate_limiter=self.limiter)
        assert (self.app.lane is not None) is True
        if not lane:
            self.app.lane = None
        self.cookies = {
            name: session_cookie(settings, claims, store=self.store, clock=clock)
            for name, claims in (
                ("alice", {"sub": "alice", "groups": ["staff"]}),
                ("bob", {"sub": "bob", "groups": ["admins"]}))}

    def call(self, loop: asyncio.AbstractEventLoop, scope: dict[str, Any]
             ) -> tuple[list[Any], dict[str, Any]]:
        sent: list[Any] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        loop.run_until_complete(self.app(scope, receive, send))
        return sent, scope.get("seen", {})


_NONCE = re.compile(rb"'nonce-[A-Za-z0-9+/=_-]+'")


_CSRF = re.compile(rb'"csrf_token":"[^"]*"')
_NEW_SID = re.compile(rb"(secure_mw_session=)[A-Za-z0-9_-]{43}")


def _masked(sent: list[Any], stack: Stack) -> str:
    """The messages sent, without what differs by nature: nonces, each stack's session
    ids (a new one, in a Set-Cookie, is as random as the nonce)."""
    out = []
    for message in sent:
        message = dict(message)
        if "headers" in message:
            message["headers"] = [(n, _NEW_SID.sub(rb"\1<new>", _NONCE.sub(
                b"'nonce-N'", v)) if n == b"set-cookie" else _NONCE.sub(b"'nonce-N'", v))
                for n, v in message["headers"]]
        if "body" in message:
            message["body"] = _CSRF.sub(b'"csrf_token":"<csrf>"', message["body"])
        out.append(message)
    return _sids({"sent": out}, stack)["seen"]


PATHS = ["/", "/public", "/admin", "/admin/x", "/a/../admin", "//admin", "/%61dmin",
         "/caf%C3%A9", "/%ff", "/.auth/me", "/.auth/login", "/.well-known/secure-mw/jwks.json",
         "/.auth/health", "/go-evil", "/go-home", "/refresh", "/x/./y", "/x?"]
QUERIES = [b"", b"", b"a=1", b"rd=https://evil.example/", b"r%64=https://evil.example/",
           b"next=/ok", b"q=%20x", b"rd=/fine"]
HOSTS = [HOST, HOST, HOST.upper(), "evil.example", HOST + ":443", "x.apps.example.com", None]
EXTRA = [[], [], [(b"accept", b"text/html")], [(b"user-agent", b"t"), (b"accept", b"*/*")],
         [(b"authorization", b"Bearer abc")], [(b"x-forwarded-for", b"9.9.9.9")],
         [(b"x-secure-mw-jwt-assertion", b"forged")],
         [(b"x_secure_mw_jwt_assertion", b"forged")], [(b"host", b"evil.example")],
         [(b"forwarded", b"for=9.9.9.9;proto=http;host=evil.example")],
         [(b"x-forwarded-for", b"9.9.9.9"), (b"x-forwarded-host", b"x.apps.example.com")],
         [(b"accept", b"a"), (b"accept", b"b")], [(b"X-Custom", b"1")],
         [(b"sec-fetch-mode", b"navigate"), (b"accept", b"text/html")]]
COOKIES = ["alice", "alice", "bob", None, "garbage", "alice+chunk", "twice", "alice+other"]
METHODS = ["GET", "GET", "HEAD", "POST", "DELETE", "get", "OPTIONS", "BREW"]
CLIENTS = [("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.1", 3), None]


PLAIN_PATHS = ["/", "/public", "/admin", "/go-evil", "/go-home", "/refresh", "/x"]
PLAIN_EXTRA = [[], [], [(b"accept", b"text/html")], [(b"user-agent", b"t"), (b"accept", b"*/*")],
               [(b"sec-fetch-mode", b"navigate"), (b"accept", b"text/html")],
               [(b"x-secure-mw-jwt-assertion", b"forged")], [(b"host", b"evil.example")],
               [(b"x-forwarded-for", b"9.9.9.9")]]


def _request(rng: random.Random, stack: Stack) -> dict[str, Any]:
    """Most of them plain (what the lane may serve), the others from the whole corpus."""
    if rng.random() < 0.6:
        return _scope(rng.choice(["GET", "GET", "HEAD", "POST"]), rng.choice(PLAIN_PATHS),
                      rng.choice([b"", b"", b"a=1", b"rd=/fine"]), HOST,
                      rng.choice(["alice", "alice", "bob"]), rng.choice(PLAIN_EXTRA), rng,
                      stack)
    return _scope(rng.choice(METHODS), rng.choice(PATHS), rng.choice(QUERIES),
                  rng.choice(HOSTS), rng.choice(COOKIES), rng.choice(EXTRA), rng, stack)


def _scope(method: str, path: str, query: bytes, host: str | None, cookie: str | None,
           extra: list[tuple[bytes, bytes]], rng: random.Random, stack: Stack
           ) -> dict[str, Any]:
    raw = path.encode()
    decoded = re.sub("%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), path)
    headers: list[tuple[bytes, bytes]] = []
    if host is not None:
        headers.append((b"host", host.encode()))
    if cookie is not None:
        name = cookie.split("+")[0]
        value = stack.cookies.get(name, "sm_session=" + "A" * 43 if name == "garbage"
                                  else stack.cookies["alice"])
        if cookie == "alice+chunk":
            value += "; " + value.split("=")[0] + ".1=zz"
        elif cookie == "alice+other":
            value = "lang=en; " + value
        headers.append((b"cookie", value.encode()))
        if cookie == "twice":
            headers.append((b"cookie", b"other=1"))
    headers += extra
    rng.shuffle(headers)
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": rng.choice(["https", "https", "http"]),
            "path": decoded, "raw_path": raw, "root_path": "",
            "query_string": query, "headers": headers,
            "client": rng.choice(CLIENTS), "server": ("127.0.0.1", 8000)}


def _sids(seen: dict[str, Any], stack: Stack) -> dict[str, Any]:
    """What the app saw, each stack's session ids written as the user's name."""
    text = repr(seen)
    for name, cookie in stack.cookies.items():
        text = text.replace(cookie.split("=", 1)[1], f"<{name}>")
    return {"seen": text}


def count_hand_overs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets one item each time a lane hands a request to its chain."""
    handed: list[int] = []
    real_run = lane_module.run

    async def counting_run(*args: Any, **kwargs: Any) -> None:
        handed.append(1)
        await real_run(*args, **kwargs)

    monkeypatch.setattr(lane_module, "run", counting_run)
    return handed


def _state(limiter: Any, now: float) -> Any:
    """The limiter's keys that still hold a debt (a drained key decides as no key)."""
    return {prefix: {key: tats for key, tats in table.items() if max(tats) > now}
            for prefix, table in limiter._tables.items()}


@pytest.mark.parametrize(("seed", "server"), [
    (1, {}), (2, {}), (3, {"trusted_proxies": ["10.0.0.1"]}),
    (4, {"trusted_proxies": ["10.0.0.0/8"], "forwarded_header": "forwarded"})])
def test_the_lane_answers_every_request_as_the_chain_does(
        seed: int, server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.time()]
    extra = {"server": {"allowed_hosts": [HOST, "*.apps.example.com"], **server}}
    fast, slow = Stack(now, lane=True, **extra), Stack(now, lane=False, **extra)
    handed = count_hand_overs(monkeypatch)
    loop = asyncio.new_event_loop()
    rng = random.Random(seed)
    total = 600
    try:
        for index in range(total):
            if rng.random() < 0.25:
                now[0] += rng.choice([0.5, 2.0, 4.0, 11.0, 11.0, 61.0])
            state = rng.getstate()
            a_sent, a_seen = fast.call(loop, _request(rng, fast))
            rng.setstate(state)
            b_sent, b_seen = slow.call(loop, _request(rng, slow))
            where = f"request {index} (seed {seed})"
            assert _masked(a_sent, fast) == _masked(b_sent, slow), where
            assert _sids(a_seen, fast) == _sids(b_seen, slow), where
            assert fast.audit.lines == slow.audit.lines, where
            assert _state(fast.limiter, now[0]) == _state(slow.limiter, now[0]), where
    finally:
        loop.close()
    served = total - len(handed)
    # Neither path may be vacuous: the lane served many requests and handed many over.
    assert served >= 80, served
    assert len(handed) >= 200, len(handed)


def test_a_refused_count_is_handed_over_and_answered_by_the_chain_once() -> None:
    now = [time.time()]
    stack = Stack(now, lane=True)
    loop = asyncio.new_event_loop()
    scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/",
             "raw_path": b"/", "query_string": b"", "root_path": "",
             "client": ("10.0.0.9", 1), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", HOST.encode()),
                         (b"cookie", stack.cookies["alice"].encode())]}
    statuses = [stack.call(loop, dict(scope, headers=list(scope["headers"])))[0][0]["status"]
                for _ in range(23)]
    loop.close()
    assert statuses == [200] * 20 + [429] * 3
    refused = [fields for event, fields in stack.audit.lines if event == "rate_limited"]
    assert len(refused) == 3       # one audit line per refusal, not two


def test_a_kept_ticket_is_asked_again_on_every_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane keeps what a plain request's key decides (its ticket) and asks again, on
    every request, what may have changed since: a session signed out, one gone idle, one due
    for its touch is handed to the chain at once, which answers it."""
    now = [time.time()]
    stack = Stack(now, lane=True)
    lane = stack.app.lane
    handed = count_hand_overs(monkeypatch)
    loop = asyncio.new_event_loop()

    def scope(name: str) -> dict[str, Any]:
        return {"type": "http", "method": "GET", "scheme": "https", "path": "/",
                "raw_path": b"/", "query_string": b"", "root_path": "",
                "client": ("10.0.0.7", 1), "server": ("127.0.0.1", 8000),
                "headers": [(b"host", HOST.encode()),
                            (b"cookie", stack.cookies[name].encode())]}

    def status(name: str) -> int:
        return int(stack.call(loop, scope(name))[0][0]["status"])

    try:
        assert [status("alice"), status("bob")] == [200, 200]   # the chain keeps the verdicts
        kept = lane._plain(scope("alice"))
        assert kept is not None and lane._plain(scope("alice")) is kept
        handed.clear()
        assert [status("alice"), status("bob")] == [200, 200] and handed == []
        # Signed out (the record deleted, as a logout elsewhere does): the chain answers.
        stack.store.delete(stack.cookies["alice"].split("=", 1)[1])
        assert status("alice") == 401 and handed == [1]
        assert status("alice") == 401 and handed == [1, 1]
        # Due for its touch (a minute on): the chain writes it, then a new ticket serves it.
        now[0] += 61
        handed.clear()
        assert [status("bob"), status("bob")] == [200, 200] and handed == [1]
        assert lane._plain(scope("bob")) is not kept
        # Idle past the inactivity limit: ended by the chain, never served by the ticket.
        now[0] += 31 * 60
        handed.clear()
        assert status("bob") == 401 and handed == [1]
    finally:
        loop.close()


def test_a_ticket_keeps_the_assertion_only_while_the_issuer_would_reuse_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.time()]
    stack = Stack(now, lane=True)
    signer = stack.app.lane.issue.signer
    signed = [now[0]]
    monkeypatch.setattr(signer, "_clock", lambda: signed[0])
    handed = count_hand_overs(monkeypatch)
    loop = asyncio.new_event_loop()

    def assertion() -> str:
        scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/",
                 "raw_path": b"/", "query_string": b"", "root_path": "",
                 "client": ("10.0.0.7", 1), "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", HOST.encode()),
                             (b"cookie", stack.cookies["alice"].encode())]}
        stack.call(loop, scope)
        sent = dict(scope["headers"])[b"x-secure-mw-jwt-assertion"].decode()
        assert sent == scope["secure_mw.assertion"]     # the header and the scope's agree
        return sent

    try:
        first = assertion()                     # the chain's
        handed.clear()
        assert assertion() == first and assertion() == first and handed == []
        reuse = jwt.decode(first, options={"verify_signature": False})
        signed[0] = reuse["exp"]                # past the reuse margin: a new one, by the lane
        later = assertion()
        assert later != first and handed == []
        assert jwt.decode(later, options={"verify_signature": False})["iat"] > reuse["iat"]
        assert assertion() == later
    finally:
        loop.close()


def test_what_a_ticket_key_leaves_out_is_never_served_by_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once ``GET /`` has a ticket, requests whose key would match it though the chain's
    view of them differs (an empty or missing path, a client address that is not text) go
    to the chain; a ticket whose session has ended leaves the memo at once; a signer that
    never reuses a token gets no token kept on the ticket either."""
    now = [time.time()]
    stack = Stack(now, lane=True)
    lane = stack.app.lane
    handed = count_hand_overs(monkeypatch)
    loop = asyncio.new_event_loop()

    def scope(**change: Any) -> dict[str, Any]:
        return {"type": "http", "method": "GET", "scheme": "https", "path": "/",
                "raw_path": b"/", "query_string": b"", "root_path": "",
                "client": ("10.0.0.7", 1), "server": ("127.0.0.1", 8000),
                "headers": [(b"host", HOST.encode()),
                            (b"cookie", stack.cookies["alice"].encode())], **change}

    def call(**change: Any) -> dict[str, Any]:
        sent = stack.call(loop, request := scope(**change))[0]
        request["status"] = sent[0]["status"] if sent else None
        return request

    try:
        call()
        call()
        assert lane._plain(scope()) is not None
        handed.clear()
        call(path="")
        call(client=(None, 0))
        with pytest.raises(Exception):      # (the chain's own answer to a scope without one)
            call(path=None)
        assert len(handed) == 3
        # Signed out: the next request drops the ticket, with the session it held.
        assert len(lane._tickets) == 1
        stack.store.delete(stack.cookies["alice"].split("=", 1)[1])
        assert call()["status"] == 401
        assert lane._tickets == {}
        # A signer that never hands out a token twice: a new one on every request.
        stack = Stack(now, lane=True)
        monkeypatch.setattr(stack.app.lane.issue.signer, "cache_size", 0)
        handed.clear()
        tokens = [call()["secure_mw.assertion"] for _ in range(5)]
        assert len(set(tokens)) == 5 and len(handed) == 1      # four of them by the lane
    finally:
        loop.close()


# Which chains get no lane: tests/test_lane_wsgi.py, for both flavours.


def test_a_malformed_scope_gets_the_chain_answer_not_an_error() -> None:
    """Types a server should not send (a bytearray path, a tuple of headers) go to the
    chain, which answers them as it always did."""
    now = [time.time()]
    fast, slow = Stack(now, lane=True), Stack(now, lane=False)
    loop = asyncio.new_event_loop()
    try:
        for change in ({"raw_path": bytearray(b"/")}, {"query_string": bytearray(b"a=1")},
                       {"headers": ((b"host", HOST.encode()),)}, {"method": None}):
            answers = []
            for stack in (fast, slow):
                scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/",
                         "raw_path": b"/", "query_string": b"", "root_path": "",
                         "client": ("10.0.0.5", 1), "server": ("127.0.0.1", 8000),
                         "headers": [(b"host", HOST.encode()),
                                     (b"cookie", stack.cookies["alice"].encode())]}
                scope.update(change)
                try:
                    answers.append(_masked(stack.call(loop, scope)[0], stack))
                except Exception as exc:    # the chain's own error: compared too
                    answers.append(type(exc).__name__)
            assert answers[0] == answers[1], change
    finally:
        loop.close()


def test_an_observer_elsewhere_in_the_process_leaves_the_lane_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics on one app turn on the process's observation flag; another app's lane still
    serves (nothing observes its requests), and inside an observed request it hands over."""
    from secure_mw import _observe

    monkeypatch.setattr(_observe, "active", True)
    now = [time.time()]
    stack = Stack(now, lane=True)
    scope = {"type": "http", "method": "GET", "scheme": "https", "path": "/",
             "raw_path": b"/", "query_string": b"", "root_path": "",
             "client": ("10.0.0.7", 1), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", HOST.encode()),
                         (b"cookie", stack.cookies["alice"].encode())]}
    loop = asyncio.new_event_loop()
    try:
        stack.call(loop, dict(scope))       # the chain decides it first, and keeps its verdict
    finally:
        loop.close()
    assert stack.app.lane._plain(dict(scope)) is not None
    token = _observe.current.set(object())  # type: ignore[arg-type]
    try:
        assert stack.app.lane._plain(dict(scope)) is None
    finally:
        _observe.current.reset(token)
