"""secure_mw.contrib.fastapi with FastAPI's TestClient: the middleware class keeps the app a
FastAPI app, the dependencies answer as the authorization core decides, OpenAPI shows which
routes need what, and /docs and /redoc carry the request's CSP nonce."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient

from secure_mw import ConfigError, Settings
from secure_mw.contrib.fastapi import (
    Refused,
    SecureMW,
    current_identity,
    optional_identity,
    require,
)
from secure_mw.identity import Identity
from secure_mw.testing import allow_test_host, session_cookie
from tests.servers import free_port
from tests.test_plain_install import _run

BROWSER = {"Accept": "text/html"}
RULES = {"access_control": {"rules": [{"resources": ["^/public"], "policy": "bypass"},
                                      {"policy": "authenticated"}]}}


def settings(**sections: Any) -> Settings:
    return allow_test_host(Settings.from_mapping({**RULES, **sections}, environ={}))


def make_app(config: Settings | None = None, **options: Any) -> tuple[FastAPI, Settings]:
    config = config or settings()
    app = FastAPI(title="Test")
    app.add_middleware(SecureMW, settings=config, **options)

    @app.get("/public/who")
    def who(me: Identity | None = Depends(optional_identity)) -> dict[str, Any]:
        return {"who": me.sub if me else None}

    @app.get("/public/me")
    def me(me: Identity = Depends(current_identity)) -> dict[str, Any]:
        return {"who": me.sub}

    @app.get("/public/admin", dependencies=[Depends(require(groups=["admins", "ops"]))])
    def admin() -> dict[str, bool]:
        return {"admin": True}

    @app.get("/public/two")
    def two(me: Identity = Depends(require(auth_level=2))) -> dict[str, Any]:
        return {"who": me.sub, "level": me.auth_level}

    router = APIRouter(prefix="/public/r", dependencies=[Depends(require(groups="staff"))])

    @router.get("/x")
    def routed() -> dict[str, bool]:
        return {"routed": True}

    app.include_router(router)         # after add_middleware: still a FastAPI app
    return app, config


def cookie(config: Settings, sub: str, groups: list[str], level: int = 1) -> dict[str, str]:
    return {"Cookie": session_cookie(config, {"sub": sub, "groups": groups},
                                     auth_level=level)}


@pytest.fixture
def client() -> Any:
    app, config = make_app()
    with TestClient(app) as test_client:
        test_client.config = config           # type: ignore[attr-defined]
        yield test_client


def test_the_app_stays_a_fastapi_app_and_the_stack_protects_it(client: Any) -> None:
    assert isinstance(client.app, FastAPI)
    refused = client.get("/elsewhere")                       # the stack's own login gate
    assert refused.status_code == 401
    assert "x-frame-options" in client.get("/public/who").headers     # its headers
    assert client.get("/public/r/x", headers=cookie(client.config, "s", ["staff"])).json() \
        == {"routed": True}


def test_settings_or_config_exactly_one(tmp_path: Path) -> None:
    for kwargs in ({}, {"settings": settings(), "config": tmp_path / "x.toml"}):
        app = FastAPI()
        app.add_middleware(SecureMW, **kwargs)
        with pytest.raises(TypeError, match="settings= or config="):
            TestClient(app).get("/")


def test_config_reads_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "secure-mw.toml"
    path.write_text('[server]\nallowed_hosts = ["testserver"]\n'
                    '[access_control]\nrules = [{resources = ["^/public"], policy = "bypass"}]\n',
                    encoding="utf-8")
    app = FastAPI()
    app.add_middleware(SecureMW, config=str(path))

    @app.get("/public")
    def public(me: Identity | None = Depends(optional_identity)) -> dict[str, Any]:
        return {"who": me}

    with TestClient(app) as test_client:
        assert test_client.get("/public").json() == {"who": None}


def test_a_bad_configuration_fails_the_start_up_naming_the_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "secure-mw.toml"
    path.write_text('[session]\nstore = "nowhere"\n', encoding="utf-8")
    app = FastAPI()
    app.add_middleware(SecureMW, config=path)
    with pytest.raises(ConfigError, match=r"session\.store"), TestClient(app):
        pass
    # Without a lifespan (a server that has none): every request is refused, not served.
    answer = TestClient(app).get("/")
    assert answer.status_code == 503 and "configuration" in answer.text
    assert any("session.store" in r.getMessage() for r in caplog.records)


def test_current_identity(client: Any) -> None:
    api = client.get("/public/me")
    assert api.status_code == 401
    assert api.json() == {"detail": {"error": "unauthenticated", "login_url": "/.auth/login"}}
    assert api.headers["www-authenticate"].startswith('Cookie realm="secure_mw"')
    page = client.get("/public/me?a=1", headers=BROWSER, follow_redirects=False)
    assert page.status_code == 302
    assert page.headers["location"] == "/.auth/login?rd=/public/me%3Fa%3D1"
    signed_in = client.get("/public/me", headers=cookie(client.config, "alice", []))
    assert signed_in.json() == {"who": "alice"}


def test_optional_identity(client: Any) -> None:
    assert client.get("/public/who").json() == {"who": None}
    assert client.get("/public/who", headers=cookie(client.config, "alice", [])).json() == \
        {"who": "alice"}


def test_require_groups_refuses_outsiders_with_403_and_an_audit_line(
        client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "secure_mw.audit")
    for groups in (["admins"], ["ops", "x"]):             # any of the groups
        assert client.get("/public/admin", headers=cookie(client.config, "a", groups)
                          ).json() == {"admin": True}
    refused = client.get("/public/admin", headers=cookie(client.config, "bob", ["staff"]))
    assert refused.status_code == 403 and refused.json() == {"detail": {"error": "forbidden"}}
    page = client.get("/public/admin", headers={**BROWSER, **cookie(client.config, "bob", [])})
    assert page.status_code == 403
    assert client.get("/public/admin").status_code == 401          # nobody: sign in first
    denied = [r.getMessage() for r in caplog.records if "authorization_denied" in
              r.getMessage()]
    assert len(denied) == 2 and all('"user":"bob"' in line for line in denied)
    assert client.get("/public/r/x", headers=cookie(client.config, "s", ["staffer"])
                      ).status_code == 403       # groups="staff" is one group, not letters


def test_require_a_second_factor(client: Any) -> None:
    one = cookie(client.config, "alice", [], level=1)
    api = client.get("/public/two", headers=one)
    assert api.status_code == 401
    assert api.json() == {"detail": {"error": "second_factor_required",
                                     "login_url": "/.auth/2fa"}}
    page = client.get("/public/two", headers={**BROWSER, **one}, follow_redirects=False)
    assert page.status_code == 302 and page.headers["location"] == "/.auth/2fa?rd=/public/two"
    two = client.get("/public/two", headers=cookie(client.config, "alice", [], level=2))
    assert two.json() == {"who": "alice", "level": 2}


def test_an_openid_providers_session_cannot_be_stepped_up_so_403() -> None:
    config = settings(oidc={"issuer": "https://id.example.test", "client_id": "app",
                            "client_secret": "s3cret-for-tests"})
    app, _ = make_app(config)
    with TestClient(app) as test_client:
        one = cookie(config, "alice", [], level=1)
        assert test_client.get("/public/two", headers=one).status_code == 403
        assert test_client.get("/public/two", headers={**BROWSER, **one}).status_code == 403


def test_refusals_are_http_exceptions_the_app_can_render() -> None:
    app, config = make_app()

    @app.exception_handler(Refused)
    async def render(request: Any, exc: Refused) -> Any:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse(f"custom {exc.status_code}", status_code=exc.status_code)

    with TestClient(app) as test_client:
        answer = test_client.get("/public/admin", headers=cookie(config, "bob", []))
    assert answer.status_code == 403 and answer.text == "custom 403"


def test_requirements_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="auth_level"):
        require(auth_level=3)
    with pytest.raises(ValueError, match="auth_level"):
        require(auth_level=0)


def test_the_dependencies_need_the_middleware() -> None:
    app = FastAPI()

    @app.get("/")
    def home(me: Identity = Depends(current_identity)) -> dict[str, str]:
        return {"who": me.sub}

    with pytest.raises(RuntimeError, match="SecureMW"):
        TestClient(app).get("/")


def test_require_login_false_lets_the_routes_decide() -> None:
    app = FastAPI()
    app.add_middleware(SecureMW, settings=allow_test_host(Settings.from_mapping(
        {}, environ={})), require_login=False)

    @app.get("/open")
    def open_route(me: Identity | None = Depends(optional_identity)) -> dict[str, Any]:
        return {"who": me}

    @app.get("/closed")
    def closed(me: Identity = Depends(current_identity)) -> dict[str, Any]:
        return {"who": me.sub}

    with TestClient(app) as test_client:
        assert test_client.get("/open").json() == {"who": None}
        assert test_client.get("/closed").status_code == 401


def test_openapi_shows_which_routes_need_what(client: Any) -> None:
    schema = client.get("/openapi.json", headers=cookie(client.config, "a", [])).json()
    scheme = schema["components"]["securitySchemes"]["secure_mw"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "cookie"
    assert scheme["name"] == "__Host-secure_mw_session"
    paths = schema["paths"]
    assert "security" not in paths["/public/who"]["get"]
    assert paths["/public/me"]["get"]["security"] == [{"secure_mw": []}]
    assert paths["/public/admin"]["get"]["security"] == \
        [{"secure_mw": ["group:admins", "group:ops"]}]
    assert paths["/public/two"]["get"]["security"] == [{"secure_mw": ["two_factor"]}]
    assert paths["/public/r/x"]["get"]["security"] == [{"secure_mw": ["group:staff"]}]


# -- /docs and /redoc -----------------------------------------------------------------------


class Elements(HTMLParser):
    """Every script, style and link element of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "link"):
            self.found.append((tag, dict(attrs)))


def elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(page)
    return parser.found


def csp_nonce(csp: str) -> str:
    match = re.search(r"script-src [^;]*'nonce-([^']+)'", csp)
    assert match, csp
    assert f"style-src 'self' 'nonce-{match.group(1)}'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    return match.group(1)


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_every_script_and_style_of_the_docs_carries_the_nonce(client: Any, path: str) -> None:
    signed_in = cookie(client.config, "a", [])
    assert client.get(path, headers=BROWSER, follow_redirects=False).status_code == 302
    page = client.get(path, headers={**BROWSER, **signed_in})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    nonce = csp_nonce(csp)
    found = elements(page.text)
    assert any(tag == "script" for tag, _ in found)
    for tag, attrs in found:
        if tag == "link":
            assert attrs.get("rel") == "stylesheet", attrs       # no icon from elsewhere
        assert attrs.get("nonce") == nonce, (tag, attrs)
    if path != "/docs/oauth2-redirect":
        assert "img-src 'self' data:" in csp
    if path == "/redoc":
        assert f'nonce: "{nonce}"' in page.text and "worker-src 'self' blob:" in csp
    again = client.get(path, headers={**BROWSER, **signed_in})
    assert csp_nonce(again.headers["content-security-policy"]) != nonce    # per request
    head = client.head(path, headers={**BROWSER, **signed_in})
    assert head.status_code == 200 and head.content == b""


def test_the_docs_follow_the_mount_point_and_custom_assets() -> None:
    app, config = make_app(docs={"swagger_js_url": "https://assets.example/ui.js",
                                 "redoc_js_url": "https://assets.example/redoc.js"})
    with TestClient(app, root_path="/app") as test_client:
        page = test_client.get("/app/docs", headers=cookie(config, "a", [])).text
        assert "url: '/app/openapi.json'" in page
        nonce = csp_nonce(test_client.get("/app/docs", headers=cookie(config, "a", []))
                          .headers["content-security-policy"])
        assert "https://assets.example/ui.js" in page
        redoc = test_client.get("/app/redoc", headers=cookie(config, "a", [])).text
        assert '"/app/openapi.json"' in redoc and "https://assets.example/redoc.js" in redoc
        assert nonce


def test_docs_false_leaves_fastapis_own_pages() -> None:
    app, config = make_app(docs=False)
    with TestClient(app) as test_client:
        page = test_client.get("/docs", headers=cookie(config, "a", [])).text
    assert "SwaggerUIBundle" in page and "nonce=" not in page


def test_unknown_docs_assets_are_refused() -> None:
    app, _ = make_app(docs={"swagger_js": "x"})
    with pytest.raises(TypeError, match="swagger_js"):
        TestClient(app).get("/")


def test_a_custom_csp_is_kept_on_the_docs() -> None:
    config = settings(headers={"csp": "default-src 'self'; script-src 'self' {nonce}; "
                                      "style-src 'self' {nonce}; img-src 'self'"})
    app, _ = make_app(config)
    with TestClient(app) as test_client:
        csp = test_client.get("/docs", headers=cookie(config, "a", [])
                              ).headers["content-security-policy"]
    assert csp.endswith("img-src 'self'") and csp.count("img-src") == 1


def test_without_fastapi_the_import_names_the_extra() -> None:
    result = _run("""
        try:
            import secure_mw.contrib.fastapi
        except ImportError as exc:
            print(exc)
    """)
    assert "pip install 'secure-mw[fastapi]'" in result.stdout, result.stderr


def test_uvicorn_does_not_start_with_a_bad_configuration(tmp_path: Path) -> None:
    (tmp_path / "secure-mw.toml").write_text('[session]\nstore = "nowhere"\n',
                                             encoding="utf-8")
    (tmp_path / "app.py").write_text(
        "from fastapi import FastAPI\nfrom secure_mw.contrib.fastapi import SecureMW\n"
        "app = FastAPI()\napp.add_middleware(SecureMW, config='secure-mw.toml')\n",
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURE_MW_")}
    done = subprocess.run([sys.executable, "-m", "uvicorn", "app:app", "--port",
                           str(free_port())], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "session.store: 'nowhere' is not one of" in done.stdout + done.stderr


def test_a_bearer_identity_is_the_current_identity(tmp_path: Path) -> None:
    import json

    from tests.bearer_tokens import AUDIENCE, ISSUER, Minter

    minter = Minter()
    (tmp_path / "jwks.json").write_text(json.dumps(minter.jwks))
    app, _ = make_app(settings(bearer_tokens={
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(tmp_path / "jwks.json")}))
    with TestClient(app) as client:
        def bearer(groups: list[str]) -> dict[str, str]:
            return {"Authorization": "Bearer " + minter.token(groups=groups)}

        assert client.get("/public/me", headers=bearer([])).json() == {"who": "alice"}
        assert client.get("/public/admin", headers=bearer(["ops"])).json() == {"admin": True}
        assert client.get("/public/admin", headers=bearer(["staff"])).status_code == 403
        assert client.get("/public/me", headers={"Authorization": "Bearer x.y.z"}
                          ).status_code == 401
