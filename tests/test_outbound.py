"""secure_mw.outbound on real local HTTP servers: credentials never follow a redirect to
another origin."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from secure_mw import outbound


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]]
    redirect_to: str | None = None

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.redirect_to and self.path == "/start":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def two_origins() -> Iterator[tuple[str, type[_Recorder], type[_Recorder]]]:
    first = type("First", (_Recorder,), {"seen": []})
    second = type("Second", (_Recorder,), {"seen": []})
    s2, url2 = _serve(second)
    first.redirect_to = url2 + "/landing"
    s1, url1 = _serve(first)
    try:
        yield url1, first, second
    finally:
        for s in (s1, s2):
            s.shutdown()
            s.server_close()


def test_authorization_is_dropped_on_a_cross_origin_redirect(
        two_origins: tuple[str, type[_Recorder], type[_Recorder]]) -> None:
    url, first, second = two_origins
    data, _ = outbound.get_json(url + "/start", headers={"Authorization": "Bearer s3cret",
                                                        "X-Other": "kept"})
    assert data == {"ok": True}
    assert first.seen[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in second.seen[0]
    assert second.seen[0]["x-other"] == "kept"


def test_authorization_is_dropped_on_a_cross_origin_redirect_async(
        two_origins: tuple[str, type[_Recorder], type[_Recorder]]) -> None:
    url, first, second = two_origins
    data, _ = asyncio.run(outbound.aget_json(url + "/start",
                                             headers={"Authorization": "Bearer s3cret"}))
    assert data == {"ok": True}
    assert first.seen[0]["authorization"] == "Bearer s3cret"
    assert "authorization" not in second.seen[0]


def test_authorization_is_kept_on_a_same_origin_redirect() -> None:
    handler = type("Same", (_Recorder,), {"seen": []})
    server, url = _serve(handler)
    handler.redirect_to = url + "/landing"
    try:
        outbound.get_json(url + "/start", headers={"Authorization": "Bearer s3cret"})
    finally:
        server.shutdown()
        server.server_close()
    assert [h.get("authorization") for h in handler.seen] == ["Bearer s3cret"] * 2
