"""Key sets: static JWKS filtering, and remote JWKS fetched from a real local HTTP server."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from secure_mw import outbound
from secure_mw.errors import InvalidToken, StoreUnavailable
from secure_mw.tokens import JWTVerifier, KeySet, RemoteKeySet, SigningKey, sign
from secure_mw.tokens.keys import b64url_encode

ISS = "https://issuer.example"
AUD = "api://secure-mw-tests"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def key_a() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture(scope="module")
def key_b() -> SigningKey:
    return SigningKey.generate("EdDSA")


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.generate("RS256")


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def token_for(key: SigningKey) -> str:
    return sign({"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW, "exp": NOW + 300}, key)


# -- static key sets ------------------------------------------------------------------------


def _off_curve(jwk: dict[str, Any]) -> dict[str, Any]:
    y = int.from_bytes(json.dumps(jwk).encode()[:32].ljust(32, b"\0"), "big")
    return {**jwk, "y": b64url_encode(y.to_bytes(32, "big")), "kid": "off-curve"}


def test_unusable_keys_are_ignored_with_reasons(key_a: SigningKey, rsa_key: SigningKey) -> None:
    a = key_a.public_jwk()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    small_n = small.public_numbers().n
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    document = {
        "keys": [
            a,
            {**a, "kid": "for-encryption", "use": "enc"},
            {**a, "kid": "no-verify-op", "key_ops": ["sign"]},
            {**a, "kid": "key-ops-not-list", "key_ops": "verify"},
            {**a, "kid": "wrong-alg", "alg": "RS256"},
            {**a, "kid": "es384", "alg": "ES384"},
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "hmac", "alg": "HS256"},
            {"kty": "RSA", "n": b64url_encode(small_n.to_bytes(128, "big")), "e": "AQAB",
             "kid": "rsa-1024"},
            {"kty": "EC", "crv": "P-384", "kid": "p384",
             "x": b64url_encode(p384.x.to_bytes(48, "big")),
             "y": b64url_encode(p384.y.to_bytes(48, "big"))},
            _off_curve(a),
            {**a, "kid": "x" * 300},
            {**a, "kid": 12},
            {**a, "kid": "padded", "x": a["x"] + "="},
            "not-an-object",
            {**rsa_key.public_jwk(), "key_ops": ["verify"]},
        ]
    }
    keys = KeySet.from_dict(document)
    assert set(keys.kids) == {key_a.kid, rsa_key.kid}
    assert len(keys.ignored) == 13
    assert all(note.startswith("keys[") for note in keys.ignored)
    assert not any(a["x"] in note for note in keys.ignored)


def test_private_members_are_ignored_for_verification(key_a: SigningKey) -> None:
    keys = KeySet.from_dict({"keys": [key_a.private_jwk()]})
    found = keys.get_key(key_a.kid)
    assert found is not None and isinstance(found.public_key, ec.EllipticCurvePublicKey)
    assert "d" not in keys.to_dict()["keys"][0]


def test_key_without_kid_gets_its_thumbprint(key_a: SigningKey) -> None:
    bare = {k: v for k, v in key_a.public_jwk().items() if k != "kid"}
    keys = KeySet.from_dict({"keys": [bare]})
    assert keys.kids == (key_a.kid,)


def test_kid_clash_between_different_keys_drops_both(key_a: SigningKey, key_b: SigningKey) -> None:
    impostor = {**key_b.public_jwk(), "kid": key_a.kid}
    keys = KeySet.from_dict({"keys": [key_a.public_jwk(), impostor, key_b.public_jwk()]})
    assert keys.kids == (key_b.kid,)
    assert keys.ignored == ("kid used by two different keys",)
    same_twice = KeySet.from_dict({"keys": [key_a.public_jwk(), key_a.public_jwk()]})
    assert same_twice.kids == (key_a.kid,)


def test_selection_is_by_exact_kid(key_a: SigningKey, key_b: SigningKey) -> None:
    keys = KeySet.from_dict(jwks(key_a, key_b))
    assert keys.get_key(key_a.kid) is not None
    for near in (key_a.kid.upper(), key_a.kid + " ", " " + key_a.kid, key_a.kid[:-1], ""):
        assert keys.get_key(near) is None
    assert keys.get_key(None) is None  # several keys: a token must name one
    assert KeySet.from_dict(jwks(key_a)).get_key(None) is not None
    assert asyncio.run(keys.aget_key(key_b.kid)) is keys.get_key(key_b.kid)


@pytest.mark.parametrize(
    "document", [[], {"keys": {}}, {"key": []}, "keys", None], ids=str
)
def test_a_document_that_is_not_a_jwk_set_is_an_error(document: Any) -> None:
    with pytest.raises(ValueError):
        KeySet.from_dict(document)


def test_from_file(tmp_path: Path, key_a: SigningKey) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(key_a)))
    assert KeySet.from_file(path).kids == (key_a.kid,)
    path.write_text('{"keys": [], "keys": []}')
    with pytest.raises(ValueError):
        KeySet.from_file(path)


# -- a real JWKS server -----------------------------------------------------------------------


@dataclass
class Route:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class JWKSServer:
    """A real HTTP server on 127.0.0.1 serving configurable routes and counting requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()  # ends any delayed response at shutdown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                if route.delay:
                    server.release.wait(route.delay)
                try:
                    self.send_response(route.status)
                    for name, value in route.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(route.body)))
                    self.end_headers()
                    self.wfile.write(route.body)
                except OSError:  # the client gave up (timeout tests)
                    pass

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve_json(self, path: str, document: Any, *, cache_control: str | None = None,
                   content_type: str = "application/json", status: int = 200,
                   extra: dict[str, str] | None = None, delay: float = 0.0) -> str:
        headers = {"Content-Type": content_type, **(extra or {})}
        if cache_control is not None:
            headers["Cache-Control"] = cache_control
        self.routes[path] = Route(json.dumps(document).encode(), status, headers, delay)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = Route(b"", status, {"Location": location})
        return self.url(path)


@pytest.fixture
def server() -> Iterator[JWKSServer]:
    srv = JWKSServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_fetches_once_then_serves_from_cache(server: JWKSServer, clock: Clock,
                                              key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", jwks(key_a), cache_control="max-age=600")
    remote = RemoteKeySet(url, clock=clock)
    assert remote.key_set is None
    for _ in range(20):
        assert remote.get_key(key_a.kid) is not None
    assert server.hits["/jwks"] == 1
    assert remote.key_set is not None and remote.key_set.kids == (key_a.kid,)


@pytest.mark.parametrize(
    ("cache_control", "age", "ttl"),
    [("max-age=120", None, 120), ("public, max-age=600", None, 600), ("max-age=600", "100", 500),
     ("max-age=1", None, 60), ("max-age=999999999", None, 86400), (None, None, 300),
     ("no-store", None, 60), ("no-cache, max-age=3600", None, 60), ("max-age=abc", None, 300),
     ('max-age="900"', None, 900), ("max-age=" + "9" * 400, None, 86400),
     ("max-age=" + "9" * 400, "9" * 500, 60)],
    ids=["max-age", "with-other-directives", "minus-age", "below-minimum", "above-maximum",
         "absent-default", "no-store", "no-cache", "malformed", "quoted", "huge-max-age",
         "huge-max-age-and-age"],
)
def test_cache_lifetime_follows_cache_control(
    server: JWKSServer, clock: Clock, key_a: SigningKey,
    cache_control: str | None, age: str | None, ttl: float,
) -> None:
    url = server.serve_json("/jwks", jwks(key_a), cache_control=cache_control,
                            extra={"Age": age} if age else None)
    remote = RemoteKeySet(url, clock=clock)
    start = clock.now
    remote.get_key(key_a.kid)
    clock.now = start + ttl - 0.5
    remote.get_key(key_a.kid)
    assert server.hits["/jwks"] == 1
    clock.now = start + ttl
    remote.get_key(key_a.kid)
    assert server.hits["/jwks"] == 2


def test_unknown_kid_refetches_at_most_once_per_cooldown(
    server: JWKSServer, clock: Clock, key_a: SigningKey, key_b: SigningKey
) -> None:
    url = server.serve_json("/jwks", jwks(key_a), cache_control="max-age=86400")
    remote = RemoteKeySet(url, clock=clock, refetch_cooldown=60)
    start = clock.now
    assert remote.get_key(key_a.kid) is not None
    server.serve_json("/jwks", jwks(key_a, key_b), cache_control="max-age=86400")  # rotation
    clock.now = start + 10
    for n in range(50):  # a flood of unknown kids inside the cooldown: no fetch at all
        assert remote.get_key(f"unknown-{n}") is None
    assert remote.get_key(key_b.kid) is None
    assert server.hits["/jwks"] == 1
    clock.now = start + 60
    assert remote.get_key(key_b.kid) is not None  # cooldown over: one refetch finds the new key
    assert server.hits["/jwks"] == 2
    for n in range(50):
        clock.now = start + 61 + n
        assert remote.get_key(f"still-unknown-{n}") is None
    assert server.hits["/jwks"] == 2
    clock.now = start + 120
    assert remote.get_key("still-unknown") is None
    assert server.hits["/jwks"] == 3
    assert remote.get_key(key_a.kid) is not None and server.hits["/jwks"] == 3


def test_failure_without_cache_raises_store_unavailable(server: JWKSServer, clock: Clock,
                                                        key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", {"error": "boom"}, status=500)
    remote = RemoteKeySet(url, clock=clock)
    with pytest.raises(StoreUnavailable, match="HTTP 500"):
        remote.get_key(key_a.kid)
    with pytest.raises(StoreUnavailable):  # within the cooldown: refused without a request
        remote.get_key(key_a.kid)
    assert server.hits["/jwks"] == 1
    server.serve_json("/jwks", jwks(key_a))
    clock.now += 60
    assert remote.get_key(key_a.kid) is not None
    assert server.hits["/jwks"] == 2


def test_failure_with_cache_keeps_the_cached_set(server: JWKSServer, clock: Clock,
                                                 key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", jwks(key_a), cache_control="max-age=60")
    remote = RemoteKeySet(url, clock=clock)
    assert remote.get_key(key_a.kid) is not None
    for broken in (Route(b"<html>down</html>", 503, {"Content-Type": "text/html"}),
                   Route(b"{not json", 200, {"Content-Type": "application/json"}),
                   Route(b'{"keys": "nope"}', 200, {"Content-Type": "application/json"}),
                   Route(b'{"keys": []}', 200, {"Content-Type": "application/json"}),
                   Route(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]})
                         .encode(), 200, {"Content-Type": "application/json"})):
        server.routes["/jwks"] = broken
        clock.now += 60
        hits = server.hits["/jwks"]
        assert remote.get_key(key_a.kid) is not None  # stale but kept
        assert server.hits["/jwks"] == hits + 1
        clock.now += 0.5
        assert remote.get_key(key_a.kid) is not None  # no retry inside the backoff
        assert server.hits["/jwks"] == hits + 1
        assert remote.key_set is not None and remote.key_set.kids == (key_a.kid,)
        server.serve_json("/jwks", jwks(key_a), cache_control="max-age=60")
        clock.now += 0.5
        assert remote.get_key(key_a.kid) is not None  # 1 s later: retried, good again
        assert server.hits["/jwks"] == hits + 2


def test_failed_fetch_is_retried_with_backoff_within_the_cooldown(
        server: JWKSServer, clock: Clock, key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", {"error": "down"}, status=503)
    remote = RemoteKeySet(url, clock=clock, refetch_cooldown=60)
    start = clock.now
    fetched_at = []
    for tenth in range(0, 2000):           # a request every 0.1 s for 200 s
        clock.now = start + tenth / 10
        hits = server.hits["/jwks"]
        with pytest.raises(StoreUnavailable):
            remote.get_key(key_a.kid)
        if server.hits["/jwks"] > hits:
            fetched_at.append(round(clock.now - start, 1))
    assert fetched_at == [0, 1, 3, 7, 15, 31, 63, 123, 183]
    server.serve_json("/jwks", jwks(key_a))
    clock.now = start + 243
    assert remote.get_key(key_a.kid) is not None
    clock.now += 1                      # a success resets the backoff: the cooldown again
    assert remote.get_key("unknown") is None
    assert server.hits["/jwks"] == 10


def test_a_kid_missing_from_a_set_kept_after_a_failure_is_unavailable(
        server: JWKSServer, clock: Clock, key_a: SigningKey, key_b: SigningKey) -> None:
    """The provider rotated to a key its broken endpoint does not show: that is our side's
    failure (503, try again), not a forged token (401)."""
    url = server.serve_json("/jwks", jwks(key_a), cache_control="max-age=60")
    remote = RemoteKeySet(url, clock=clock)
    assert remote.get_key(key_a.kid) is not None
    server.serve_json("/jwks", {"keys": []})
    clock.now += 60
    with pytest.raises(StoreUnavailable, match="last fetch failed"):
        remote.get_key(key_b.kid)
    assert remote.get_key(key_a.kid) is not None
    server.serve_json("/jwks", jwks(key_a, key_b))
    clock.now += 1
    assert remote.get_key(key_b.kid) is not None
    assert asyncio.run(remote.aget_key("unknown")) is None        # healthy: plain "no key"


def test_an_empty_first_answer_is_a_failure_not_an_empty_set(server: JWKSServer,
                                                             clock: Clock) -> None:
    url = server.serve_json("/jwks", {"keys": []})
    with pytest.raises(StoreUnavailable, match="no usable key"):
        RemoteKeySet(url, clock=clock).get_key("any")
    with pytest.raises(StoreUnavailable, match="no usable key"):
        asyncio.run(RemoteKeySet(url, clock=clock).aget_key("any"))


def test_refresh_forces_a_fetch_and_reports_failure(server: JWKSServer, clock: Clock,
                                                    key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", jwks(key_a), cache_control="max-age=600")
    remote = RemoteKeySet(url, clock=clock)
    assert remote.refresh().kids == (key_a.kid,)
    assert asyncio.run(remote.arefresh()).kids == (key_a.kid,)
    assert server.hits["/jwks"] == 2
    server.routes["/jwks"] = Route(b"", 500)
    with pytest.raises(StoreUnavailable):
        remote.refresh()
    assert remote.get_key(key_a.kid) is not None


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        (Route(b'{"keys": []}', 200, {"Content-Type": "text/plain"}), "non-JSON"),
        (Route(b'{"keys": []}', 200, {}), "non-JSON"),
        (Route(b'{"keys": []}', 404, {"Content-Type": "application/json"}), "HTTP 404"),
        (Route(b'{"keys": [] ', 200, {"Content-Type": "application/json"}), "invalid JSON"),
        (Route(b'{"keys": [], "keys": []}', 200, {"Content-Type": "application/json"}),
         "invalid JSON"),
        (Route(b'{"keys": [NaN]}', 200, {"Content-Type": "application/json"}), "invalid JSON"),
        (Route(b'\xff\xfe{}', 200, {"Content-Type": "application/json"}), "invalid JSON"),
        (Route(b'[1, 2]', 200, {"Content-Type": "application/json"}), "not a JWK Set"),
        (Route(b'{"keys": [' + b'{}, ' * 20000 + b'{}]}', 200,
               {"Content-Type": "application/json"}), "too large"),
    ],
    ids=["text-plain", "no-content-type", "not-found", "truncated-json", "duplicate-member",
         "nan", "not-utf8", "not-a-jwk-set", "oversized"],
)
def test_bad_responses_are_refused(server: JWKSServer, clock: Clock, route: Route,
                                   reason: str) -> None:
    server.routes["/jwks"] = route
    remote = RemoteKeySet(server.url("/jwks"), clock=clock, max_bytes=64 * 1024)
    with pytest.raises(StoreUnavailable, match=reason):
        remote.get_key("any")
    with pytest.raises(StoreUnavailable, match=reason):
        asyncio.run(RemoteKeySet(server.url("/jwks"), clock=clock,
                                 max_bytes=64 * 1024).aget_key("any"))


def test_jwk_set_media_type_is_accepted(server: JWKSServer, clock: Clock,
                                        key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", jwks(key_a),
                            content_type="application/jwk-set+json; charset=utf-8")
    assert RemoteKeySet(url, clock=clock).get_key(key_a.kid) is not None


def test_redirects_same_scheme_only(server: JWKSServer, clock: Clock, key_a: SigningKey) -> None:
    server.serve_json("/real", jwks(key_a))
    server.redirect("/moved", "/real")
    assert RemoteKeySet(server.url("/moved"), clock=clock).get_key(key_a.kid) is not None
    assert server.hits["/real"] == 1
    server.redirect("/to-https", "https://127.0.0.1:1/real")
    with pytest.raises(StoreUnavailable, match="another scheme"):
        RemoteKeySet(server.url("/to-https"), clock=clock).get_key(key_a.kid)
    server.redirect("/to-file", "file:///etc/passwd")
    with pytest.raises(StoreUnavailable, match="another scheme"):
        asyncio.run(RemoteKeySet(server.url("/to-file"), clock=clock).aget_key(key_a.kid))
    server.redirect("/to-remote-http", "http://example.com/jwks")
    with pytest.raises(StoreUnavailable, match="refused URL"):
        RemoteKeySet(server.url("/to-remote-http"), clock=clock).get_key(key_a.kid)
    server.redirect("/loop", "/loop")
    with pytest.raises(StoreUnavailable, match="too many redirects"):
        RemoteKeySet(server.url("/loop"), clock=clock).get_key(key_a.kid)
    assert server.hits["/loop"] == outbound.MAX_REDIRECTS + 1


def test_timeouts_and_unreachable_hosts(server: JWKSServer, clock: Clock) -> None:
    slow = server.serve_json("/slow", {"keys": []}, delay=5.0)
    with pytest.raises(StoreUnavailable, match="timed out"):
        RemoteKeySet(slow, clock=clock, timeout=0.3).get_key("x")
    with pytest.raises(StoreUnavailable, match="timed out"):
        asyncio.run(RemoteKeySet(slow, clock=clock, timeout=0.3).aget_key("x"))
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(StoreUnavailable, match="request failed"):
        RemoteKeySet(f"http://127.0.0.1:{port}/jwks", clock=clock).get_key("x")


def test_async_lookups_share_one_fetch(server: JWKSServer, clock: Clock,
                                       key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", jwks(key_a), delay=0.2)
    remote = RemoteKeySet(url, clock=clock)

    async def many() -> list[Any]:
        return await asyncio.gather(*(remote.aget_key(key_a.kid) for _ in range(10)))

    found = asyncio.run(many())
    assert all(k is not None and k.kid == key_a.kid for k in found)
    assert server.hits["/jwks"] == 1


def test_threads_share_one_fetch(server: JWKSServer, clock: Clock, key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", jwks(key_a), delay=0.2)
    remote = RemoteKeySet(url, clock=clock)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(remote.get_key(key_a.kid)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(k is not None for k in results)
    assert server.hits["/jwks"] == 1


def test_verifier_with_remote_keys_follows_rotation(
    server: JWKSServer, clock: Clock, key_a: SigningKey, key_b: SigningKey
) -> None:
    url = server.serve_json("/jwks", jwks(key_a), cache_control="max-age=3600")
    remote = RemoteKeySet(url, clock=clock)
    check = JWTVerifier(remote, issuer=ISS, audience=AUD, algorithms=("ES256", "EdDSA"),
                        clock=lambda: NOW)
    assert check.verify(token_for(key_a))["sub"] == "alice"
    server.serve_json("/jwks", jwks(key_b), cache_control="max-age=3600")
    with pytest.raises(InvalidToken, match="unknown signing key"):
        check.verify(token_for(key_b))  # inside the cooldown: the old set is still in use
    clock.now += 60
    assert asyncio.run(check.averify(token_for(key_b)))["sub"] == "alice"
    with pytest.raises(InvalidToken):
        check.verify(token_for(key_a))  # rotated out
    assert server.hits["/jwks"] == 2


def test_verifier_fails_closed_when_the_jwks_is_unreachable(server: JWKSServer, clock: Clock,
                                                            key_a: SigningKey) -> None:
    url = server.serve_json("/jwks", {}, status=502)
    check = JWTVerifier(RemoteKeySet(url, clock=clock), issuer=ISS, audience=AUD,
                        clock=lambda: NOW)
    with pytest.raises(StoreUnavailable) as info:
        check.verify(token_for(key_a))
    assert info.value.status == 503
    with pytest.raises(InvalidToken):  # garbage is refused before any fetch
        check.verify("garbage")
    assert server.hits["/jwks"] == 1


# -- URL policy and the outbound module ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://example.com/jwks", "ftp://example.com/jwks", "https://user:pw@example.com/jwks",
     "https:///jwks", "/jwks", "https://example.com:99999/", "https://exa mple.com/",
     "https://example.com/\r\nX: y", "javascript:alert(1)"],
    ids=["plain-http", "ftp", "userinfo", "no-host", "relative", "bad-port", "space", "crlf",
         "javascript"],
)
def test_refused_urls(url: str) -> None:
    with pytest.raises(ValueError):
        RemoteKeySet(url)


@pytest.mark.parametrize(
    "url",
    ["https://idp.example/jwks", "http://127.0.0.1:8080/jwks", "http://localhost/jwks",
     "http://[::1]/jwks"],
)
def test_accepted_urls(url: str) -> None:
    RemoteKeySet(url)


def test_plain_http_only_when_allowed() -> None:
    RemoteKeySet("http://idp.internal/jwks", allow_http=True)


@pytest.mark.parametrize(
    "options",
    [{"min_ttl": 600, "max_ttl": 60}, {"refetch_cooldown": 0}, {"timeout": -1},
     {"max_bytes": 0}, {"default_ttl": float("nan")}, {"retry_backoff": 0}],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_bad_remote_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RemoteKeySet("https://idp.example/jwks", **options)


def test_outbound_get_and_post(server: JWKSServer) -> None:
    url = server.serve_json("/doc", {"a": 1}, cache_control="max-age=5",
                            extra={"X-Two": "one"})
    data, headers = outbound.get_json(url)
    assert data == {"a": 1}
    assert headers["cache-control"] == "max-age=5" and headers["x-two"] == "one"
    data, headers = asyncio.run(outbound.aget_json(url))
    assert data == {"a": 1}
    token_url = server.serve_json("/token", {"error": "invalid_grant"}, status=400)
    assert outbound.post_form(token_url, {"grant_type": "x"})[:2] == (
        400, {"error": "invalid_grant"})
    status, data, _ = asyncio.run(outbound.apost_form(token_url, {"grant_type": "x"}))
    assert (status, data) == (400, {"error": "invalid_grant"})
    server.serve_json("/token", {"error": "boom"}, status=500)
    with pytest.raises(StoreUnavailable, match="HTTP 500"):
        outbound.post_form(token_url, {})
    server.redirect("/post-redirect", "/token", status=307)
    with pytest.raises(StoreUnavailable, match="HTTP 307"):
        outbound.post_form(server.url("/post-redirect"), {})
    with pytest.raises(StoreUnavailable, match="refused URL"):
        outbound.get_json("http://example.com/")


def test_malformed_redirect_is_unavailable_not_a_crash(server: JWKSServer, clock: Clock,
                                                       key_a: SigningKey) -> None:
    from secure_mw.errors import StoreUnavailable

    url = server.redirect("/jwks", "//[x")
    remote = RemoteKeySet(url, clock=clock, allow_http=True)
    with pytest.raises(StoreUnavailable):
        remote.get_key(key_a.kid)
