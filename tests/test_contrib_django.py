"""secure_mw.contrib.django in process, through the real protect() stack around Django's
own WSGI and ASGI handlers: request.identity and request.user follow the verified identity
(never a client header), the Django login ends with the secure_mw session, require() and
login_required, and the system checks report every SECURE_MW problem."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

_DB = Path(tempfile.mkdtemp(prefix="secure-mw-django-")) / "db.sqlite3"
if not settings.configured:
    settings.configure(
        SECRET_KEY="tests-only-" + "x" * 40,
        ALLOWED_HOSTS=["127.0.0.1", "testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django.contrib.sessions", "secure_mw.contrib.django"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware",
                    "secure_mw.contrib.django.middleware.IdentityMiddleware"],
        AUTHENTICATION_BACKENDS=["secure_mw.contrib.django.backends.IdentityBackend"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(_DB)}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        SECURE_MW={},
        SECURE_MW_SYNC_GROUPS=True,
        SECURE_MW_STAFF_GROUPS=["admins"],
        LOGOUT_REDIRECT_URL="/.auth/logout",
    )
    django.setup()

import httpx  # noqa: E402
from django.contrib import auth  # noqa: E402
from django.contrib.sessions.models import Session as DjangoSession  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from secure_mw.contrib.django import (  # noqa: E402
    IDENTITY_KEY,
    get_asgi_application,
    get_wsgi_application,
    identity_of,
    load_settings,
)
from secure_mw.contrib.django.decorators import login_required, require  # noqa: E402
from secure_mw.crypto import KeyRing, PasswordHasher  # noqa: E402
from secure_mw.guards.timing import LoginDelay  # noqa: E402
from secure_mw.identity import ANONYMOUS, Identity  # noqa: E402
from secure_mw.login import UsersFile  # noqa: E402
from secure_mw.session import MemorySessionStore  # noqa: E402
from tests.apps import browser  # noqa: E402

FAST = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
KEY = KeyRing.new_key_text()


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user
    if request.GET.get("keep"):
        request.session["kept"] = request.GET["keep"]
    return JsonResponse({
        "identity": request.identity.sub if request.identity else None,  # type: ignore[attr-defined]
        "user": user.get_username() if user.is_authenticated else None,
        "email": getattr(user, "email", ""), "name": getattr(user, "first_name", ""),
        "staff": user.is_staff,
        "groups": sorted(user.groups.values_list("name", flat=True))
        if user.is_authenticated else [],
        "kept": request.session.get("kept"),
    })


@require(groups="admins")
def admins(request: HttpRequest) -> HttpResponse:
    return HttpResponse("admins only")


@require(auth_level=2)
def strong(request: HttpRequest) -> HttpResponse:
    return HttpResponse("two factors")


@login_required
async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async " + request.identity.sub)  # type: ignore[attr-defined]


from django.contrib.auth.views import LogoutView  # noqa: E402

urlpatterns = [path("logout/", LogoutView.as_view()), path("whoami", whoami),
               path("public/whoami", whoami), path("admins", admins),
               path("strong", strong), path("async", async_view)]


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    call_command("migrate", verbosity=0)


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="quartz falcon 11", groups=["admins", "staff"],
              email="alice@example.com", display_name="Alice Example")
    users.add("bob", password="velvet harbor 22", groups=["staff"])
    return users


def secure_mw_config(users: UsersFile) -> dict[str, Any]:
    return {
        "keys": {"encryption_keys": [KEY]},
        "local_users": {"file": str(users.path)},
        "access_control": {"default_policy": "deny", "rules": [
            {"resources": ["^/public/"], "policy": "bypass"},
            {"policy": "authenticated"}]},
    }


@pytest.fixture
def configured(users: UsersFile) -> Iterator[dict[str, Any]]:
    config = secure_mw_config(users)
    with override_settings(SECURE_MW=config):
        yield config


def options(users: UsersFile) -> dict[str, Any]:
    return {"users": users, "store": MemorySessionStore(),
            "delay": LoginDelay(floor=0.001, seed=0.001, jitter=0.0001)}


@pytest.fixture
def client(configured: dict[str, Any], users: UsersFile) -> Iterator[httpx.Client]:
    app = get_wsgi_application(**options(users))
    with browser(transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1") as c:
        yield c


def sign_in(client: httpx.Client, user: str, password: str) -> None:
    form = client.get("/.auth/login")
    state = re.search(r'name="state" value="([^"]+)"', form.text)
    assert state, form.text
    done = client.post("/.auth/login", data={
        "state": state.group(1), "username": user, "password": password})
    assert done.status_code == 303, done.text


def reuse(client: httpx.Client, session_key: str | None) -> None:
    """Send ``session_key`` as the Django session cookie from now on."""
    assert session_key
    client.cookies.delete("sessionid")
    client.cookies.set("sessionid", session_key, domain="127.0.0.1")


def sign_out(client: httpx.Client) -> None:
    csrf = client.get("/.auth/me").json()["csrf_token"]
    assert client.post("/.auth/logout", data={"csrf": csrf}).status_code == 303


def test_without_django_the_import_names_the_extra() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['django'] = None\n"
            "import secure_mw, secure_mw.cli\n"
            "try:\n    import secure_mw.contrib.django\n"
            "except ImportError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert "pip install 'secure-mw[django]'" in done.stdout


# -- settings -------------------------------------------------------------------------------


def test_settings_from_a_mapping_or_a_toml_path(tmp_path: Path, users: UsersFile) -> None:
    with override_settings(SECURE_MW={"local_users": {"file": str(users.path)},
                                      "session": {"expiration": "2h"}}):
        assert load_settings().session.expiration == 7200
    toml = tmp_path / "secure-mw.toml"
    toml.write_text(f'[local_users]\nfile = "{users.path}"\n[session]\nexpiration = "3h"\n')
    with override_settings(SECURE_MW=str(toml)):
        assert load_settings().session.expiration == 3 * 3600
    with override_settings(SECURE_MW=toml):
        assert load_settings().session.expiration == 3 * 3600
    with override_settings(SECURE_MW="secure-mw.toml", BASE_DIR=tmp_path):
        assert load_settings().session.expiration == 3 * 3600


# -- request.identity and request.user ------------------------------------------------------


def test_request_user_is_made_and_kept_up_to_date_from_the_identity(
        client: httpx.Client, users: UsersFile) -> None:
    assert client.get("/whoami").status_code == 302         # the stack asks for a login
    sign_in(client, "alice", "quartz falcon 11")
    me = client.get("/whoami").json()
    assert me == {"identity": "alice", "user": "alice", "email": "alice@example.com",
                  "name": "Alice Example", "staff": True, "groups": ["admins", "staff"],
                  "kept": None}
    user = auth.get_user_model().objects.get(username="alice")
    assert not user.has_usable_password()
    # The users file changes; the next sign-in brings the Django user up to date.
    users.update("alice", groups=["staff"])
    sign_out(client)
    sign_in(client, "alice", "quartz falcon 11")
    me = client.get("/whoami").json()
    assert me["groups"] == ["staff"] and me["staff"] is False


def test_the_django_user_follows_the_identity_within_a_session(
        users: UsersFile) -> None:
    from tests.clock import Clock

    clock = Clock()
    config = secure_mw_config(users)
    config["local_users"]["refresh_interval"] = "10s"
    with override_settings(SECURE_MW=config):
        app = get_wsgi_application(**options(users), clock=clock)
    with browser(transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1") as c:
        sign_in(c, "alice", "quartz falcon 11")
        assert c.get("/whoami?keep=cart").json()["groups"] == ["admins", "staff"]
        django_session = c.cookies.get("sessionid")
        users.update("alice", groups=["staff", "ops"], display_name="Alice Ops")
        clock.advance(11)     # past local_users.refresh_interval: the session reads the file
        me = c.get("/whoami").json()
        assert me["groups"] == ["ops", "staff"] and me["name"] == "Alice Ops"
        assert me["staff"] is False and me["kept"] == "cart"    # the same Django login
        assert c.cookies.get("sessionid") == django_session


def test_nobody_is_anonymous_whatever_the_client_sends(client: httpx.Client) -> None:
    forged = {"Remote-User": "alice", "X-Remote-User": "alice", "secure_mw.identity": "alice",
              "X-Forwarded-User": "alice"}
    me = client.get("/public/whoami", headers=forged).json()
    assert me["identity"] is None and me["user"] is None


def test_logout_ends_the_django_login(client: httpx.Client) -> None:
    sign_in(client, "alice", "quartz falcon 11")
    assert client.get("/whoami?keep=cart").json()["kept"] == "cart"
    old = client.cookies.get("sessionid")
    assert old and DjangoSession.objects.filter(session_key=old).exists()
    sign_out(client)
    # The Django session cookie alone (still held here) is worth nothing: anonymous, and the
    # Django session is flushed.
    me = client.get("/public/whoami", headers={"Cookie": f"sessionid={old}"}).json()
    assert me["user"] is None and me["identity"] is None
    assert not DjangoSession.objects.filter(session_key=old).exists()


def test_djangos_own_logout_goes_on_to_secure_mws(client: httpx.Client) -> None:
    sign_in(client, "alice", "quartz falcon 11")
    assert client.get("/whoami").json()["user"] == "alice"
    client.cookies.set("csrftoken", "a" * 32, domain="127.0.0.1")
    # The admin's "Log out", any LogoutView (which asks for Django's CSRF token):
    out = client.post("/logout/", headers={"X-CSRFToken": "a" * 32})
    assert out.status_code == 302 and out.headers["location"] == "/.auth/logout"
    page = client.get("/.auth/logout")
    assert page.status_code == 200 and 'name="csrf"' in page.text


def test_a_new_sign_in_starts_a_new_django_login(client: httpx.Client) -> None:
    sign_in(client, "alice", "quartz falcon 11")
    assert client.get("/whoami?keep=cart").json()["kept"] == "cart"
    old = client.cookies.get("sessionid")
    sign_out(client)
    # Signing in again, the old Django session (cookie kept, never seen anonymous) is not
    # carried over: its data belonged to the ended sign-in.
    sign_in(client, "alice", "quartz falcon 11")
    reuse(client, old)
    response = client.get("/whoami")
    assert response.json()["user"] == "alice" and response.json()["kept"] is None
    assert f"sessionid={old}" not in response.headers.get("set-cookie", "")
    assert not DjangoSession.objects.filter(session_key=old).exists()
    # Another user with a stolen Django session cookie gets their own login, not alice's.
    sign_out(client)
    sign_in(client, "bob", "velvet harbor 22")
    alice_session = client.cookies.get("sessionid")
    client.get("/whoami?keep=alice-data")
    reuse(client, alice_session)
    me = client.get("/whoami").json()
    assert me["user"] == "bob"


def test_a_provider_subject_never_becomes_a_built_in_login_user(
        configured: dict[str, Any], users: UsersFile, caplog: pytest.LogCaptureFixture) -> None:
    from secure_mw import Settings
    from secure_mw.testing import session_cookie

    caplog.set_level(logging.WARNING, "secure_mw.audit")
    store = MemorySessionStore()
    app = get_wsgi_application(**{**options(users), "store": store})
    settings = Settings.from_mapping(configured, environ={})
    with browser(transport=httpx.WSGITransport(app=app), base_url="http://127.0.0.1") as c:
        sign_in(c, "alice", "quartz falcon 11")        # the users file's alice, an admin
        assert c.get("/whoami").json()["staff"] is True
    # A session made by something else than the built-in login (a provider, a proxy's
    # assertion, here secure_mw.testing) whose subject is "alice", for someone else.
    cookie = session_cookie(settings, {"sub": "alice", "groups": []}, store=store)
    with httpx.Client(transport=httpx.WSGITransport(app=app),
                      base_url="http://127.0.0.1") as c:
        me = c.get("/whoami", headers={"Cookie": cookie}).json()
        assert me["identity"] == "alice" and me["user"] is None
        assert c.get("/admins", headers={"Cookie": cookie}).status_code == 403
    assert any("django_user_refused" in r.getMessage() for r in caplog.records)


def test_an_inactive_django_user_is_anonymous(client: httpx.Client) -> None:
    sign_in(client, "bob", "velvet harbor 22")
    assert client.get("/whoami").json()["user"] == "bob"
    auth.get_user_model().objects.filter(username="bob").update(is_active=False)
    sign_out(client)
    sign_in(client, "bob", "velvet harbor 22")
    me = client.get("/whoami").json()
    assert me["identity"] == "bob" and me["user"] is None
    auth.get_user_model().objects.filter(username="bob").update(is_active=True)


def test_the_backend_accepts_only_the_identity_of_the_request() -> None:
    alice = Identity(sub="alice", source="local")
    request = HttpRequest()
    request.META["secure_mw.identity"] = Identity(sub="bob", source="local")
    request.session = {}  # type: ignore[assignment]
    assert auth.authenticate(request, identity=alice) is None
    assert auth.authenticate(None, identity=alice) is None
    assert identity_of(HttpRequest()) is ANONYMOUS


def test_a_request_that_did_not_go_through_the_stack_is_anonymous_and_said(
        configured: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    from django.core.handlers.wsgi import WSGIHandler

    # Django's own handler, as a wsgi.py left unchanged would serve it.
    bare = WSGIHandler()
    with browser(transport=httpx.WSGITransport(app=bare), base_url="http://127.0.0.1") as c:
        me = c.get("/public/whoami", headers={"Remote-User": "alice"}).json()
        assert me["identity"] is None and me["user"] is None
        c.get("/public/whoami")
    said = [r for r in caplog.records if "without the secure_mw stack" in r.getMessage()]
    assert len(said) == 1


# -- require() and login_required -----------------------------------------------------------


def test_require_groups(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "secure_mw.audit")
    anonymous = client.get("/public/whoami")
    assert anonymous.status_code == 200
    sign_in(client, "bob", "velvet harbor 22")
    refused = client.get("/admins")
    assert refused.status_code == 403 and "Access denied" in refused.text
    api = client.get("/admins", headers={"Accept": "application/json"})
    assert api.status_code == 403 and api.json() == {"error": "forbidden"}
    assert any('"event":"authorization_denied"' in r.getMessage() and '"user":"bob"' in
               r.getMessage() for r in caplog.records)
    sign_out(client)
    sign_in(client, "alice", "quartz falcon 11")
    assert client.get("/admins").text == "admins only"


def test_require_a_second_factor(client: httpx.Client) -> None:
    sign_in(client, "alice", "quartz falcon 11")
    step = client.get("/strong")
    assert step.status_code == 302 and step.headers["location"] == "/.auth/2fa?rd=/strong"


def test_decorators_without_a_login(configured: dict[str, Any]) -> None:
    request = HttpRequest()
    request.META.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/admins",
                         "HTTP_HOST": "127.0.0.1", "HTTP_ACCEPT": "text/html",
                         "wsgi.url_scheme": "http"})
    page = admins(request)
    assert page.status_code == 302 and page["location"] == "/.auth/login?rd=/admins"
    request.META["HTTP_ACCEPT"] = "application/json"
    api = admins(request)
    assert api.status_code == 401 and api["www-authenticate"].startswith("Cookie")
    with pytest.raises(ValueError, match="auth_level"):
        require(auth_level=0)


def test_asgi_entry(configured: dict[str, Any], users: UsersFile) -> None:
    app = get_asgi_application(**options(users))

    async def run() -> tuple[int, str, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://127.0.0.1",
                                     headers={"Accept": "text/html"}) as c:
            form = await c.get("/.auth/login")
            state = re.search(r'name="state" value="([^"]+)"', form.text)
            assert state
            await c.post("/.auth/login", data={"state": state.group(1), "username": "bob",
                                               "password": "velvet harbor 22"})
            who = await c.get("/whoami")
            refused = await c.get("/admins")
            view = await c.get("/async")
            return who.json()["user"], view.text, refused.status_code

    assert asyncio.run(run()) == ("bob", "async bob", 403)


# -- system checks --------------------------------------------------------------------------


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages if m.id.startswith("secure_mw.")]


def test_check_reports_every_problem(tmp_path: Path) -> None:
    bad = {"session": {"expiration": "soon"},
           "access_control": {"default_policy": "maybe"},
           "local_users": {"file": str(tmp_path / "missing.toml")}}
    with override_settings(SECURE_MW=bad):
        found = checks.run_checks()
        texts = [m.msg for m in found if m.id == "secure_mw.E001"]
        assert any("session.expiration" in t for t in texts)
        assert any("access_control.default_policy" in t for t in texts)
        with pytest.raises(Exception, match=r"secure_mw\.E001"):
            call_command("check")
    with override_settings(SECURE_MW={"local_users": {"file": str(tmp_path / "none.toml")}}):
        found = checks.run_checks()
        assert set(ids(found)) == {"secure_mw.W001"}
        assert any("nobody can sign in" in m.msg for m in found)
    with override_settings(SECURE_MW=42):
        found = checks.run_checks()
        assert ids(found) == ["secure_mw.E001"]
        assert found[-1].msg.startswith("SECURE_MW: must be a mapping")


@pytest.fixture
def not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """As an unprivileged server runs (CI runs as root: a true deployment warning)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


@pytest.mark.usefixtures("not_root")
def test_check_a_good_configuration(configured: dict[str, Any]) -> None:
    assert ids(checks.run_checks()) == []


@pytest.mark.usefixtures("not_root")
def test_check_the_glue(configured: dict[str, Any]) -> None:
    mw = list(settings.MIDDLEWARE)
    ours = "secure_mw.contrib.django.middleware.IdentityMiddleware"
    without = [m for m in mw if m != ours]
    with override_settings(MIDDLEWARE=without):
        assert ids(checks.run_checks()) == ["secure_mw.E003"]
    with override_settings(MIDDLEWARE=without, AUTHENTICATION_BACKENDS=[
            "django.contrib.auth.backends.ModelBackend"]):
        assert ids(checks.run_checks()) == ["secure_mw.W002"]
    with override_settings(MIDDLEWARE=[m for m in mw if "AuthenticationMiddleware" not in m]):
        assert "secure_mw.E004" in ids(checks.run_checks())
    with override_settings(MIDDLEWARE=[mw[0], ours, mw[1]]):
        assert ids(checks.run_checks()) == ["secure_mw.E005"]


def test_require_takes_any_of_its_groups(configured: dict[str, Any]) -> None:
    """As require() of the Flask and FastAPI integrations: one of the groups is enough."""

    @require(groups=["admins", "ops"])
    def either(request: HttpRequest) -> HttpResponse:
        return HttpResponse("in")

    def asking(groups: list[str]) -> HttpResponse:
        request = HttpRequest()
        request.META.update({"REQUEST_METHOD": "GET", "PATH_INFO": "/either",
                             "HTTP_HOST": "127.0.0.1", "HTTP_ACCEPT": "application/json",
                             "wsgi.url_scheme": "http",
                             IDENTITY_KEY: Identity(sub="u", groups=groups, source="local")})
        return either(request)

    assert asking(["ops"]).status_code == 200
    assert asking(["admins", "staff"]).status_code == 200
    assert asking(["staff"]).status_code == 403
    assert asking([]).status_code == 403


def test_request_user_follows_a_bearer_identity(users: UsersFile, tmp_path: Path) -> None:
    import json

    from tests.bearer_tokens import AUDIENCE, ISSUER, Minter

    minter = Minter()
    (tmp_path / "jwks.json").write_text(json.dumps(minter.jwks))
    config = {**secure_mw_config(users), "bearer_tokens": {
        "issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(tmp_path / "jwks.json")}}
    with override_settings(SECURE_MW=config):
        app = get_wsgi_application(**options(users))
        with httpx.Client(transport=httpx.WSGITransport(app=app),
                          base_url="http://127.0.0.1") as api:
            def bearer(groups: list[str]) -> dict[str, str]:
                return {"Authorization": "Bearer " + minter.token(sub="erin", groups=groups),
                        "Accept": "application/json"}

            answer = api.get("/whoami", headers=bearer(["admins"]))
            assert "sessionid" not in answer.headers.get("set-cookie", "")   # no login
            me = answer.json()
            assert me["identity"] == "erin" and me["user"] == "erin" and me["staff"]
            assert api.get("/admins", headers=bearer(["admins"])).status_code == 200
            assert api.get("/admins", headers=bearer(["staff"])).status_code == 403
            assert api.get("/whoami", headers={"Authorization": "Bearer x.y.z"}
                           ).status_code == 401
