"""The lane on a real uvicorn and a real WSGI server (werkzeug's), attacked as an outsider
would: many requests in parallel against a limit, query strings and fragments, a foreign
Host, a forged identity header, a redirect parameter, the same live session throughout."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.audit import AuditLogger
from secure_mw.session import MemorySessionStore
from secure_mw.testing import session_cookie
from tests.apps import asgi_inner, uvicorn_server, wsgi_inner, wsgi_server
from tests.test_lane import count_hand_overs
from tests.test_lane_wsgi import count_hand_overs as count_wsgi_hand_overs

HOST = "app.example.com"


class Recorder(AuditLogger):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self._lock = threading.Lock()

    def event(self, event: str, /, **fields: object) -> str:
        with self._lock:
            self.events.append(event)
        return event


@pytest.mark.parametrize("flavour", ["asgi", "wsgi"])
def test_parallel_requests_on_a_real_server_take_the_lane_and_keep_the_limit_exact(
        flavour: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_mapping({
        "rate_limits": {"rules": [{"key": "ip", "limit": "30/hour"}]},
        "server": {"allowed_hosts": [HOST]},
        "access_control": {"default_policy": "deny", "rules": [{"policy": "authenticated"}]},
    }, environ={})
    store = MemorySessionStore()
    audit = Recorder()
    if flavour == "asgi":
        app = asgi.protect(asgi_inner(), settings, store=store, audit=audit)
        handed, server = count_hand_overs(monkeypatch), uvicorn_server
    else:
        app = wsgi.protect(wsgi_inner, settings, store=store, audit=audit)
        handed, server = count_wsgi_hand_overs(monkeypatch), wsgi_server
    assert app.lane is not None
    cookie = session_cookie(settings, {"sub": "alice", "groups": ["staff"]}, store=store)
    requests = (
        [("/", {"host": HOST, "cookie": cookie})] * 40
        + [("/a?x=1#frag", {"host": HOST, "cookie": cookie})] * 10
        + [("/", {"host": "evil.example", "cookie": cookie})] * 5
        + [("/", {"host": HOST, "cookie": cookie, "x-secure-mw-jwt-assertion": "forged"})] * 5
        + [("/?rd=https://evil.example/", {"host": HOST, "cookie": cookie})] * 5)
    with server(app) as url, httpx.Client(base_url=url) as client:
        def fetch(item: tuple[str, dict[str, str]]) -> tuple[int, str, Any]:
            path, headers = item
            reply = client.get(path, headers=headers)
            body = reply.json() if reply.status_code == 200 else None
            return reply.status_code, headers["host"], body

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(fetch, requests))
    def count(status: int, host: str = HOST) -> int:
        return sum(1 for s, h, _ in answers if s == status and h == host)

    # The foreign Host is refused before the limit counts; the other 60 requests share 30
    # an hour (a refused redirect parameter was counted, as in the chain).
    assert count(400, "evil.example") == 5
    assert audit.events.count("host_refused") == 5
    assert count(429) == 30 == audit.events.count("rate_limited")
    assert count(200) + count(400) == 30
    assert count(400) == audit.events.count("unsafe_redirect")
    for status, _, body in answers:
        if status == 200:
            assert body["sub"] == "alice"
            assert body["assertion"] not in (None, "forged")
    # The lane served the plain ones it was allowed to; the chain answered the rest.
    assert len(requests) - len(handed) >= 10
