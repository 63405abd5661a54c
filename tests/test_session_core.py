"""Unit tests of the framework-free session core: the flow driver, the request view, the
identity, the session record, cookies, the memory store and the session manager.

No servers and no sleeping: time comes from an injected :class:`Clock`. The end-to-end
behaviour through real servers is in tests/test_oidc_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_mw import Settings
from secure_mw._driver import Flow, Op, done, run_async, run_sync
from secure_mw.crypto import KeyRing
from secure_mw.errors import StoreUnavailable
from secure_mw.http import (
    MAX_COOKIE_HEADER,
    MAX_QUERY,
    RequestView,
    html_reply,
    json_reply,
    parse_cookies,
    redirect_reply,
)
from secure_mw.identity import ANONYMOUS, AuthScopes, Identity, claims_groups
from secure_mw.session import MemorySessionStore, Session, SessionManager, SessionRead
from secure_mw.session.cookies import (
    CHUNK,
    MAX_CHUNKS,
    CookieJarSpec,
    chunk_names_present,
    join_chunks,
    split_chunks,
)
from secure_mw.session.model import identity_claims, new_session_id, session_digest
from tests.clock import Clock

NOW = 1_800_000_000.0


def header(reply_headers: list[tuple[str, str]], name: str) -> str:
    values = [v for k, v in reply_headers if k.lower() == name]
    assert len(values) == 1, (name, reply_headers)
    return values[0]


# =========================================================================================
# _driver: one flow, run blocking or awaited
# =========================================================================================


def _sync_double(x: int) -> int:
    return 2 * x


async def _async_double(x: int) -> int:
    return 2 * x


def _sync_fail(message: str) -> int:
    raise LookupError(message)


async def _async_fail(message: str) -> int:
    raise LookupError(message)


def _doubling_flow(x: int) -> Flow[int]:
    a: int = yield Op(_sync_double, _async_double, x)
    b: int = yield Op(_sync_double, _async_double, a)
    return a + b


def _recovering_flow() -> Flow[str]:
    try:
        yield Op(_sync_fail, _async_fail, "store down")
    except LookupError as exc:
        after = yield Op(_sync_double, _async_double, 21)
        return f"recovered from {exc} with {after}"
    return "not reached"


def _careless_flow() -> Flow[str]:
    yield Op(_sync_fail, _async_fail, "nobody catches this")
    return "not reached"


def test_run_sync_sends_results_and_returns_the_flow_value() -> None:
    assert run_sync(_doubling_flow(3)) == 6 + 12


def test_run_async_gives_the_same_result_as_run_sync() -> None:
    assert asyncio.run(run_async(_doubling_flow(3))) == run_sync(_doubling_flow(3))


def test_exception_of_an_op_is_thrown_back_into_the_flow_sync_and_async() -> None:
    expected = "recovered from store down with 42"
    assert run_sync(_recovering_flow()) == expected
    assert asyncio.run(run_async(_recovering_flow())) == expected


def test_exception_the_flow_does_not_catch_propagates_sync() -> None:
    with pytest.raises(LookupError, match="nobody catches this"):
        run_sync(_careless_flow())


def test_exception_the_flow_does_not_catch_propagates_async() -> None:
    with pytest.raises(LookupError, match="nobody catches this"):
        asyncio.run(run_async(_careless_flow()))


def test_exception_raised_by_the_flow_itself_propagates() -> None:
    def flow() -> Flow[None]:
        yield Op(_sync_double, _async_double, 1)
        raise PermissionError("decided no")

    with pytest.raises(PermissionError, match="decided no"):
        run_sync(flow())
    with pytest.raises(PermissionError, match="decided no"):
        asyncio.run(run_async(flow()))


def test_sync_runner_calls_only_sync_functions_and_async_runner_only_async() -> None:
    calls: list[str] = []

    def sync_fn(tag: str) -> str:
        calls.append(f"sync:{tag}")
        return tag

    async def async_fn(tag: str) -> str:
        calls.append(f"async:{tag}")
        return tag

    def flow() -> Flow[str]:
        got = yield Op(sync_fn, async_fn, "x")
        return str(got)

    assert run_sync(flow()) == "x"
    assert asyncio.run(run_async(flow())) == "x"
    assert calls == ["sync:x", "async:x"]


def test_done_is_a_flow_without_io() -> None:
    assert run_sync(done(7)) == 7
    assert asyncio.run(run_async(done("v"))) == "v"


def test_flow_returning_none_without_ops() -> None:
    def flow() -> Generator[Op, Any, None]:
        yield from ()

    assert run_sync(flow()) is None


def test_op_repr_names_the_sync_function() -> None:
    assert "_sync_double" in repr(Op(_sync_double, _async_double, 1))


# =========================================================================================
# http: RequestView, cookies, query, replies
# =========================================================================================


def _scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "scheme": "https",
                             "path": "/", "query_string": b"", "headers": [],
                             "client": ("10.0.0.7", 5555), "server": ("app.test", 443)}
    scope.update(overrides)
    return scope


def test_from_scope_folds_repeated_headers_with_comma() -> None:
    view = RequestView.from_scope(_scope(headers=[
        (b"Host", b"App.Test"), (b"Accept", b"text/html"), (b"accept", b"application/json"),
    ]))
    assert view.headers["accept"] == "text/html, application/json"
    assert view.host == "app.test"
    assert view.origin == "https://app.test"
    assert view.client == "10.0.0.7"


def test_from_scope_joins_repeated_cookie_headers_with_semicolon() -> None:
    view = RequestView.from_scope(_scope(headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")]))
    assert view.headers["cookie"] == "a=1; b=2"
    assert view.cookies == {"a": "1", "b": "2"}


@pytest.mark.parametrize(("scheme", "expected"), [("ws", "http"), ("wss", "https")])
def test_from_scope_maps_websocket_schemes(scheme: str, expected: str) -> None:
    view = RequestView.from_scope(_scope(type="websocket", scheme=scheme, method=None))
    assert view.scheme == expected
    assert view.websocket is True
    assert view.method == "GET"


def test_from_scope_websocket_without_scheme_is_http() -> None:
    scope = _scope(type="websocket")
    del scope["scheme"]
    assert RequestView.from_scope(scope).scheme == "http"


def test_from_scope_without_host_header_uses_server() -> None:
    assert RequestView.from_scope(_scope()).host == "app.test:443"
    assert RequestView.from_scope(_scope(server=("/tmp/sock", None))).host == "/tmp/sock"
    assert RequestView.from_scope(_scope(server=None)).host == ""


def test_from_scope_defaults() -> None:
    view = RequestView.from_scope({"type": "http", "method": "post"})
    assert (view.method, view.scheme, view.path, view.query_string, view.client) == \
        ("POST", "http", "/", "", "")


def test_from_environ_reads_headers_content_type_and_path() -> None:
    environ = {
        "REQUEST_METHOD": "post", "wsgi.url_scheme": "https", "HTTP_HOST": "App.Test",
        "HTTP_X_REQUESTED_WITH": "XMLHttpRequest", "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "12", "SCRIPT_NAME": "/app", "PATH_INFO": "/x",
        "QUERY_STRING": "a=1", "REMOTE_ADDR": "10.1.2.3",
    }
    view = RequestView.from_environ(environ)
    assert view.method == "POST"
    assert view.host == "app.test"
    assert view.path == "/app/x"
    assert view.headers["x-requested-with"] == "XMLHttpRequest"
    assert view.headers["content-type"] == "application/json"
    assert view.headers["content-length"] == "12"
    assert view.client == "10.1.2.3"
    assert view.query() == {"a": ["1"]}


def test_from_environ_decodes_path_info_latin1_as_utf8() -> None:
    wire = "/caf\u00e9/\u65e5".encode().decode("latin-1")   # what PEP 3333 servers hand over
    view = RequestView.from_environ({"PATH_INFO": wire})
    assert view.path == "/caf\u00e9/\u65e5"


def test_from_environ_keeps_path_that_is_not_utf8() -> None:
    view = RequestView.from_environ({"PATH_INFO": "/\u00ff"})   # byte 0xFF alone
    assert view.path == "/\u00ff"


def test_from_environ_without_host_uses_server_name_and_port() -> None:
    view = RequestView.from_environ({"SERVER_NAME": "App.Test", "SERVER_PORT": "8080"})
    assert view.host == "app.test:8080"
    assert view.path == "/"
    assert view.method == "GET"
    assert view.scheme == "http"


def test_parse_cookies_first_of_same_name_wins() -> None:
    assert parse_cookies("sid=host-own; sid=planted-by-parent") == {"sid": "host-own"}


def test_parse_cookies_strips_quotes_and_spaces() -> None:
    assert parse_cookies(' a = "quoted" ;b=plain; c="') == {"a": "quoted", "b": "plain",
                                                           "c": '"'}


def test_parse_cookies_skips_malformed_pairs() -> None:
    assert parse_cookies("novalue; =orphan; ok=1;;  ; x=a=b") == {"ok": "1", "x": "a=b"}


def test_parse_cookies_empty_and_oversize_give_nothing() -> None:
    assert parse_cookies("") == {}
    big = "a=" + "x" * MAX_COOKIE_HEADER
    assert parse_cookies(big) == {}
    just_fits = "a=" + "x" * (MAX_COOKIE_HEADER - 2)
    assert parse_cookies(just_fits) == {"a": "x" * (MAX_COOKIE_HEADER - 2)}


def _view(query: str = "", method: str = "GET", **headers: str) -> RequestView:
    return RequestView(method=method, scheme="https", host="app.test", path="/",
                       query_string=query, headers={k.replace("_", "-"): v
                                                    for k, v in headers.items()},
                       client="")


def test_query_keeps_duplicates_in_order_and_blank_values() -> None:
    assert _view("a=1&b=&a=2&a=3").query() == {"a": ["1", "2", "3"], "b": [""]}


def test_query_decodes_percent_and_plus() -> None:
    assert _view("q=a+b%2Fc&r=%E2%9C%93").query() == {"q": ["a b/c"], "r": ["\u2713"]}


def test_query_overlong_gives_nothing() -> None:
    assert _view("a=" + "x" * MAX_QUERY).query() == {}
    assert _view("a=" + "x" * (MAX_QUERY - 2)).query() == {"a": ["x" * (MAX_QUERY - 2)]}


def test_query_more_than_64_fields_gives_nothing() -> None:
    sixty_four = "&".join(f"f{i}=v" for i in range(64))
    assert len(_view(sixty_four).query()) == 64
    sixty_five = "&".join(f"f{i}=v" for i in range(65))
    assert _view(sixty_five).query() == {}


def test_query_with_semicolons_never_raises() -> None:
    assert _view(";" * 100).query() == {}


@pytest.mark.parametrize(("method", "headers", "expected"), [
    ("GET", {"accept": "text/html,application/xhtml+xml"}, True),
    ("HEAD", {"accept": "text/html"}, True),
    ("GET", {"accept": "text/html", "sec-fetch-mode": "navigate"}, True),
    ("GET", {"accept": "application/json"}, False),
    ("GET", {}, False),
    ("POST", {"accept": "text/html"}, False),
    ("GET", {"accept": "text/html", "x-requested-with": "XMLHttpRequest"}, False),
    ("GET", {"accept": "text/html", "sec-fetch-mode": "cors"}, False),
    ("GET", {"accept": "text/html", "sec-fetch-mode": "no-cors"}, False),
])
def test_wants_html(method: str, headers: dict[str, str], expected: bool) -> None:
    view = RequestView(method=method, scheme="https", host="h", path="/", query_string="",
                       headers=headers, client="")
    assert view.wants_html is expected


def test_websocket_never_wants_html() -> None:
    view = RequestView.from_scope(_scope(type="websocket", scheme="wss",
                                         headers=[(b"accept", b"text/html")]))
    assert view.wants_html is False


def test_html_reply_escapes_title_and_message_but_not_body_html() -> None:
    reply = html_reply(403, "<b>T</b>", "a & <script>x</script>", body_html="<p id=raw></p>")
    page = reply.body.decode()
    assert reply.status == 403
    assert "<b>T</b>" not in page and "&lt;b&gt;T&lt;/b&gt;" in page
    assert "<script>" not in page and "a &amp; &lt;script&gt;" in page
    assert "<p id=raw></p>" in page
    assert header(reply.headers, "content-type") == "text/html; charset=utf-8"
    assert header(reply.headers, "cache-control") == "no-store"
    assert header(reply.headers, "x-content-type-options") == "nosniff"


def test_html_reply_csp_hash_matches_the_inline_style() -> None:
    reply = html_reply(200, "t", "m")
    styles = re.findall(r"<style>(.*?)</style>", reply.body.decode(), re.S)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    csp = header(reply.headers, "content-security-policy")
    assert f"style-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp


def test_html_reply_extra_headers_come_last() -> None:
    reply = html_reply(200, "t", "m", headers=[("set-cookie", "a=1")])
    assert reply.headers[-1] == ("set-cookie", "a=1")


def test_json_reply() -> None:
    reply = json_reply(401, {"error": "login_required", "u": "\u00e9</script>"},
                       headers=[("www-authenticate", "Bearer")])
    assert reply.status == 401
    assert json.loads(reply.body) == {"error": "login_required", "u": "\u00e9</script>"}
    assert reply.body.isascii()
    assert header(reply.headers, "content-type") == "application/json"
    assert header(reply.headers, "cache-control") == "no-store"
    assert header(reply.headers, "www-authenticate") == "Bearer"


def test_redirect_reply() -> None:
    reply = redirect_reply("/next?x=1", headers=[("set-cookie", "a=1")])
    assert reply.status == 302
    assert header(reply.headers, "location") == "/next?x=1"
    assert header(reply.headers, "cache-control") == "no-store"
    assert reply.body == b""
    assert redirect_reply("/", status=303).status == 303


def test_reply_with_headers_returns_a_new_reply() -> None:
    reply = redirect_reply("/")
    more = reply.with_headers([("x-a", "1")])
    assert ("x-a", "1") in more.headers
    assert ("x-a", "1") not in reply.headers


# =========================================================================================
# identity
# =========================================================================================


def test_identity_from_claims_reads_the_usual_claims() -> None:
    ident = Identity.from_claims({"sub": "alice", "email": "a@example.test", "name": "Alice",
                                  "groups": ["admins", "staff"]}, auth_level=2)
    assert (ident.sub, ident.email, ident.name, ident.groups) == \
        ("alice", "a@example.test", "Alice", ("admins", "staff"))
    assert ident.is_authenticated is True
    assert ident.identity == "alice"
    assert ident.two_factor is True


@pytest.mark.parametrize(("value", "expected"), [
    ("admins", ("admins",)),
    ("", ()),
    (["a", 1, None, "", "b", ["nested"]], ("a", "b")),
    (("x", "y"), ("x", "y")),
    ({"admins": True}, ()),
    (42, ()),
    (None, ()),
])
def test_groups_claim_is_normalised(value: object, expected: tuple[str, ...]) -> None:
    assert claims_groups(value) == expected
    assert Identity.from_claims({"sub": "s", "groups": value}).groups == expected


def test_display_name_falls_back_to_username_email_then_sub() -> None:
    assert Identity.from_claims({"sub": "s", "name": "N", "email": "e@x"}).display_name == "N"
    assert Identity.from_claims({"sub": "s", "preferred_username": "pu",
                                 "email": "e@x"}).display_name == "pu"
    assert Identity.from_claims({"sub": "s", "email": "e@x"}).display_name == "e@x"
    assert Identity.from_claims({"sub": "s"}).display_name == "s"


def test_non_string_name_and_email_are_ignored() -> None:
    ident = Identity.from_claims({"sub": 12, "name": ["x"], "email": {"a": 1}})
    assert (ident.sub, ident.name, ident.email) == ("12", "", "")
    assert ident.display_name == "12"


def test_identity_claims_are_an_immutable_copy() -> None:
    source = {"sub": "s", "extra": 1}
    ident = Identity.from_claims(source)
    source["extra"] = 2
    assert ident.claims["extra"] == 1
    with pytest.raises(TypeError):
        ident.claims["extra"] = 3  # type: ignore[index]


def test_identity_equality_and_hash() -> None:
    a = Identity.from_claims({"sub": "s", "email": "e"})
    b = Identity.from_claims({"sub": "s", "email": "e", "other": "ignored"})
    assert a == b and hash(a) == hash(b)
    assert a != Identity.from_claims({"sub": "s", "email": "e"}, auth_level=2)
    assert "s" in repr(a)


def test_anonymous_is_falsy_and_not_authenticated() -> None:
    assert not ANONYMOUS
    assert ANONYMOUS.is_authenticated is False
    assert ANONYMOUS.display_name == "" and ANONYMOUS.groups == ()
    assert repr(ANONYMOUS) == "ANONYMOUS"


def test_auth_scopes_of() -> None:
    assert AuthScopes.of(None).scopes == ()
    assert AuthScopes.of(Identity(sub="s")).scopes == ("authenticated",)
    assert AuthScopes.of(Identity(sub="s", auth_level=2)).scopes == \
        ("authenticated", "two_factor")


# =========================================================================================
# session model
# =========================================================================================


def make_session(**changes: Any) -> Session:
    fields: dict[str, Any] = {
        "id": new_session_id(), "claims": {"sub": "alice", "groups": ["staff"]},
        "created": NOW, "last_active": NOW, "expires": NOW + 3600,
    }
    fields.update(changes)
    return Session(**fields)


def _record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(make_session().to_bytes())
    record.update(changes)
    return record


def test_session_round_trips_through_bytes() -> None:
    session = make_session(auth_level=2, source="local", remember=True,
                           claims={"sub": "\u00e9ve", "groups": ["a"], "name": "\u65e5"},
                           tokens={"at": "x", "ae": NOW + 60})
    assert Session.from_bytes(session.to_bytes()) == session


def test_session_identity_carries_the_digest_not_the_id() -> None:
    session = make_session(auth_level=2)
    ident = session.identity()
    assert ident.sub == "alice" and ident.auth_level == 2
    assert ident.session_id == session_digest(session.id)
    assert session.id not in ident.session_id


@pytest.mark.parametrize("record", [
    {"v": 2},
    {"v": None},
    {"v": "1"},
], ids=["future-version", "null-version", "string-version"])
def test_from_bytes_refuses_other_versions(record: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="format"):
        Session.from_bytes(json.dumps(_record(**record)).encode())


@pytest.mark.parametrize("missing", ["id", "c", "l", "s", "t0", "ta", "te", "r", "x", "k"])
def test_from_bytes_refuses_missing_fields(missing: str) -> None:
    record = _record()
    del record[missing]
    with pytest.raises(ValueError, match="lacks"):
        Session.from_bytes(json.dumps(record).encode())


@pytest.mark.parametrize("change", [
    {"id": 5},
    {"c": ["sub", "alice"]},
    {"c": "alice"},
    {"c": {"name": "no sub"}},
    {"c": {"sub": 7}},
    {"l": "1"},
    {"l": 1.0},
    {"l": True},
    {"s": None},
    {"t0": "now"},
    {"ta": None},
    {"te": True},
    {"t0": False},
    {"x": 1},
    {"k": []},
], ids=lambda c: "-".join(f"{k}={v!r}" for k, v in c.items()))
def test_from_bytes_refuses_wrong_types(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="wrong type"):
        Session.from_bytes(json.dumps(_record(**change)).encode())


def test_from_bytes_refuses_non_bool_remember() -> None:
    with pytest.raises(ValueError):
        Session.from_bytes(json.dumps(_record(r="no")).encode())


@pytest.mark.parametrize("data", [
    b"",
    b"[]",
    b"null",
    b"not json",
    b'{"v":1,"v":1}',
    b'{"v":1,"id":"a","id":"b"}',
    b'{"v":NaN}',
    b'{"v":1,"t0":Infinity}',
    b'{"v":1,"t0":1e999}',
    b"\xff\xfe{}",
    b'{"v":1,"c":"\xe9"}',
    b"[" * 100 + b"]" * 100,
    b'{"v":1,"k":' + b'{"a":' * 80 + b"1" + b"}" * 80 + b"}",
    b"[" * 100_000,
], ids=["empty", "list", "null", "garbage", "dup-v", "dup-id", "nan", "infinity",
        "float-overflow", "bom-utf16", "latin1-byte", "deep-list", "deep-object",
        "very-deep-unclosed"])
def test_from_bytes_refuses_hostile_bytes_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        Session.from_bytes(data)


def test_from_bytes_refuses_duplicate_key_in_an_otherwise_valid_record() -> None:
    good = make_session().to_bytes()
    doubled = good[:-1] + b',"id":"' + new_session_id().encode() + b'"}'
    with pytest.raises(ValueError):
        Session.from_bytes(doubled)


_json_leaf = st.none() | st.booleans() | st.integers() | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
_json = st.recursive(_json_leaf, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=4), children, max_size=4),
                     max_leaves=12)
_FIELDS = ["v", "id", "c", "l", "s", "t0", "ta", "te", "r", "x", "k"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_from_bytes_on_arbitrary_bytes_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        Session.from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(_json)
def test_from_bytes_on_arbitrary_json_raises_only_value_error(value: Any) -> None:
    with contextlib.suppress(ValueError):
        Session.from_bytes(json.dumps(value).encode())


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=4))
def test_from_bytes_on_mutated_records_raises_only_value_error(
        changes: dict[str, Any]) -> None:
    record = _record(**changes)
    try:
        session = Session.from_bytes(json.dumps(record).encode())
    except ValueError:
        return
    # Whatever is accepted must be usable by the manager without raising.
    assert isinstance(session.sub, str)
    session.expired_reason(NOW, 300.0)
    session.ends_at(300.0)
    session.identity()


def test_ends_at_without_remember_is_the_earlier_of_inactivity_and_expiry() -> None:
    session = make_session(last_active=NOW, expires=NOW + 3600)
    assert session.ends_at(300) == NOW + 300
    assert session.ends_at(7200) == NOW + 3600


def test_ends_at_with_remember_is_the_absolute_expiry() -> None:
    assert make_session(remember=True, expires=NOW + 86400).ends_at(300) == NOW + 86400


def test_expired_reason() -> None:
    session = make_session(last_active=NOW, expires=NOW + 3600)
    assert session.expired_reason(NOW + 299, 300) is None
    assert session.expired_reason(NOW + 300, 300) == "inactive"
    assert session.expired_reason(NOW + 3600, 7200) == "expired"
    remembered = session.evolve(remember=True)
    assert remembered.expired_reason(NOW + 3599, 300) is None
    assert remembered.expired_reason(NOW + 3600, 300) == "expired"


def test_evolve_makes_a_new_record() -> None:
    session = make_session()
    later = session.evolve(last_active=NOW + 10)
    assert later.last_active == NOW + 10 and session.last_active == NOW
    assert later.id == session.id and later.csrf == session.csrf


def test_identity_claims_keeps_only_identity_claims() -> None:
    out = identity_claims({"sub": "s", "email": "e", "iss": "https://idp", "aud": "x",
                           "nonce": "n", "groups": ["g"]})
    assert out == {"sub": "s", "email": "e", "email_verified": False, "groups": ["g"]}


def test_identity_claims_renames_the_groups_claim() -> None:
    out = identity_claims({"sub": "s", "roles": ["r1", 2, "r2"], "groups": ["ignored"]},
                          "roles")
    assert out["groups"] == ["r1", "r2"]


def test_identity_claims_follows_a_nested_claim_path() -> None:
    claims = {"sub": "s", "realm_access": {"roles": ["admin", "user"]}}
    assert identity_claims(claims, "realm_access.roles")["groups"] == ["admin", "user"]
    assert identity_claims({"sub": "s", "realm_access": ["x"]},
                           "realm_access.roles")["groups"] == []
    assert identity_claims({"sub": "s"}, "realm_access.roles")["groups"] == []


def test_identity_claims_string_group_and_missing_groups() -> None:
    assert identity_claims({"sub": "s", "groups": "admins"})["groups"] == ["admins"]
    assert identity_claims({"sub": "s"})["groups"] == []
    assert identity_claims({"sub": "s", "groups": {"a": 1}})["groups"] == []


def test_new_session_id_length_alphabet_and_uniqueness() -> None:
    ids = {new_session_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", i) for i in ids)


def test_session_digest_is_short_stable_and_hides_the_id() -> None:
    sid = new_session_id()
    digest = session_digest(sid)
    assert digest == session_digest(sid)
    assert digest != session_digest(new_session_id())
    assert len(digest) == 16
    assert sid not in digest and digest not in sid


# =========================================================================================
# cookies: names, attributes, chunking
# =========================================================================================


def test_cookie_name_prefixes() -> None:
    assert CookieJarSpec().name("s") == "__Host-s"
    assert CookieJarSpec(domain="example.test").name("s") == "__Secure-s"
    assert CookieJarSpec(secure=False).name("s") == "s"
    assert CookieJarSpec(secure=False, domain="example.test").name("s") == "s"


def _attributes(set_cookie: str) -> tuple[str, dict[str, str]]:
    first, *rest = set_cookie.split("; ")
    attrs = {}
    for part in rest:
        key, _, value = part.partition("=")
        attrs[key] = value
    return first, attrs


def test_set_cookie_host_only() -> None:
    first, attrs = _attributes(CookieJarSpec().set("__Host-s", "v"))
    assert first == "__Host-s=v"
    assert attrs == {"Path": "/", "Secure": "", "HttpOnly": "", "SameSite": "Lax"}


def test_set_cookie_with_domain_max_age_and_same_site() -> None:
    jar = CookieJarSpec(domain="example.test", same_site="Strict")
    _, attrs = _attributes(jar.set("__Secure-s", "v", max_age=120))
    assert attrs["Domain"] == "example.test"
    assert attrs["Max-Age"] == "120"
    assert attrs["SameSite"] == "Strict"
    _, attrs = _attributes(jar.set("__Secure-s", "v", same_site="Lax"))
    assert attrs["SameSite"] == "Lax" and "Max-Age" not in attrs
    _, attrs = _attributes(jar.set("s", "v", max_age=-5))
    assert attrs["Max-Age"] == "0"


def test_set_cookie_insecure_has_no_secure_attribute() -> None:
    _, attrs = _attributes(CookieJarSpec(secure=False).set("s", "v"))
    assert "Secure" not in attrs and "HttpOnly" in attrs


def test_delete_cookie() -> None:
    first, attrs = _attributes(CookieJarSpec().delete("__Host-s"))
    assert first == "__Host-s="
    assert attrs["Max-Age"] == "0"
    assert attrs["Expires"].endswith("1970 00:00:00 GMT")
    assert attrs["Path"] == "/" and "Secure" in attrs and "Domain" not in attrs
    _, attrs = _attributes(CookieJarSpec(domain="example.test").delete("__Secure-s"))
    assert attrs["Domain"] == "example.test"


def _as_cookies(name: str, parts: list[str]) -> dict[str, str]:
    return {(name if i == 0 else f"{name}.{i}"): part for i, part in enumerate(parts)}


def _value(length: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[i % 64] for i in range(length))


@pytest.mark.parametrize(("length", "count"), [
    (1, 1), (CHUNK - 1, 1), (CHUNK, 1), (CHUNK + 1, 2), (2 * CHUNK, 2), (3 * CHUNK, 3),
    (3 * CHUNK + 1, 4), (MAX_CHUNKS * CHUNK, MAX_CHUNKS),
])
def test_split_and_join_round_trip(length: int, count: int) -> None:
    value = _value(length)
    parts = split_chunks(value)
    assert len(parts) == count
    assert all(len(p) <= CHUNK for p in parts[1:])
    if count > 1:
        assert parts[0].startswith(f"{count}.")
    assert join_chunks(_as_cookies("s", parts), "s") == value


def test_split_beyond_max_chunks_raises() -> None:
    with pytest.raises(ValueError, match="at most"):
        split_chunks(_value(MAX_CHUNKS * CHUNK + 1))


def test_join_missing_first_part_gives_none() -> None:
    assert join_chunks({}, "s") is None
    assert join_chunks({"s": ""}, "s") is None
    assert join_chunks({"s.1": "x"}, "s") is None


def test_join_missing_middle_part_gives_none() -> None:
    cookies = _as_cookies("s", split_chunks(_value(3 * CHUNK)))
    del cookies["s.1"]
    assert join_chunks(cookies, "s") is None


def test_join_missing_last_part_gives_none() -> None:
    cookies = _as_cookies("s", split_chunks(_value(3 * CHUNK)))
    del cookies["s.2"]
    assert join_chunks(cookies, "s") is None


def test_join_empty_part_gives_none() -> None:
    cookies = _as_cookies("s", split_chunks(_value(2 * CHUNK)))
    cookies["s.1"] = ""
    assert join_chunks(cookies, "s") is None


def test_join_extra_trailing_part_gives_none() -> None:
    cookies = _as_cookies("s", split_chunks(_value(2 * CHUNK)))
    cookies["s.2"] = "left-over"
    assert join_chunks(cookies, "s") is None


@pytest.mark.parametrize("count", ["0", "1", str(MAX_CHUNKS + 1), "99", "", "x", "-2", "2a"])
def test_join_count_out_of_range_or_not_digits_gives_none(count: str) -> None:
    cookies = {"s": f"{count}.abc", **{f"s.{i}": "x" for i in range(1, 10)}}
    assert join_chunks(cookies, "s") is None


def test_join_count_in_superscript_digits_gives_none() -> None:
    assert join_chunks({"s": "\u00b2.abc", "s.1": "x"}, "s") is None


def test_join_single_value_without_count() -> None:
    assert join_chunks({"s": "plain-value"}, "s") == "plain-value"


def test_chunk_names_present() -> None:
    cookies = {"s": "a", "s.1": "b", "s.3": "c", "other": "d", "s.x": "e",
               f"s.{MAX_CHUNKS}": "f", f"s.{MAX_CHUNKS + 1}": "g"}
    assert chunk_names_present(cookies, "s") == ["s", "s.1", "s.3", f"s.{MAX_CHUNKS}"]
    assert chunk_names_present({"other": "x"}, "s") == []


# =========================================================================================
# memory store
# =========================================================================================


def test_memory_store_save_load_delete() -> None:
    store = MemorySessionStore(clock=Clock(NOW))
    session = make_session()
    store.save(session.id, session, 60)
    assert store.load(session.id) is session
    store.delete(session.id)
    assert store.load(session.id) is None
    store.delete(session.id)   # deleting twice is fine


def test_memory_store_refuses_a_non_positive_bound() -> None:
    with pytest.raises(ValueError):
        MemorySessionStore(max_sessions=0)


def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemorySessionStore(max_sessions=3, clock=Clock(NOW))
    sessions = {name: make_session(id=name) for name in "abcd"}
    for name in "abc":
        store.save(name, sessions[name], 60)
    assert store.load("a") is sessions["a"]          # "a" is now the most recently used
    store.save("d", sessions["d"], 60)
    assert len(store) == 3
    assert store.load("b") is None
    assert [store.load(n) is not None for n in "acd"] == [True, True, True]


def test_memory_store_never_exceeds_its_bound() -> None:
    store = MemorySessionStore(max_sessions=5, clock=Clock(NOW))
    for i in range(50):
        store.save(f"s{i}", make_session(), 60)
        assert len(store) <= 5
    assert store.load("s49") is not None and store.load("s44") is None


def test_memory_store_expires_by_the_injected_clock() -> None:
    clock = Clock(NOW)
    store = MemorySessionStore(clock=clock)
    session = make_session()
    store.save(session.id, session, 10)
    clock.advance(9.999)
    assert store.load(session.id) is session
    clock.advance(0.001)
    assert store.load(session.id) is None
    assert len(store) == 0


def test_memory_store_sweeps_expired_records_on_write() -> None:
    clock = Clock(NOW)
    store = MemorySessionStore(clock=clock)
    for i in range(3):
        store.save(f"old{i}", make_session(), 1)
    clock.advance(5)
    store.save("new", make_session(), 60)
    assert len(store) == 1


def test_memory_store_save_with_non_positive_ttl_deletes() -> None:
    store = MemorySessionStore(clock=Clock(NOW))
    session = make_session()
    store.save(session.id, session, 60)
    store.save(session.id, session, 0)
    assert store.load(session.id) is None and len(store) == 0


def test_memory_store_shared_is_one_store_per_name() -> None:
    name = f"test-{uuid.uuid4().hex}"
    a = MemorySessionStore.shared(name)
    assert MemorySessionStore.shared(name) is a
    assert MemorySessionStore.shared(name + "-other") is not a


def test_memory_store_async_methods() -> None:
    store = MemorySessionStore(clock=Clock(NOW))
    session = make_session()

    async def scenario() -> tuple[Session | None, Session | None]:
        await store.asave(session.id, session, 60)
        got = await store.aload(session.id)
        await store.adelete(session.id)
        return got, await store.aload(session.id)

    assert asyncio.run(scenario()) == (session, None)


def test_memory_store_is_thread_safe() -> None:
    store = MemorySessionStore(max_sessions=10_000, clock=Clock(NOW))
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        mine = [make_session(id=f"t{n}-{i}") for i in range(300)]
        for s in mine:
            store.save(s.id, s, 60)
            if store.load(s.id) is not s:
                errors.append(s.id)
        for s in mine[::2]:
            store.delete(s.id)
        for i, s in enumerate(mine):
            if (store.load(s.id) is None) != (i % 2 == 0):
                errors.append(s.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store) == 8 * 150


def test_memory_store_bound_holds_under_concurrent_writes() -> None:
    store = MemorySessionStore(max_sessions=50, clock=Clock(NOW))
    barrier = threading.Barrier(6)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(200):
            store.save(f"w{n}-{i}", make_session(), 60)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 50


def test_memory_store_claim_expires_at_its_own_deadline_behind_a_longer_one() -> None:
    """A 600 s login mark claimed first must not keep a 30 s refresh claim alive."""
    clock = Clock(NOW)
    store = MemorySessionStore(clock=clock)
    assert store.claim_once("state:login", 600)
    assert store.claim_once("refreshing:x", 30)
    assert not store.claim_once("refreshing:x", 30)
    clock.advance(30)
    assert store.claim_once("refreshing:x", 30)          # its own deadline, not the first's
    assert not store.claim_once("state:login", 600)


def test_memory_store_claim_can_be_released() -> None:
    store = MemorySessionStore(clock=Clock(NOW))
    assert store.claim_once("refreshing:x", 30)
    store.release("refreshing:x")
    assert store.claim_once("refreshing:x", 30)
    store.release("never-claimed")


def test_memory_store_claims_and_revocations_stay_bounded() -> None:
    clock = Clock(NOW)
    store = MemorySessionStore(max_sessions=10, clock=clock)
    store.revoke("kept", 3600)
    for i in range(1000):
        assert store.claim_once(f"c{i}", 5 + i % 7)
        if i % 3 == 0:
            store.release(f"c{i}")
        store.revoke(f"r{i}", 1 + i % 5)
        clock.advance(0.5)
    assert len(store._once) <= 10 and len(store._once._heap) <= 2 * 10 + 64
    assert len(store._revoked) <= 10 and len(store._revoked._expiry) <= 2 * 10 + 64
    assert store.is_revoked("kept")          # the soonest to expire went first


def test_memory_store_one_users_sign_outs_never_evict_anothers(
        caplog: pytest.LogCaptureFixture) -> None:
    """Mallory signs in (remember-me: 30-day marks) and out, again and again: only her own
    marks are dropped, Bob's one-hour mark stays, and the first drop is logged once. (The
    mark closest to its end went first, whoever's it was: Bob's.)"""
    clock = Clock(NOW)
    store = MemorySessionStore(max_sessions=3, clock=clock)
    store.revoke("bob-session", 3600, owner="bob")
    for i in range(1000):
        store.revoke(f"mallory-{i}", 30 * 86400, owner="mallory")
        clock.advance(1)
    assert store.is_revoked("bob-session")
    assert len(store._revoked) == 3 and store.marks_dropped == 998
    assert [store.is_revoked(f"mallory-{i}") for i in (997, 998, 999)] == [False, True, True]
    warnings = [r for r in caplog.records if "memory_max_sessions" in r.getMessage()]
    assert len(warnings) == 1 and "session.redis_url" in warnings[0].getMessage()


def test_memory_store_with_one_mark_per_user_drops_the_closest_to_its_end() -> None:
    """The bound is real: once as many users as it allows hold one mark each, the next
    sign-out drops the mark closest to its end (docs/sessions.md says so)."""
    clock = Clock(NOW)
    store = MemorySessionStore(max_sessions=3, clock=clock)
    for user, ttl in (("a", 300), ("b", 100), ("c", 200), ("d", 400)):
        store.revoke(f"{user}-session", ttl, owner=user)
    assert [store.is_revoked(f"{u}-session") for u in "abcd"] == [True, False, True, True]
    assert store.marks_dropped == 1


def test_memory_store_marks_stay_consistent_and_bounded_under_churn() -> None:
    import random

    rng = random.Random(7)
    clock = Clock(NOW)
    store = MemorySessionStore(max_sessions=50, clock=clock)
    owners = [f"user-{i}" for i in range(20)]
    for step in range(20_000):
        key = f"s{rng.randrange(400)}"
        store.revoke(key, rng.choice((5, 60, 3600)), owner=rng.choice(owners))
        if step % 7 == 0:
            clock.advance(rng.random() * 3)
        marks = store._revoked
        assert len(marks) <= 50
    counts: dict[str, int] = {}
    for _deadline, owner in marks._until.values():
        counts[owner] = counts.get(owner, 0) + 1
    assert counts == marks._count
    assert len(marks._expiry) <= 2 * 50 + 64 and len(marks._largest) <= 2 * len(counts) + 64
    assert all(len(marks._by_owner[o]) <= 2 * c + 8 for o, c in counts.items())


def test_memory_store_revocation_lasts_its_ttl() -> None:
    clock = Clock(NOW)
    store = MemorySessionStore(clock=clock)
    assert store.is_revoked("s") is False
    store.revoke("s", 100)
    store.claim_once("later-short", 1)
    clock.advance(99)
    assert store.is_revoked("s") is True
    clock.advance(1)
    assert store.is_revoked("s") is False

    async def scenario() -> tuple[bool, bool]:
        await store.arevoke("t", 10)
        got = await store.ais_revoked("t")
        await store.arelease("nothing")
        return got, await store.ais_revoked("u")

    assert asyncio.run(scenario()) == (True, False)


# =========================================================================================
# session manager
# =========================================================================================

KEY_TEXT = KeyRing.new_key_text()
RING = KeyRing.from_strings([KEY_TEXT])
CLAIMS = {"sub": "alice", "email": "alice@example.test", "groups": ["staff"]}


def make_manager(clock: Clock, *, store: str = "memory", keyring: KeyRing = RING,
                 session_store: Any = None, **session: Any) -> SessionManager:
    settings = Settings.from_mapping(
        {"keys": {"encryption_keys": [KEY_TEXT]}, "session": {"store": store, **session}},
        environ={})
    return SessionManager(settings.session, keyring=keyring, clock=clock,
                          store=session_store)


def cookie_view(set_cookies: list[str] | dict[str, str]) -> RequestView:
    """The request a browser sends back after receiving ``set_cookies`` (deletions skipped)."""
    if isinstance(set_cookies, dict):
        pairs = [f"{k}={v}" for k, v in set_cookies.items()]
    else:
        pairs = [c.split(";", 1)[0] for c in set_cookies if "Max-Age=0" not in c]
    return RequestView.from_scope(_scope(headers=[(b"cookie", "; ".join(pairs).encode())]))


def jar_of(set_cookies: list[str]) -> dict[str, str]:
    out = {}
    for c in set_cookies:
        name, _, value = c.split(";", 1)[0].partition("=")
        out[name] = value
    return out


def read(manager: SessionManager, view: RequestView) -> SessionRead:
    return run_sync(manager.read(view))


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def test_manager_new_save_read_memory_store(clock: Clock) -> None:
    manager = make_manager(clock)
    session = manager.new(claims=CLAIMS)
    set_cookies = run_sync(manager.save(session, new=True))
    assert len(set_cookies) == 1
    assert set_cookies[0].startswith(f"__Host-secure_mw_session={session.id};")
    assert "Max-Age" not in set_cookies[0]
    got = read(manager, cookie_view(set_cookies))
    assert got.session == session
    assert (got.problem, got.suspicious, got.sent) == (None, False, ["__Host-secure_mw_session"])


def test_manager_async_read_matches_sync(clock: Clock) -> None:
    manager = make_manager(clock)
    session = manager.new(claims=CLAIMS)
    set_cookies = asyncio.run(run_async(manager.save(session, new=True)))
    got = asyncio.run(run_async(manager.read(cookie_view(set_cookies))))
    assert got.session == session == read(manager, cookie_view(set_cookies)).session


def test_manager_new_session_fields(clock: Clock) -> None:
    manager = make_manager(clock, expiration="2h")
    session = manager.new(claims=CLAIMS, auth_level=2, source="local", tokens={"at": "x"})
    assert (session.created, session.last_active, session.expires) == (NOW, NOW, NOW + 7200)
    assert (session.auth_level, session.source, session.remember) == (2, "local", False)
    assert session.tokens == {"at": "x"}
    assert manager.new(claims=CLAIMS).id != session.id


def test_manager_without_cookie_has_no_session(clock: Clock) -> None:
    got = read(make_manager(clock), cookie_view({"other": "x"}))
    assert (got.session, got.problem, got.suspicious, got.sent) == (None, None, False, [])


def test_manager_inactivity_expiry_deletes_the_record(clock: Clock) -> None:
    manager = make_manager(clock, inactivity=300)
    session = manager.new(claims=CLAIMS)
    view = cookie_view(run_sync(manager.save(session, new=True)))
    clock.advance(299)
    assert read(manager, view).session == session
    clock.advance(1)
    got = read(manager, view)
    assert got.session is None
    assert got.problem in ("session inactive", "unknown or expired session")
    assert got.suspicious is False
    assert manager.store is not None and manager.store.load(session.id) is None


def test_manager_inactivity_reported_when_the_store_still_holds_the_record(
        clock: Clock) -> None:
    manager = make_manager(clock, inactivity=300)
    session = manager.new(claims=CLAIMS)
    view = cookie_view(run_sync(manager.save(session, new=True)))
    assert manager.store is not None
    manager.store.save(session.id, session, 10_000)   # a store that keeps it longer
    clock.advance(300)
    got = read(manager, view)
    assert (got.session, got.problem) == (None, "session inactive")
    assert manager.store.load(session.id) is None


def test_manager_absolute_expiry_despite_activity(clock: Clock) -> None:
    manager = make_manager(clock, expiration=3600, inactivity=300)
    session = manager.new(claims=CLAIMS)
    view = cookie_view(run_sync(manager.save(session, new=True)))
    for _ in range(14):     # active every 250 s until NOW + 3500: never inactive
        clock.advance(250)
        current = read(manager, view).session
        assert current is not None
        session = current.evolve(last_active=clock())
        run_sync(manager.save(session, new=True))
    assert manager.store is not None
    manager.store.save(session.id, session, 10_000)   # a store that keeps it longer
    clock.now = NOW + 3600
    got = read(manager, view)
    assert (got.session, got.problem, got.suspicious) == (None, "session expired", False)
    assert manager.store.load(session.id) is None


def test_manager_save_ttl_is_the_time_left(clock: Clock) -> None:
    saved: list[float] = []
    store = MemorySessionStore(clock=clock)

    class Spy:
        holds_objects = True
        indexes = False     # new records go through save (not save_indexed)

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def save(self, sid: str, value: Any, ttl: float, *,
                 only_if_exists: bool = False) -> bool:
            saved.append(ttl)
            return store.save(sid, value, ttl, only_if_exists=only_if_exists)

    manager = make_manager(clock, session_store=Spy(), expiration=3600, inactivity=300)
    session = manager.new(claims=CLAIMS)
    run_sync(manager.save(session, new=True))
    clock.advance(100)
    run_sync(manager.save(session, new=True))
    assert saved == [300, 200]


def test_manager_remember_me_sets_max_age_and_ignores_inactivity(clock: Clock) -> None:
    manager = make_manager(clock, inactivity=300, remember_me="7d")
    session = manager.new(claims=CLAIMS, remember=True)
    assert session.remember is True and session.expires == NOW + 7 * 86400
    set_cookies = run_sync(manager.save(session, new=True))
    assert f"Max-Age={7 * 86400}" in set_cookies[0]
    view = cookie_view(set_cookies)
    clock.advance(3 * 86400)
    assert read(manager, view).session == session
    clock.advance(4 * 86400)
    assert read(manager, view).session is None


def test_manager_remember_me_disabled_in_settings(clock: Clock) -> None:
    manager = make_manager(clock, remember_me=0)
    session = manager.new(claims=CLAIMS, remember=True)
    assert session.remember is False
    assert "Max-Age" not in run_sync(manager.save(session, new=True))[0]


def test_manager_destroy_deletes_record_and_cookie(clock: Clock) -> None:
    manager = make_manager(clock)
    session = manager.new(claims=CLAIMS)
    view = cookie_view(run_sync(manager.save(session, new=True)))
    got = read(manager, view)
    deletions = run_sync(manager.destroy(got.session, sent=got.sent))
    assert len(deletions) == 1 and "Max-Age=0" in deletions[0]
    assert manager.store is not None and manager.store.load(session.id) is None
    again = read(manager, view)
    assert (again.session, again.problem, again.suspicious) == \
        (None, "unknown or expired session", False)


def test_manager_destroy_without_session_still_expires_the_cookie(clock: Clock) -> None:
    manager = make_manager(clock)
    deletions = run_sync(manager.destroy(None))
    assert deletions == [manager.jar.delete("__Host-secure_mw_session")]
    assert manager.forget(["a", "b"]) == [manager.jar.delete("a"), manager.jar.delete("b")]


@pytest.mark.parametrize("value", [
    "short",
    "A" * 42 + "!",
    "A" * 44,
    "A" * 42 + "=",
    "../" + "A" * 40,
])
def test_manager_malformed_id_cookie_is_suspicious_and_not_looked_up(
        clock: Clock, value: str) -> None:
    manager = make_manager(clock)
    flow = manager.read(cookie_view({"__Host-secure_mw_session": value}))
    with pytest.raises(StopIteration) as stop:
        next(flow)      # decided without any store operation
    got = stop.value.value
    assert isinstance(got, SessionRead)
    assert (got.session, got.problem, got.suspicious) == \
        (None, "malformed session cookie", True)


def test_manager_memory_store_refuses_chunked_id_cookies(clock: Clock) -> None:
    manager = make_manager(clock)
    session = manager.new(claims=CLAIMS)
    run_sync(manager.save(session, new=True))
    got = read(manager, cookie_view({"__Host-secure_mw_session": session.id,
                                     "__Host-secure_mw_session.1": "x"}))
    assert got.session is None and got.suspicious is True
    assert got.sent == ["__Host-secure_mw_session", "__Host-secure_mw_session.1"]


def test_manager_unknown_well_formed_id_is_not_suspicious(clock: Clock) -> None:
    got = read(make_manager(clock), cookie_view({"__Host-secure_mw_session": new_session_id()}))
    assert (got.session, got.problem, got.suspicious) == \
        (None, "unknown or expired session", False)


class BytesStore:
    """A server-side store that keeps bytes (as the Redis store does)."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def load(self, session_id: str) -> bytes | None:
        return self.items.get(session_id)

    def save(self, session_id: str, value: bytes, ttl: float, *,
             only_if_exists: bool = False) -> bool:
        assert isinstance(value, bytes) and ttl > 0
        if only_if_exists and session_id not in self.items:
            return False
        self.items[session_id] = value
        return True

    def claim_once(self, token: str, ttl: float) -> bool:
        raise AssertionError("not used here")

    def delete(self, session_id: str) -> None:
        self.items.pop(session_id, None)

    async def aload(self, session_id: str) -> bytes | None:
        return self.load(session_id)

    async def asave(self, session_id: str, value: bytes, ttl: float, *,
                    only_if_exists: bool = False) -> bool:
        return self.save(session_id, value, ttl, only_if_exists=only_if_exists)

    async def aclaim_once(self, token: str, ttl: float) -> bool:
        return self.claim_once(token, ttl)

    async def adelete(self, session_id: str) -> None:
        self.delete(session_id)


def test_manager_with_a_bytes_store_round_trips(clock: Clock) -> None:
    store = BytesStore()
    manager = make_manager(clock, session_store=store)
    session = manager.new(claims=CLAIMS)
    view = cookie_view(run_sync(manager.save(session, new=True)))
    assert isinstance(store.items[session.id], bytes)
    assert read(manager, view).session == session


def _unreadable_manager(clock: Clock, store: BytesStore
                        ) -> tuple[SessionManager, list[str], list[str]]:
    refused: list[str] = []
    unreadable: list[str] = []
    manager = make_manager(clock, session_store=store)
    manager.on_refused = lambda view, problem: refused.append(problem)
    manager.on_unreadable = lambda view, problem: unreadable.append(problem)
    return manager, refused, unreadable


def test_manager_corrupt_record_is_unreadable_not_the_clients_forgery(clock: Clock) -> None:
    """The client holds a random id: a bad record under it is the store's problem."""
    store = BytesStore()
    manager, refused, unreadable = _unreadable_manager(clock, store)
    session = manager.new(claims=CLAIMS)
    view = cookie_view(run_sync(manager.save(session, new=True)))
    store.items[session.id] = b'{"v":1'
    got = read(manager, view)
    assert (got.session, got.problem, got.suspicious) == \
        (None, "session record is corrupt", False)
    assert (refused, unreadable) == ([], ["session record is corrupt"])


def test_manager_record_of_another_id_is_refused(clock: Clock) -> None:
    store = BytesStore()
    manager, refused, unreadable = _unreadable_manager(clock, store)
    victim = manager.new(claims={"sub": "victim"})
    run_sync(manager.save(victim, new=True))
    attacker_id = new_session_id()
    store.items[attacker_id] = store.items[victim.id]    # written by someone in the store
    got = read(manager, cookie_view({"__Host-secure_mw_session": attacker_id}))
    assert (got.session, got.problem, got.suspicious) == \
        (None, "session record under the wrong key", False)
    assert (refused, unreadable) == ([], ["session record under the wrong key"])


def test_manager_malformed_id_is_still_the_clients_problem(clock: Clock) -> None:
    manager, refused, unreadable = _unreadable_manager(clock, BytesStore())
    got = read(manager, cookie_view({"__Host-secure_mw_session": "not-an-id"}))
    assert got.suspicious and (refused, unreadable) == (["malformed session cookie"], [])


def test_manager_needs_touch_interval(clock: Clock) -> None:
    manager = make_manager(clock, inactivity=300)
    assert manager.touch_interval == 30
    assert make_manager(clock, inactivity=3600).touch_interval == 60
    session = manager.new(claims=CLAIMS)
    clock.advance(29.9)
    assert manager.needs_touch(session) is False
    clock.advance(0.1)
    assert manager.needs_touch(session) is True


def test_manager_rotate_keeps_content_under_a_new_id(clock: Clock) -> None:
    manager = make_manager(clock)
    session = manager.new(claims=CLAIMS)
    rotated = manager.rotate(session, auth_level=2)
    assert rotated.id != session.id and rotated.auth_level == 2
    assert rotated.claims == session.claims and rotated.created == session.created


def test_manager_cookie_domain_and_insecure_names(clock: Clock) -> None:
    settings = Settings.from_mapping(
        {"session": {"cookie_domain": "example.test", "cookie_name": "sid"}}, environ={})
    manager = SessionManager(settings.session, keyring=RING, clock=clock)
    assert manager.cookie_name == "__Secure-sid"
    insecure = SessionManager(settings.session, keyring=RING, clock=clock, secure=False)
    assert insecure.cookie_name == "sid"
    assert "Secure" not in run_sync(insecure.save(insecure.new(claims=CLAIMS), new=True))[0]


# -- cookie store -----------------------------------------------------------------------------


def big_claims(groups: int = 600) -> dict[str, Any]:
    return {"sub": "alice", "groups": [f"group-{i:04d}-{os.urandom(4).hex()}"
                                       for i in range(groups)]}


def test_cookie_store_small_session_is_one_cookie(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    assert manager.store is None
    session = manager.new(claims=CLAIMS)
    set_cookies = run_sync(manager.save(session, new=True))
    assert len(set_cookies) == 1
    assert session.id not in set_cookies[0]        # the record is encrypted
    assert "alice" not in set_cookies[0]
    got = read(manager, cookie_view(set_cookies))
    assert got.session == session and got.suspicious is False


def test_cookie_store_large_session_is_split_and_reads_back(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    session = manager.new(claims=big_claims())
    set_cookies = run_sync(manager.save(session, new=True))
    assert len(set_cookies) >= 3
    names = list(jar_of(set_cookies))
    assert names == ["__Host-secure_mw_session"] + \
        [f"__Host-secure_mw_session.{i}" for i in range(1, len(names))]
    assert all(len(c.split(";", 1)[0]) < 4000 for c in set_cookies)
    got = read(manager, cookie_view(set_cookies))
    assert got.session == session
    assert got.sent == names


def test_cookie_store_session_of_max_chunks_reads_back(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    claims = big_claims(0)
    session = manager.new(claims=claims)
    # Grow the claims until the cookie needs the largest number of parts allowed.
    filler = ""
    while len(run_sync(manager.save(session, new=True))) < MAX_CHUNKS:
        filler += os.urandom(300).hex()
        session = session.evolve(claims={**claims, "name": filler})
    set_cookies = run_sync(manager.save(session, new=True))
    assert len(set_cookies) == MAX_CHUNKS
    assert read(manager, cookie_view(set_cookies)).session == session


@pytest.mark.parametrize("drop", ["middle", "last", "first"])
def test_cookie_store_missing_chunk_gives_no_session_and_is_suspicious(
        clock: Clock, drop: str) -> None:
    manager = make_manager(clock, store="cookie")
    jar = jar_of(run_sync(manager.save(manager.new(claims=big_claims()), new=True)))
    names = list(jar)
    assert len(names) >= 3
    del jar[{"first": names[0], "middle": names[1], "last": names[-1]}[drop]]
    got = read(manager, cookie_view(jar))
    assert got.session is None and got.suspicious is True
    assert got.problem == "incomplete session cookie"


def test_cookie_store_chunks_of_two_sessions_do_not_mix(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    first = jar_of(run_sync(manager.save(manager.new(claims=big_claims()), new=True)))
    second = jar_of(run_sync(manager.save(manager.new(claims=big_claims()), new=True)))
    assert len(first) == len(second)
    mixed = dict(first)
    last = list(first)[-1]
    mixed[last] = second[last]
    got = read(manager, cookie_view(mixed))
    assert (got.session, got.problem, got.suspicious) == \
        (None, "session cookie does not decrypt", True)


def test_cookie_store_cookie_of_another_name_does_not_decrypt(clock: Clock) -> None:
    one = make_manager(clock, store="cookie", cookie_name="app_one")
    two = make_manager(clock, store="cookie", cookie_name="app_two")
    value = jar_of(run_sync(one.save(one.new(claims=CLAIMS), new=True)))["__Host-app_one"]
    got = read(two, cookie_view({"__Host-app_two": value}))
    assert (got.session, got.problem, got.suspicious) == \
        (None, "session cookie does not decrypt", True)


def test_cookie_store_tampered_cookie_does_not_decrypt(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    saved = run_sync(manager.save(manager.new(claims=CLAIMS), new=True))
    value = jar_of(saved)[manager.cookie_name]
    middle = len(value) // 2
    flipped = value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1:]
    got = read(manager, cookie_view({manager.cookie_name: flipped}))
    assert got.session is None and got.suspicious is True


def test_cookie_store_rotated_key_ring_still_reads(clock: Clock) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    old = make_manager(clock, store="cookie", keyring=KeyRing([old_key]))
    session = old.new(claims=CLAIMS)
    view = cookie_view(run_sync(old.save(session)))
    rotated = make_manager(clock, store="cookie", keyring=KeyRing([new_key, old_key]))
    assert read(rotated, view).session == session
    # ...and a save under the rotated ring is readable only by rings holding the new key.
    new_view = cookie_view(run_sync(rotated.save(session)))
    assert read(rotated, new_view).session == session
    assert read(old, new_view).suspicious is True
    dropped = make_manager(clock, store="cookie", keyring=KeyRing([new_key]))
    assert read(dropped, view).problem == "session cookie does not decrypt"


def test_cookie_store_expiry(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie", inactivity=300)
    view = cookie_view(run_sync(manager.save(manager.new(claims=CLAIMS), new=True)))
    clock.advance(300)
    got = read(manager, view)
    assert (got.session, got.problem, got.suspicious) == (None, "session inactive", False)


def test_cookie_store_shrinking_session_deletes_left_over_chunks(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    big = run_sync(manager.save(manager.new(claims=big_claims()), new=True))
    sent = read(manager, cookie_view(big)).sent
    assert len(sent) >= 3
    small = run_sync(manager.save(manager.new(claims=CLAIMS), sent=sent))
    assert len(small) == len(sent)
    assert small[0].startswith(f"{manager.cookie_name}=") and "Max-Age=0" not in small[0]
    assert [c.split("=", 1)[0] for c in small[1:]] == sent[1:]
    assert all("Max-Age=0" in c for c in small[1:])


def test_cookie_store_destroy_expires_every_chunk(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    view = cookie_view(run_sync(manager.save(manager.new(claims=big_claims()), new=True)))
    got = read(manager, view)
    deletions = run_sync(manager.destroy(got.session, sent=got.sent))
    assert [c.split("=", 1)[0] for c in deletions] == got.sent
    assert all("Max-Age=0" in c for c in deletions)


def test_cookie_store_session_too_large_raises_on_save(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    session = manager.new(claims={"sub": "s", "name": os.urandom(MAX_CHUNKS * CHUNK).hex()})
    with pytest.raises(StoreUnavailable, match="too large for the cookie store"):
        run_sync(manager.save(session, new=True))


def test_cookie_store_superscript_count_is_suspicious_not_an_exception(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie")
    view = RequestView.from_scope(_scope(headers=[
        (b"cookie", b"__Host-secure_mw_session=\xb2.abc; __Host-secure_mw_session.1=def")]))
    got = read(manager, view)
    assert got.session is None and got.suspicious is True


@pytest.mark.parametrize(("claims", "assume", "verified"), [
    ({"email": "e@x.test", "email_verified": True}, False, True),
    ({"email": "e@x.test", "email_verified": "true"}, False, True),     # Cognito's string
    ({"email": "e@x.test", "email_verified": "TRUE "}, False, True),
    ({"email": "e@x.test", "email_verified": False}, True, False),      # explicit false stays
    ({"email": "e@x.test", "email_verified": "false"}, True, False),
    ({"email": "e@x.test", "email_verified": 1}, False, False),
    ({"email": "e@x.test"}, False, False),
    ({"email": "e@x.test"}, True, True),                                # assume_email_verified
])
def test_identity_claims_give_every_email_a_verified_flag(claims: dict[str, Any], assume: bool,
                                                          verified: bool) -> None:
    out = identity_claims({"sub": "s", **claims}, assume_email_verified=assume)
    assert out["email_verified"] is verified
    identity = Identity.from_claims(out)
    assert (identity.email, identity.email_verified) == ("e@x.test", verified)
    assert identity.as_dict()["email_verified"] is verified
    assert "email_verified" not in identity_claims({"sub": "s"}, assume_email_verified=True)


def test_a_new_email_from_the_provider_never_inherits_the_old_flag() -> None:
    old = {"sub": "s", "email": "old@x.test", "email_verified": True, "groups": []}
    fresh = identity_claims({"sub": "s", "email": "new@x.test"})        # no claim this time
    merged = {**old, **fresh}
    assert (merged["email"], merged["email_verified"]) == ("new@x.test", False)


def test_a_local_session_email_counts_as_verified_even_from_an_older_record() -> None:
    def session(source: str, claims: dict[str, Any]) -> Session:
        return Session(id=new_session_id(), claims=claims, source=source, created=0.0,
                       last_active=0.0, expires=10.0)

    older = {"sub": "alice", "email": "alice@x.test", "groups": []}   # written before the flag
    assert session("local", older).identity().email_verified is True
    assert session("local", {**older, "email_verified": False}).identity().email_verified \
        is False
    assert session("oidc", older).identity().email_verified is False
def test_cookie_store_destroyed_session_stays_ended_for_every_copy(clock: Clock) -> None:
    manager = make_manager(clock, store="cookie", inactivity="10m")
    session = manager.new(claims=CLAIMS)
    first = cookie_view(run_sync(manager.save(session, new=True)) or [])
    clock.advance(90)
    later = cookie_view(run_sync(manager.save(session.evolve(last_active=clock()))) or [])
    assert read(manager, first).session is not None        # (now in the decode cache)
    run_sync(manager.destroy(session))
    for view in (first, later):
        got = read(manager, view)
        assert (got.session, got.problem, got.suspicious) == \
            (None, "session ended (signed out or refused)", False)
    clock.advance(session.expires - clock() - 1)            # until the session's own end
    assert read(manager, later).session is None
    # A new login is a new id: not affected.
    fresh = manager.new(claims=CLAIMS)
    assert read(manager, cookie_view(run_sync(manager.save(fresh, new=True)) or [])).session


def test_cookie_store_revocations_are_process_wide_with_the_real_clock() -> None:
    settings = make_manager(Clock(), store="cookie",
                            cookie_name=f"test_{uuid.uuid4().hex}").settings
    a = SessionManager(settings, keyring=RING)
    b = SessionManager(settings, keyring=RING)
    session = a.new(claims=CLAIMS)
    view = cookie_view(run_sync(a.save(session, new=True)) or [])
    assert read(b, view).session is not None
    run_sync(a.destroy(session))
    assert read(b, view).session is None


def test_manager_reports_refused_cookies_to_its_hook(clock: Clock) -> None:
    seen: list[str] = []
    settings = make_manager(clock, store="cookie").settings
    manager = SessionManager(settings, keyring=RING, clock=clock,
                             on_refused=lambda view, problem: seen.append(problem))
    other = make_manager(clock, store="cookie", keyring=KeyRing.generate())
    value = jar_of(run_sync(other.save(other.new(claims=CLAIMS), new=True)))
    assert read(manager, cookie_view(value)).session is None
    assert read(manager, cookie_view({manager.cookie_name: ""})).session is None
    assert seen == ["session cookie does not decrypt", "incomplete session cookie"]
    memory = SessionManager(make_manager(clock).settings, keyring=RING, clock=clock,
                            on_refused=lambda view, problem: seen.append(problem))
    read(memory, cookie_view({memory.cookie_name: "x" * 43}))     # unknown: not forged
    read(memory, cookie_view({memory.cookie_name: "x!"}))
    assert seen[2:] == ["malformed session cookie"]


# -- the claims a session keeps for the access rules; where email_verified comes from --------


def test_identity_claims_keep_the_claims_the_rules_name() -> None:
    from secure_mw.authz.rules import claim_names
    from secure_mw.settings import Settings

    rules = Settings.from_mapping({"access_control": {"rules": [
        {"allow": {"or": [{"authenticated_user": True}]},
         "deny": {"or": [{"claim/department": "contractors"},
                         {"not": [{"claim/org/unit": "core"}]}]}}]}}, environ={})
    names = claim_names(rules.access_control)
    assert names == {"department", "org"}
    provider = {"sub": "c", "department": "contractors", "org": {"unit": "ext"},
                "iss": "https://idp", "address": {"street": "x"}}
    kept = identity_claims(provider, keep=names)
    assert kept == {"sub": "c", "department": "contractors", "org": {"unit": "ext"},
                    "groups": []}
    assert identity_claims(provider) == {"sub": "c", "groups": []}    # nothing named: dropped
    identity = Identity.from_claims(kept)
    assert identity.claims["department"] == "contractors"


def test_the_kept_claims_are_bounded() -> None:
    from secure_mw.session.model import MAX_KEPT_CLAIMS, ClaimsTooLarge

    near = "x" * (MAX_KEPT_CLAIMS - len('{"roles":""}'))
    assert identity_claims({"sub": "s", "roles": near}, keep={"roles"})["roles"] == near
    with pytest.raises(ClaimsTooLarge, match=r"claims the access rules read \(roles\)"):
        identity_claims({"sub": "s", "roles": near + "x"}, keep={"roles"})
    with pytest.raises(ClaimsTooLarge):
        identity_claims({"sub": "s", "a": ["y"] * 600, "b": ["z"] * 600}, keep={"a", "b"})


def test_the_claims_named_by_rules_survive_a_session_round_trip() -> None:
    claims = identity_claims({"sub": "c", "department": "contractors"}, keep={"department"})
    session = Session(id=new_session_id(), claims=claims, created=0.0, last_active=0.0,
                      expires=10.0)
    again = Session.from_bytes(session.to_bytes())
    assert again.identity().claims["department"] == "contractors"


@pytest.mark.parametrize(("id_token", "userinfo", "email", "verified"), [
    # userinfo's own address without a flag: unverified, whatever the id_token said
    ({"email": "me@corp.example", "email_verified": True}, {"email": "boss@example.com"},
     "boss@example.com", False),
    # the same address at userinfo without a flag: the id_token's flag stands
    ({"email": "me@corp.example", "email_verified": True}, {"email": "me@corp.example"},
     "me@corp.example", True),
    # userinfo's flag wins for userinfo's address
    ({"email": "a@x.test", "email_verified": True}, {"email": "a@x.test",
                                                     "email_verified": False},
     "a@x.test", False),
    ({"email": "a@x.test"}, {"email": "b@x.test", "email_verified": True}, "b@x.test", True),
    # an id_token's address: its own flag, never userinfo's lone flag
    ({"email": "a@x.test"}, {"email_verified": True}, "a@x.test", False),
    ({"email": "a@x.test", "email_verified": True}, {"name": "A"}, "a@x.test", True),
    ({}, {"email": "b@x.test"}, "b@x.test", False),
])
def test_email_verified_comes_from_the_source_of_the_email(
        id_token: dict[str, Any], userinfo: dict[str, Any], email: str,
        verified: bool) -> None:
    from secure_mw.oidc.core import profile

    merged = profile({"sub": "s", **id_token}, {"sub": "s", **userinfo})
    kept = identity_claims(merged)
    assert (kept["email"], kept["email_verified"]) == (email, verified)
    assert profile({"sub": "s"}, {"sub": "other"})["sub"] == "s"


def test_from_environ_finds_the_same_headers_once_every_key_is_known() -> None:
    """The first request with a key decodes its name; later ones (every key known) take
    the headers from the cache: the same names, values and order, whatever the keys."""
    import random

    rng = random.Random(5)
    keys = ["HTTP_HOST", "HTTP_COOKIE", "HTTP_X_FORWARDED_FOR", "HTTP_ACCEPT", "PATH_INFO",
            "wsgi.url_scheme", "REMOTE_ADDR", "HTTP_X_SECURE_MW_JWT_ASSERTION", "HTTP_A_B",
            "CONTENT_TYPE", "HTTP_" + "X" * 80]     # a name too long to be kept
    for round_ in range(60):
        chosen = rng.sample(keys, rng.randrange(1, len(keys)))
        chosen.append(f"HTTP_X_NEW_{round_ // 2}")  # new once, known the second time
        environ = {key: f"v{i}" for i, key in enumerate(chosen)}
        environ.setdefault("PATH_INFO", "/")
        expected = {key[5:].replace("_", "-").lower(): value
                    for key, value in environ.items() if key.startswith("HTTP_")}
        if "CONTENT_TYPE" in environ:
            expected["content-type"] = environ["CONTENT_TYPE"]
        headers = RequestView.from_environ(environ).headers
        assert headers == expected and list(headers) == list(expected)
