"""Attacks on the fused layer chain, the remembered authorization verdicts and the
header-name caches, on real servers (an outside review of issue 13's fast path found each:
attacker-sized paths and header names pinned memory, and nested identity layers left the
outer assertion set; each test failed before its fix)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.authz.layer import MEMO_SIZE, AuthorizationLayer
from tests.apps import FLAVOURS, asgi_inner, uvicorn_server, wsgi_inner, wsgi_server


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _public_site_settings() -> Settings:
    return Settings.from_mapping({
        "access_control": {"default_policy": "deny",
                           "rules": [{"resources": ["^/public(/|$)"], "policy": "bypass"}]},
    }, environ={})


@contextmanager
def _served(flavour: str, settings: Settings) -> Iterator[tuple[str, AuthorizationLayer]]:
    module: Any = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings)
    layers = [step.layer for step in app.layers if type(step).__name__ ==
              "AuthorizationMiddleware"]
    assert len(layers) == 1 and isinstance(layers[0], AuthorizationLayer)
    with server(app) as url:
        yield url, layers[0]


def _held_bytes(memo: dict[tuple[Any, ...], Any]) -> int:
    """The bytes of the strings the remembered verdicts keep alive (each object once)."""
    seen: set[int] = set()
    total = 0
    for key, verdict in memo.items():
        for part in (*key, verdict.path):
            if isinstance(part, str | bytes) and id(part) not in seen:
                seen.add(id(part))
                total += sys.getsizeof(part)
    return total


def test_remembered_verdicts_hold_attacker_sized_paths(flavour: str) -> None:
    """An anonymous client sends allowed requests with long, distinct paths under a bypass
    rule: each is remembered with its path (decoded, raw and normalized), so the memory the
    authorization layer keeps grows with the paths' length, up to MEMO_SIZE of them (4096 x
    ~16-24 KB = 64-100 MB per worker), where main kept nothing."""
    requests = 200
    with _served(flavour, _public_site_settings()) as (url, layer), \
            httpx.Client(base_url=url, timeout=10) as client:
        for i in range(requests):
            response = client.get(f"/public/{i}-" + "a" * 7000)
            assert response.status_code == 200
        memo = layer._allowed
        assert memo is not None
        held = _held_bytes(memo)
    # What a fix should hold for 200 requests: a few hundred bytes each at most.
    assert held <= requests * 512, (
        f"{len(memo)} remembered verdicts keep {held} bytes of attacker-chosen paths; "
        f"at MEMO_SIZE={MEMO_SIZE} that is ~{held // requests * MEMO_SIZE // 2**20} MiB")


def _cache_bytes(cache: dict[Any, str]) -> int:
    return sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in cache.items())


def test_header_name_caches_keep_attacker_names_for_good(flavour: str) -> None:
    """Header names a client invents fill the process-wide name caches of http.py
    (``_SCOPE_NAMES`` for ASGI, ``_ENVIRON_NAMES`` for WSGI): bounded at 1024 entries but
    not in bytes, and never emptied, so a few hundred requests pin megabytes for the
    process's life (and, once full, the names of real clients are no longer cached)."""
    from secure_mw import http

    cache: dict[Any, str] = http._SCOPE_NAMES if flavour == "asgi" else http._ENVIRON_NAMES
    start = _cache_bytes(cache)
    with _served(flavour, _public_site_settings()) as (url, _layer), \
            httpx.Client(base_url=url, timeout=10) as client:
        for i in range(400):
            names = {f"x-{i}-{j}-" + "n" * 3000: "1" for j in range(3)}
            assert client.get("/public/x", headers=names).status_code == 200
    held = _cache_bytes(cache) - start
    assert held <= 1 << 20, f"the header-name cache keeps {held} bytes of invented names"


def test_nested_identity_layers_leave_the_outer_assertion_set(tmp_path: Any) -> None:
    """Two protect() stacks on one request (werkzeug's DispatcherMiddleware, Starlette's
    Mount: the environ/scope dict is shared): both identity layers keep their context-variable
    token under the same key (``secure_mw._assertion_reset``), so the inner one overwrites
    the outer's and the outer's is never reset. On a server that reuses its threads, the next
    request that does not cross secure_mw (here a probe beside the protected app) sees the
    previous user's signed assertion in ``current_assertion``; on main each middleware kept
    its token in a local variable and the value was reset."""
    import re
    import threading

    from werkzeug.serving import make_server

    from secure_mw.crypto import KeyRing, PasswordHasher
    from secure_mw.guards.timing import LoginDelay
    from secure_mw.login import UsersFile
    from secure_mw.session import MemorySessionStore
    from secure_mw.tokens.headers import current_assertion
    from tests.servers import free_port, wait_for_port

    users = UsersFile(tmp_path / "users.toml",
                      hasher=PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
    users.add("alice", password="quartz falcon 11", groups=["admins"])
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KeyRing.new_key_text()]},
        "local_users": {"file": str(users.path)},
        "access_control": {"default_policy": "authenticated"},
    }, environ={})
    store = MemorySessionStore()
    options: dict[str, Any] = {"users": users, "store": store,
                               "delay": LoginDelay(floor=0.01, seed=0.01, jitter=0.001)}
    inner = wsgi.protect(wsgi_inner, settings, **options)

    def dispatch(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"].startswith("/admin/"):   # as DispatcherMiddleware mounts
            environ["SCRIPT_NAME"] += "/admin"
            environ["PATH_INFO"] = environ["PATH_INFO"][len("/admin"):]
            return inner(environ, start_response)
        return wsgi_inner(environ, start_response)

    outer = wsgi.protect(dispatch, settings, **options)

    def probe(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen = current_assertion.get()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"none" if seen is None else b"assertion"]

    def top(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/probe":          # beside the protected app
            return probe(environ, start_response)
        return outer(environ, start_response)

    port = free_port()
    server = make_server("127.0.0.1", port, top, threaded=False)   # one thread, reused
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port)
        from tests.apps import browser

        with browser() as alice:
            form = alice.get(base + "/.auth/login")
            state = re.search(r'name="state" value="([^"]+)"', form.text)
            assert state
            done = alice.post(base + "/.auth/login", data={
                "state": state.group(1), "username": "alice",
                "password": "quartz falcon 11"})
            assert done.status_code == 303
            mounted = alice.get(base + "/admin/page")
            assert mounted.status_code == 200
            assert mounted.json()["assertion"]             # the app got alice's assertion
        assert httpx.get(base + "/probe").text == "none"   # an anonymous request afterwards
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
