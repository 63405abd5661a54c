"""Review of the lane (secure_mw/asgi/_lane.py): requests and set-ups where the lane and the
chain it stands for (``app.lane = None``) answer differently.

Each test builds the same stack twice from the same settings and the same fake clock, sends
the same requests to both and requires the same result (reply, audit lines, limiter state,
scope for the app), as tests/test_lane.py does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

import tests.test_lane as lane_tests
from secure_mw import Settings
from secure_mw.asgi import HostGuardMiddleware, IdentityHeaderMiddleware, fuse, protect
from secure_mw.asgi._io import VIEW_KEY
from secure_mw.asgi.session import SessionMiddleware
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from tests.apps import asgi_inner, uvicorn_server
from tests.test_lane import HOST, Stack, _masked, _settings, _state

JWKS = "/.well-known/secure-mw/jwks.json"


def _scope(stack: Stack, path: str = "/", *, query: bytes = b"",
           client: tuple[str, int] = ("10.0.0.1", 1)) -> dict[str, Any]:
    """A plain request of alice's live session: what the lane serves."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "https", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": query, "client": client,
            "server": ("127.0.0.1", 8000),
            "headers": [(b"host", HOST.encode()),
                        (b"cookie", stack.cookies["alice"].encode())]}


def _both(loop: asyncio.AbstractEventLoop, fast: Stack, slow: Stack, path: str = "/",
          **request: Any) -> tuple[tuple[list[Any], dict[str, Any]],
                                   tuple[list[Any], dict[str, Any]]]:
    return (fast.call(loop, _scope(fast, path, **request)),
            slow.call(loop, _scope(slow, path, **request)))


@pytest.fixture
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_hand_fused_stack_answers_the_public_keys_through_the_lane_too(
        loop: asyncio.AbstractEventLoop) -> None:
    """fuse() of a hand-made stack (docs/guards.md) gets a lane. IdentityHeaderMiddleware
    serves the public keys itself (its docstring); without a JWKSMiddleware in the chain the
    lane does not know the path is ours and hands a signed-in request for the keys to the
    app instead."""
    settings = _settings(access_control={})
    now = [time.time()]

    def clock() -> float:
        return now[0]

    answers = []
    for lane in (True, False):
        store = MemorySessionStore(clock=clock)
        inner: Any = lane_tests._app
        app = fuse(HostGuardMiddleware(SessionMiddleware(
            IdentityHeaderMiddleware(inner, settings=settings),
            settings=settings, store=store, clock=clock), settings=settings))
        assert app.lane is not None
        if not lane:
            app.lane = None
        cookie = session_cookie(settings, {"sub": "alice"}, store=store)
        sent: list[Any] = []

        async def send(message: dict[str, Any], sent: list[Any] = sent) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "scheme": "https", "path": JWKS,
                 "raw_path": JWKS.encode(), "root_path": "", "query_string": b"",
                 "client": ("10.0.0.1", 1), "server": ("127.0.0.1", 8000),
                 "headers": [(b"host", HOST.encode()), (b"cookie", cookie.encode())]}
        loop.run_until_complete(app(scope, receive, send))
        answers.append((sent[0]["status"], sent[1]["body"][:8]))
    chain = answers[1]
    assert chain == (200, b'{"keys":')       # the chain: IdentityHeaderMiddleware's keys
    assert answers[0] == chain               # the lane: the app's b"ok"


def test_a_redirect_parameter_whose_name_has_a_space_is_refused_by_the_lane_too(
        loop: asyncio.AbstractEventLoop) -> None:
    """The chain parses the query (``+`` is a space) before it compares names with
    ``redirects.params``; the lane looks for each name in the raw query, where a space is
    written ``+``, and serves the open redirect the chain refuses."""
    now = [time.time()]
    extra = {"redirects": {"params": ["rd", "return to"]}}
    fast, slow = Stack(now, lane=True, **extra), Stack(now, lane=False, **extra)
    _both(loop, fast, slow)             # the rules let alice in to "/": a verdict kept
    (fast_sent, _), (slow_sent, _) = _both(loop, fast, slow,
                                           query=b"return+to=https://evil.example/")
    assert slow_sent[0]["status"] == 400
    assert fast_sent[0]["status"] == 400, "the lane let an unsafe redirect parameter through"
    assert fast.audit.lines == slow.audit.lines


def test_a_refused_count_leaves_the_limiter_as_the_chain_leaves_it(
        loop: asyncio.AbstractEventLoop) -> None:
    """The in-memory limiter drops its least recently used drained key on every hit,
    refused or not: the lane's refused count and the chain's own count of the same request
    may drop two where the chain alone drops one. Found by this review against the claim
    "leaves the limiter as it was"; the claim is now that the keys holding a debt, which
    decide every later request, are the same."""
    now = [1_000_000.0]
    fast, slow = Stack(now, lane=True), Stack(now, lane=False)
    for peer in ("10.0.0.7", "10.0.0.8"):       # two keys that will have drained
        _both(loop, fast, slow, client=(peer, 1))
    now[0] += 1
    for _ in range(20):                         # 20/minute used up by 10.0.0.9
        _both(loop, fast, slow, client=("10.0.0.9", 1))
    now[0] += 2.5       # the first two keys have drained; 10.0.0.9 is still over its limit
    (fast_sent, _), (slow_sent, _) = _both(loop, fast, slow, client=("10.0.0.9", 1))
    assert fast_sent[0]["status"] == slow_sent[0]["status"] == 429
    assert _state(fast.limiter, now[0]) == _state(slow.limiter, now[0])


def test_the_redirect_audit_line_names_the_user_the_chain_names(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain's response check reads ``scope["secure_mw.identity"]`` when the response
    starts; the lane uses the identity it found before the app ran. An app (or a nested
    stack) that changes the identity in the scope gets a different unsafe_redirect line."""
    inner = lane_tests._app

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["secure_mw.identity"] = None        # e.g. a nested stack's anonymous answer
        await inner(scope, receive, send)

    monkeypatch.setattr(lane_tests, "_app", app)
    now = [time.time()]
    fast, slow = Stack(now, lane=True), Stack(now, lane=False)
    for _ in range(2):      # the first is decided by the rules, the second takes the lane
        (fast_sent, _), (slow_sent, _) = _both(loop, fast, slow, "/go-evil")
        assert _masked(fast_sent, fast) == _masked(slow_sent, slow)
    assert [e for e, _ in slow.audit.lines] == ["unsafe_redirect"] * 2
    assert fast.audit.lines == slow.audit.lines


def test_the_app_sees_the_same_scope_keys_without_an_identity_header(
        loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``signed_headers.issue`` nothing popped the chain's request view: the app
    (and a nested protect(), whose lane then stepped aside) found ``secure_mw.view`` in the
    scope after the chain, and not after the lane. The chain now leaves it to its layers."""
    inner = lane_tests._app
    keys: list[set[str]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        keys.append(set(scope) - {"seen"})
        await inner(scope, receive, send)

    monkeypatch.setattr(lane_tests, "_app", app)
    now = [time.time()]
    extra = {"signed_headers": {"issue": False}}
    fast, slow = Stack(now, lane=True, **extra), Stack(now, lane=False, **extra)
    _both(loop, fast, slow)
    keys.clear()
    _both(loop, fast, slow)             # the lane serves this one
    assert VIEW_KEY not in keys[0] and VIEW_KEY not in keys[1]   # the chain pops it now
    assert keys[0] == keys[1]


def test_on_uvicorn_a_redirect_parameter_whose_name_has_a_space_is_refused() -> None:
    """The same open redirect through a real server: a signed-in browser's second request
    carries ``?return+to=…`` (uvicorn hands the query over as sent)."""
    settings = Settings.from_mapping({
        "server": {"allowed_hosts": ["127.0.0.1"]},
        "redirects": {"params": ["rd", "return to"]},
        "access_control": {"default_policy": "deny", "rules": [{"policy": "authenticated"}]},
    }, environ={})
    statuses = {}
    for lane in (True, False):
        store = MemorySessionStore()
        app: Any = protect(asgi_inner(), settings, store=store)
        assert app.lane is not None
        if not lane:
            app.lane = None
        cookie = session_cookie(settings, {"sub": "alice", "groups": ["staff"]}, store=store)
        with uvicorn_server(app) as url, httpx.Client(base_url=url) as client:
            assert client.get("/x", headers={"cookie": cookie}).status_code == 200
            statuses[lane] = client.get("/x?return+to=https://evil.example/",
                                        headers={"cookie": cookie}).status_code
    assert statuses[False] == 400
    assert statuses[True] == 400, "the lane let an unsafe redirect parameter through"
