"""Reproductions from the review of the access-rule change (84e2401, f5b382a, 3db0830).

Each finding is a test of the behaviour the docs promise, marked ``xfail(strict=True)``: it
fails on main today and turns into an XPASS (a failure, by strictness) once fixed, so whoever
fixes it removes the mark and moves the test to tests/. The tests without a mark are the
attacks that held. Real servers throughout (review/harness.py).

Run: .venv/bin/python -m pytest review/test_review_authz.py -q
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from review.harness import app_saw, base_config, cookie, raw, serve, settings_of
from review.probe_paths import example
from secure_mw.authz.rules import AccessPolicy
from secure_mw.cli import main as cli
from secure_mw.http import RequestView
from secure_mw.identity import Identity
from secure_mw.session.model import identity_claims
from secure_mw.settings import Settings

ASGI_WSGI = ["uvicorn-httptools", "waitress"]


@pytest.fixture
def tmp() -> Path:
    return Path(tempfile.mkdtemp())


def policy(rules: list[dict[str, Any]]) -> AccessPolicy:
    st = Settings.from_mapping({"access_control": {"rules": rules}}, environ={})
    return AccessPolicy.from_settings(st.access_control)


def view(path: str = "/x", query: str = "", method: str = "GET",
         host: str = "app.example.com") -> RequestView:
    return RequestView(method=method, scheme="https", host=host, path=path, query_string=query,
                       headers={}, client="127.0.0.1")


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli(list(argv))
        except Exception as exc:  # noqa: BLE001 - a traceback is the finding
            return -1, f"{type(exc).__name__}: {exc}"
    return code, out.getvalue()


# -- F1 (high): a domain-scoped gate is skipped by sending another Host -----------------------


@pytest.mark.xfail(strict=True, reason="F1: rules with `domain` are skipped for a foreign Host, "
                   "and the app serves every Host")
@pytest.mark.parametrize("server", ASGI_WSGI)
@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1", "app.example.com:80:80"])
def test_the_documented_layout_refuses_bob_at_admin_whatever_the_host(
        server: str, host: str, tmp: Path) -> None:
    cfg = base_config(tmp, example("layout")["access_control"])
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    alice = cookie(st, "alice", groups=("admins",))       # one factor
    with serve(server, cfg, st) as addr:
        assert raw(addr, "/admin/users", cookie_=bob)[0] == 403          # Host app.example.com
        assert raw(addr, "/admin/users", cookie_=bob, host=host)[0] != 200
        assert raw(addr, "/admin/users", cookie_=alice, host=host)[0] != 200


@pytest.mark.xfail(strict=True, reason="F1b: two Host headers: the rules see 'a, b', Starlette "
                   "routes the first")
def test_two_host_headers_do_not_reach_the_gated_site(tmp: Path) -> None:
    ac = {"default_policy": "deny", "rules": [
        {"domain": ["admin.example.com"], "subject": [["group:admins"]],
         "policy": "authenticated"},
        {"policy": "authenticated"}]}
    cfg = base_config(tmp, ac)
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    with serve("uvicorn-httptools", cfg, st) as addr:
        assert raw(addr, "/settings", cookie_=bob, host="admin.example.com")[0] == 403
        status, _, body = raw(addr, "/settings", cookie_=bob,
                              hosts=["admin.example.com", "www.example.com"])
        seen = app_saw(body)
        assert not (status == 200 and seen and seen["app"] == "admin-site")


# -- F2 (medium): HEAD runs the GET handler but a GET-only gate does not select it ----------


@pytest.mark.xfail(strict=True, reason="F2: methods=['GET'] does not cover HEAD")
@pytest.mark.parametrize("server", ASGI_WSGI)
def test_head_is_gated_like_get(server: str, tmp: Path) -> None:
    ac = {"default_policy": "deny", "rules": [
        {"resources": ["^/admin(/|$)"], "methods": ["GET", "POST"],
         "subject": [["group:admins"]], "policy": "authenticated"},
        {"policy": "authenticated"}]}
    cfg = base_config(tmp, ac)
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    with serve(server, cfg, st) as addr:
        assert raw(addr, "/admin/users", cookie_=bob)[0] == 403
        assert raw(addr, "/admin/users", method="HEAD", cookie_=bob)[0] == 403


# -- F3 (medium): a repeated query key satisfies a permissive condition -----------------------


@pytest.mark.xfail(strict=True, reason="F3: equal holds when some value matches; the app "
                   "reads another one")
@pytest.mark.parametrize("server", ASGI_WSGI)
def test_a_repeated_key_does_not_satisfy_a_bypass_condition(server: str, tmp: Path) -> None:
    ac = {"default_policy": "deny", "rules": [
        {"resources": ["^/export$"], "query": [{"key": "format", "value": "csv"}],
         "policy": "bypass"},
        {"policy": "authenticated"}]}
    cfg = base_config(tmp, ac)
    with serve(server, cfg) as addr:
        assert raw(addr, "/export?format=csv")[0] == 200
        assert raw(addr, "/export?format=pdf")[0] == 401
        for target in ("/export?format=csv&format=pdf", "/export?format=pdf&format=csv"):
            assert raw(addr, target)[0] != 200, target


# -- F4 (medium): deny-lists by email stop denying identities without the flag --------------


@pytest.mark.xfail(strict=True, reason="F4: an email deny rule no longer matches an email "
                   "whose provider sent no email_verified (fail-open after the upgrade)")
@pytest.mark.parametrize("server", ASGI_WSGI)
def test_an_email_deny_rule_denies_the_claimed_email(server: str, tmp: Path) -> None:
    ac = {"default_policy": "deny", "rules": [
        {"subject": ["email:mallory@evil.test"], "policy": "deny"},
        {"allow": {"or": [{"accept": True}]}, "deny": {"or": [{"domain": "evil.test"}]},
         "resources": ["^/blocks(/|$)"]},
        {"policy": "authenticated"}]}
    cfg = base_config(tmp, ac)
    st = settings_of(cfg)
    mallory = cookie(st, "mallory", email="mallory@evil.test")    # no email_verified claim
    with serve(server, cfg, st) as addr:
        assert raw(addr, "/page", cookie_=mallory)[0] == 403
        assert raw(addr, "/blocks", cookie_=mallory)[0] == 403


# -- F5 (medium): under a mount point the rules see another path than the app routes --------


@pytest.mark.xfail(strict=True, reason="F5: resources see SCRIPT_NAME/root_path + path")
def test_the_documented_layout_holds_under_a_mount_point(tmp: Path) -> None:
    import threading

    from werkzeug.serving import make_server

    from review.harness import wsgi_echo
    from secure_mw import wsgi
    from tests.servers import free_port, wait_for_port

    cfg = base_config(tmp, example("layout")["access_control"])
    st = settings_of(cfg)
    inner = wsgi.protect(wsgi_echo, st)

    def mounted(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/app/"):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/app", path[4:]
        return inner(environ, start_response)

    port = free_port()
    srv = make_server("127.0.0.1", port, mounted, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        status, _, body = raw(f"127.0.0.1:{port}", "/app/admin/users",
                              cookie_=cookie(st, "bob", groups=("staff",)))
        seen = app_saw(body)
        assert seen is None or seen["path"] != "/admin/users", (status, seen)
    finally:
        srv.shutdown()
        srv.server_close()


# -- F6 (low): the flavours read a non-UTF-8 path differently ---------------------------------


@pytest.mark.xfail(strict=True, reason="F6: WSGI falls back to latin-1, ASGI servers give U+FFFD")
def test_both_flavours_decide_a_non_utf8_path_alike(tmp: Path) -> None:
    ac = {"default_policy": "deny", "rules": [
        {"resources": [r"^/files/\w+$"], "policy": "bypass"}, {"policy": "authenticated"}]}
    cfg = base_config(tmp, ac)
    st = settings_of(cfg)
    got = {}
    for server in ("uvicorn-httptools", "waitress"):
        with serve(server, cfg, st) as addr:
            got[server] = raw(addr, "/files/%E9")[0]
    assert len(set(got.values())) == 1, got


# -- F7 (low): explain disagrees with the live server -----------------------------------------


def _explain_config(tmp: Path, rules: list[dict[str, Any]]) -> tuple[dict[str, Any], Path]:
    cfg = base_config(tmp, {"default_policy": "deny", "rules": rules},
                      server={"external_url": "https://app.example.com"})
    path = tmp / "secure-mw.toml"
    path.write_text(tomli_w.dumps(cfg))
    return cfg, path


@pytest.mark.xfail(strict=True, reason="F7a: explain's identity has no claims")
def test_explain_agrees_with_the_server_on_claim_criteria(tmp: Path) -> None:
    rules = [{"resources": ["^/v(/|$)"], "allow": {"and": [{"claim/email_verified": True}]}},
             {"policy": "authenticated"}]
    cfg, path = _explain_config(tmp, rules)
    st = settings_of(cfg)
    alice = cookie(st, "alice", email="alice@example.com", email_verified=True)
    with serve("uvicorn-httptools", cfg, st) as addr:
        live = raw(addr, "/v", cookie_=alice)[0]
    code, text = run_cli("explain", "https://app.example.com/v", "--config", str(path),
                         "--no-env", "--user", "alice", "--email", "alice@example.com",
                         "--email-verified")
    assert (live, code) in ((200, 0), (403, 3)), (live, code, text)


@pytest.mark.xfail(strict=True, reason="F7b: explain refuses what the servers decode with U+FFFD, "
                   "and allows what the session layer answers with 404")
@pytest.mark.parametrize("target", ["/p%C0%AF", "/.auth/../p"])
def test_explain_agrees_with_the_server_on_odd_paths(tmp: Path, target: str) -> None:
    cfg, path = _explain_config(tmp, [{"policy": "bypass"}])
    with serve("uvicorn-httptools", cfg) as addr:
        live = raw(addr, target)[0]
    code, text = run_cli("explain", f"https://app.example.com{target}", "--config", str(path),
                         "--no-env")
    assert (live == 200) == (code == 0), (live, code, text)


@pytest.mark.xfail(strict=True, reason="F7c: a URL urlsplit refuses is a traceback")
def test_explain_says_a_bad_url_is_bad_usage(tmp: Path) -> None:
    _, path = _explain_config(tmp, [{"policy": "bypass"}])
    code, text = run_cli("explain", "https://[::1/admin", "--config", str(path), "--no-env")
    assert code == 2, text


# -- F8 (low): warnings that teach users to ignore warnings ----------------------------------


@pytest.mark.xfail(strict=True, reason="F8: '[^?]' and '[/?]' do not look for a '?'")
@pytest.mark.parametrize("pattern", [r"^/files/[^?]+\.pdf$", r"^/api([/?].*)?$"])
def test_no_query_warning_for_a_pattern_that_works_on_paths(pattern: str) -> None:
    p = policy([{"resources": [pattern], "policy": "bypass"}, {"policy": "authenticated"}])
    assert p.evaluate(view("/api"), None, path="/api").effect in ("allow", "login")
    assert p.warnings() == []


# -- F9 (info): case folding and inherited flags ----------------------------------------------


@pytest.mark.xfail(strict=True, reason="F9a: str.lower() folds the Kelvin sign into 'k'")
def test_a_kelvin_sign_is_not_a_k() -> None:
    p = policy([{"subject": ["email:kate@example.com"], "policy": "authenticated"},
                {"policy": "deny"}])
    other = Identity(sub="x", email="\u212aate@example.com", email_verified=True)
    assert p.evaluate(view(), other, path="/x").effect == "deny"


@pytest.mark.xfail(strict=True, reason="F9b: userinfo's email inherits the id_token's flag "
                   "(oidc/core.py merges {**claims, **info} before identity_claims)")
def test_a_userinfo_email_does_not_inherit_the_id_tokens_flag() -> None:
    id_token = {"sub": "s", "email": "me@corp.example", "email_verified": True}
    userinfo = {"sub": "s", "email": "boss@example.com"}            # no flag of its own
    assert identity_claims({**id_token, **userinfo, "sub": "s"})["email_verified"] is False


# -- what held --------------------------------------------------------------------------------

GATED = ["/admin", "/admin?x", "/admin/", "//admin", "/x/../admin", "/%61dmin", "/admin;x/..",
         "/admin/./users", "/admin/users?x=%2F", "/admin#x", "http://app.example.com/admin"]
REFUSED = ["/admin%2fusers", "/x/%2e%2e/admin", "/%2561dmin", "/admin%00", "/admin%5cusers"]


@pytest.mark.parametrize("server", ["uvicorn-h11", "uvicorn-httptools", "werkzeug", "waitress"])
def test_path_tricks_do_not_pass_the_gate(server: str, tmp: Path) -> None:
    cfg = base_config(tmp, example("layout")["access_control"])
    st = settings_of(cfg)
    bob = cookie(st, "bob", groups=("staff",))
    with serve(server, cfg, st) as addr:
        for target in GATED:
            status, _, body = raw(addr, target, cookie_=bob)
            seen = app_saw(body)
            routed_admin = seen is not None and re.match(r"^/admin(/|$)", seen["path"])
            assert not (status == 200 and routed_admin), target
        for target in REFUSED:
            assert raw(addr, target, cookie_=bob)[0] == 400, target


def test_the_email_example_needs_a_verified_email() -> None:
    p = policy([{"resources": ["^/staff(/|$)"],
                 "allow": {"or": [{"domain": "example.com"}, {"email": "contractor@partner.test"}]}}])
    verified = Identity(sub="a", email="A@EXAMPLE.COM", email_verified=True)
    unverified = Identity(sub="b", email="a@example.com")
    assert p.evaluate(view("/staff"), verified, path="/staff").effect == "allow"
    assert p.evaluate(view("/staff"), unverified, path="/staff").effect == "deny"


def test_subject_or_of_ands_and_continue_chains() -> None:
    p = policy([
        {"resources": ["^/a(/|$)"], "subject": [["group:admins", "email:al@example.com"]],
         "subject_mismatch": "continue", "policy": "two_factor"},
        {"resources": ["^/a(/|$)"], "subject": ["group:staff", "user:carol"],
         "subject_mismatch": "continue", "policy": "authenticated"},
        {"resources": ["^/a(/|$)"], "policy": "deny"},
        {"policy": "authenticated"}])
    al = Identity(sub="al", groups=["admins"], email="al@example.com", email_verified=True)
    al_unverified = Identity(sub="al", groups=["admins"], email="al@example.com")
    carol = Identity(sub="carol")
    dave = Identity(sub="dave")
    assert p.evaluate(view("/a"), al, path="/a").effect == "two_factor"
    assert p.evaluate(view("/a"), al_unverified, path="/a").rule == 2
    assert p.evaluate(view("/a"), carol, path="/a").effect == "allow"
    assert p.evaluate(view("/a"), dave, path="/a").effect == "deny"
    assert p.evaluate(view("/a"), None, path="/a").effect == "login"


# -- F10 (medium, older than the change): claim criteria only see six claims --------------


@pytest.mark.xfail(strict=True, reason="F10: sessions keep only sub/email/email_verified/name/"
                   "preferred_username/groups, so a claim deny block never holds")
@pytest.mark.parametrize("server", ASGI_WSGI)
def test_a_claim_deny_block_denies(server: str, tmp: Path) -> None:
    ac = {"default_policy": "deny", "rules": [
        {"allow": {"or": [{"authenticated_user": True}]},
         "deny": {"or": [{"claim/department": "contractors"}]}}]}
    cfg = base_config(tmp, ac)
    st = settings_of(cfg)
    from secure_mw.testing import session_cookie

    contractor = session_cookie(st, {"sub": "c", "department": "contractors"})
    with serve(server, cfg, st) as addr:
        assert raw(addr, "/page", cookie_=contractor)[0] == 403
