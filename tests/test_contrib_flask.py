"""secure_mw.contrib.flask: the extension wraps app.wsgi_app (the Flask test client goes
through the whole stack), reads app.config["SECURE_MW"] in each of its forms, reports a bad
configuration at init_app with the key path, and its decorators answer as the authorization
core does: 401 / redirect to the login for nobody, redirect to the second step, 403."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient

from secure_mw import Settings
from secure_mw.contrib.flask import SecureMW, current_identity, login_required, require
from secure_mw.crypto import KeyRing, PasswordHasher
from secure_mw.errors import ConfigError
from secure_mw.identity import ANONYMOUS
from secure_mw.login import UsersFile
from secure_mw.testing import session_cookie

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
KEY = KeyRing.new_key_text()
HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("bob", password="battery staple 1")
    users.add("alice", password="battery staple 2", groups=["admins"])
    return users.path


def config(users_path: Path, **sections: Any) -> dict[str, Any]:
    return {"keys": {"encryption_keys": [KEY]}, "local_users": {"file": str(users_path)},
            **sections}


def make_app(conf: object, *, factory: bool = False) -> Flask:
    app = Flask(__name__)
    app.config["SECURE_MW"] = conf

    @app.get("/")
    def index() -> str:
        return f"hello {current_identity.display_name or 'nobody'}"

    @app.get("/mine")
    @login_required
    def mine() -> dict[str, Any]:
        return {"sub": current_identity.identity}

    @app.get("/admin")
    @require(groups="admins")
    def admin() -> str:
        return "admins only"

    @app.get("/strong")
    @require(auth_level=2)
    def strong() -> str:
        return "two factors"

    @app.get("/page")
    def page() -> str:
        return render_template_string(
            "{{ current_identity.display_name or 'nobody' }}|{{ csp_nonce }}")

    if factory:
        ext = SecureMW(environ={})
        ext.init_app(app)
    else:
        SecureMW(app, environ={})
    return app


PUBLIC = {"access_control": {"rules": [{"policy": "bypass"}]}}


def signed_in(app: Flask, sub: str, **kwargs: Any) -> FlaskClient:
    settings = app.extensions["secure_mw"].settings
    claims = {"sub": sub, "groups": ["admins"] if sub == "alice" else []}
    name, value = session_cookie(settings, claims, **kwargs).split("=", 1)
    client = app.test_client()
    client.set_cookie(name, value, domain="localhost")
    return client


@pytest.mark.parametrize("factory", [False, True])
def test_the_app_stays_flask_and_its_test_client_goes_through_the_stack(
        users_path: Path, factory: bool) -> None:
    app = make_app(config(users_path, **PUBLIC), factory=factory)
    assert isinstance(app, Flask)
    assert app.wsgi_app.__class__.__module__.startswith("secure_mw.wsgi")
    response = app.test_client().get("/")
    assert response.status_code == 200 and response.text == "hello nobody"
    assert "content-security-policy" in response.headers       # the guards answered too
    assert response.headers["x-frame-options"] == "DENY"
    # Not an allowed host: the stack's Host guard refuses it before Flask routes it.
    assert app.test_client().get("/", headers={"Host": "evil.example"}).status_code == 400


def test_without_rules_every_page_needs_a_login(users_path: Path) -> None:
    app = make_app(config(users_path))
    client = app.test_client()
    assert client.get("/", headers=JSON).status_code == 401
    assert client.get("/", headers=HTML).headers["location"] == "/.auth/login?rd=/"
    assert signed_in(app, "bob").get("/").text == "hello bob"


def test_config_as_a_toml_path_and_as_settings(users_path: Path, tmp_path: Path) -> None:
    toml = tmp_path / "secure-mw.toml"
    toml.write_text(textwrap.dedent(f"""
        [keys]
        encryption_keys = ["{KEY}"]
        [local_users]
        file = "{users_path}"
        [[access_control.rules]]
        policy = "bypass"
        """))
    for conf in (str(toml), toml, Settings.from_file(toml, environ={})):
        app = make_app(conf)
        assert app.test_client().get("/").text == "hello nobody"
        assert signed_in(app, "alice").get("/admin").text == "admins only"


def test_a_bad_configuration_raises_at_init_app_naming_the_key(users_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_app(config(users_path, session={"store": "nope", "cookie_name": 3}))
    paths = {p.path for p in caught.value.problems}
    assert {"session.store", "session.cookie_name"} <= paths
    with pytest.raises(ConfigError, match="SECURE_MW: expected a mapping"):
        make_app(42)
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        make_app("missing.toml")


def test_no_config_reads_the_environment(users_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SECURE_MW_SESSION__STORE|session\.store"):
        SecureMW(Flask(__name__), environ={"SECURE_MW_SESSION__STORE": "nope"})
    toml = tmp_path / "from-env.toml"
    toml.write_text(f'[local_users]\nfile = "{users_path}"\n')
    app = Flask(__name__)
    app.get("/")(lambda: "open")
    SecureMW(app, environ={"SECURE_MW_CONFIG": str(toml),
                           "SECURE_MW_ACCESS_CONTROL__RULES": '[{"policy": "bypass"}]'})
    assert app.extensions["secure_mw"].settings.local_users.file == str(users_path)
    assert app.test_client().get("/").text == "open"


def test_init_app_twice_is_refused(users_path: Path) -> None:
    app = make_app(config(users_path))
    with pytest.raises(RuntimeError, match="already"):
        SecureMW(app, environ={})


def test_current_identity(users_path: Path) -> None:
    app = make_app(config(users_path, **PUBLIC))
    assert current_identity == ANONYMOUS and not current_identity    # outside a request
    with app.test_request_context("/"):
        assert current_identity.is_authenticated is False
    assert signed_in(app, "bob").get("/mine").json == {"sub": "bob"}
    page = signed_in(app, "bob").get("/page")
    nonce = page.headers["content-security-policy"].split("'nonce-", 1)[1].split("'")[0]
    assert page.text == f"bob|{nonce}"
    assert app.test_client().get("/page").text.startswith("nobody|")
    with app.app_context():                 # a template rendered outside a request
        assert render_template_string("{{ current_identity }}|{{ csp_nonce }}") == \
            "ANONYMOUS|"


def test_login_required_api_gets_401_a_browser_the_login(users_path: Path) -> None:
    app = make_app(config(users_path, **PUBLIC))
    client = app.test_client()
    api = client.get("/mine", headers=JSON)
    assert api.status_code == 401 and api.json == {"error": "unauthenticated",
                                                   "login_url": "/.auth/login"}
    assert api.headers["www-authenticate"].startswith('Cookie realm="secure_mw"')
    nav = client.get("/mine?x=1", headers=HTML)
    assert nav.status_code == 302
    assert nav.headers["location"] == "/.auth/login?rd=/mine%3Fx%3D1"
    assert client.post("/mine", headers=HTML).status_code in (401, 405)
    xhr = client.get("/mine", headers={**HTML, "X-Requested-With": "XMLHttpRequest"})
    assert xhr.status_code == 401


def test_require_groups_refuses_others_with_403_and_an_audit_line(
        users_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "secure_mw.audit")
    app = make_app(config(users_path, **PUBLIC))
    assert app.test_client().get("/admin", headers=JSON).status_code == 401
    bob = signed_in(app, "bob")
    refused = bob.get("/admin", headers=JSON)
    assert refused.status_code == 403 and refused.json == {"error": "forbidden"}
    page = bob.get("/admin", headers=HTML)
    assert page.status_code == 403 and "Access denied" in page.text
    assert "content-security-policy" in page.headers
    assert signed_in(app, "alice").get("/admin").text == "admins only"
    lines = [r.getMessage() for r in caplog.records if r.name == "secure_mw.audit"]
    assert any("authorization_denied" in line and "bob" in line and "/admin" in line
               for line in lines)


def test_require_auth_level_2_sends_to_the_second_step(users_path: Path) -> None:
    app = make_app(config(users_path, **PUBLIC))
    one = signed_in(app, "bob")
    assert one.get("/strong", headers=HTML).headers["location"] == "/.auth/2fa?rd=/strong"
    api = one.get("/strong", headers=JSON)
    assert api.status_code == 401 and api.json["error"] == "second_factor_required"
    assert signed_in(app, "bob", auth_level=2).get("/strong").text == "two factors"


def test_require_auth_level_2_refuses_a_provider_session(users_path: Path) -> None:
    """An OpenID provider's session cannot be stepped up here: 403, not a loop."""
    conf = config(users_path, **PUBLIC, oidc={
        "issuer": "https://idp.example", "client_id": "app", "client_secret": "s" * 24})
    users_path.unlink()
    app = make_app(conf)
    assert signed_in(app, "bob").get("/strong", headers=HTML).status_code == 403


def test_bad_requirements_fail_at_decoration() -> None:
    with pytest.raises(ValueError, match="auth_level"):
        require(auth_level=3)
    with pytest.raises(ValueError, match="groups"):
        require(groups=[""])


def test_decorators_need_the_extension() -> None:
    app = Flask(__name__)

    @app.get("/x")
    @login_required
    def x() -> str:
        return "x"

    app.testing = True
    with pytest.raises(RuntimeError, match="SecureMW"):
        app.test_client().get("/x")


def test_without_flask_the_import_names_the_extra() -> None:
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "flask" or name.startswith("flask."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        try:
            import secure_mw.contrib.flask
        except ImportError as exc:
            print(exc)
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert "pip install 'secure-mw[flask]'" in out.stdout


def test_a_bearer_identity_is_current_identity(users_path: Path, tmp_path: Path) -> None:
    import json

    from tests.bearer_tokens import AUDIENCE, ISSUER, Minter

    minter = Minter()
    (tmp_path / "jwks.json").write_text(json.dumps(minter.jwks))
    app = make_app(config(users_path, bearer_tokens={
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(tmp_path / "jwks.json")}))
    client = app.test_client()

    def bearer(groups: list[str]) -> dict[str, str]:
        return {"Authorization": "Bearer " + minter.token(groups=groups), **JSON}

    assert client.get("/mine", headers=bearer([]), base_url="https://localhost").json == \
        {"sub": "alice"}
    assert client.get("/admin", headers=bearer(["admins"]),
                      base_url="https://localhost").status_code == 200
    assert client.get("/admin", headers=bearer(["staff"]),
                      base_url="https://localhost").status_code == 403
