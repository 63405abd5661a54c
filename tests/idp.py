"""A real OpenID provider for the tests: ``integrations/idp/server.mjs`` (panva's oidc-provider).

::

    idp = IdPServer(clients=[{"client_id": "rp", "client_secret": "...",
                              "redirect_uris": ["http://rp.test/callback"]}],
                    users=[{"sub": "alice", "password": "pw", "email": "alice@example.test",
                            "email_verified": True, "name": "Alice", "groups": ["staff"]}])
    idp.start()
    try:
        with httpx.Client() as browser:
            location = dev_login(browser, authorization_url, username="alice", password="pw")
    finally:
        idp.stop()

The server runs on Node with the packages of ``integrations/idp`` (installed here with
``npm ci`` when they are missing). A missing ``node`` or ``npm`` skips the test, or fails it
under ``SECURE_MW_REQUIRE_EXTERNAL=1``, as for every external program (see tests/servers.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from secure_mw.tokens import generate_private_jwks
from tests.servers import ensure_npm_packages, find_program, free_port, wait_for_port

__all__ = ["IDP_DIR", "IdPServer", "dev_login", "ensure_idp_packages", "rp_logout"]

IDP_DIR = Path(__file__).resolve().parent.parent / "integrations" / "idp"
_ALLOWED_HOSTS = ("127.0.0.1", "localhost")
_START_TIMEOUT = 30.0
_MAX_STEPS = 20


def ensure_idp_packages() -> None:
    """Install integrations/idp's node packages with ``npm ci`` unless they are there."""
    ensure_npm_packages(IDP_DIR)


class IdPServer:
    """The test OpenID provider on a free loopback port, with the given clients and users.

    ``clients`` are oidc-provider client metadata; ``users`` are ``{sub, password, email,
    email_verified, name, groups, claims}`` (``claims``: any other claims, such as
    ``{"department": "sales"}``); ``ttl`` overrides lifetimes in seconds (AccessToken,
    IdToken, RefreshToken, Session, Interaction, Grant, AuthorizationCode). The ID tokens are
    signed with a fresh key per algorithm in ``algorithms`` (the first one by default);
    :attr:`jwks_private` holds them, so tests can sign tokens the IdP's JWKS verifies.
    ``resource_servers`` (``{resource: {"scope": "api:read", "format": "jwt"|"opaque"}}``)
    turns on resource indicators and the client_credentials grant: access tokens for those
    APIs, JWTs (RFC 9068) or opaque ones to introspect. ``backchannel_logout`` turns on
    Back-Channel Logout 1.0 (clients may register ``backchannel_logout_uri``).
    """

    def __init__(
        self,
        *,
        clients: list[dict[str, Any]],
        users: list[dict[str, Any]],
        host: str = "127.0.0.1",
        ttl: dict[str, int] | None = None,
        algorithms: Sequence[str] = ("ES256",),
        rotate_refresh_tokens: bool = True,
        resource_servers: dict[str, dict[str, Any]] | None = None,
        backchannel_logout: bool = False,
    ) -> None:
        if host not in _ALLOWED_HOSTS:
            raise ValueError(f"host must be one of {_ALLOWED_HOSTS} (the IdP listens on loopback)")
        self.clients = [dict(client) for client in clients]
        self.users = [dict(user) for user in users]
        self.host = host
        self.ttl = dict(ttl or {})
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.resource_servers = dict(resource_servers or {})
        self.backchannel_logout = backchannel_logout
        self.jwks_private: dict[str, Any] = generate_private_jwks(tuple(algorithms))
        self.port = free_port()
        self.dir: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses ----------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer identifier, exactly as the IdP states it (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """An absolute URL on the IdP for ``path`` (which starts with ``/``)."""
        return self.issuer + path

    @property
    def config_path(self) -> Path:
        if self.dir is None:
            raise RuntimeError("the IdP is not started")
        return Path(self.dir) / "config.json"

    def metadata(self) -> dict[str, Any]:
        """The discovery document (``/.well-known/openid-configuration``)."""
        response = httpx.get(self.url("/.well-known/openid-configuration"), timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        node = find_program("node")
        ensure_idp_packages()
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="secure-mw-idp-")
        try:
            for attempt in range(3):
                if attempt:
                    self.port = free_port()  # another process took the port meanwhile
                try:
                    self._launch(node)
                    return
                except _PortTaken:
                    continue
            raise RuntimeError(f"the IdP could not get a free port:\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, node: str) -> None:
        self._write_config()
        self._close_log()
        self._log = open(Path(self._dir()) / "idp.log", "wb")  # noqa: SIM115 - open while it runs
        self.proc = subprocess.Popen(
            [node, str(IDP_DIR / "server.mjs"), "--port", str(self.port),
             "--config", str(self.config_path)],
            cwd=IDP_DIR, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(self.proc)
        except (RuntimeError, httpx.HTTPError) as exc:
            self._terminate()
            log = self.log_text()
            if "EADDRINUSE" in log:
                raise _PortTaken from exc
            raise RuntimeError(f"the IdP did not start: {exc}\n{log}") from exc

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll until our own server says it listens (not merely something on the port)."""
        deadline = time.monotonic() + _START_TIMEOUT
        wait_for_port(self.port, timeout=_START_TIMEOUT, proc=proc)
        while f"listening on {self.issuer}" not in self.log_text():
            if proc.poll() is not None:
                raise RuntimeError(f"the IdP exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the IdP did not say it listens after {_START_TIMEOUT} s")
            time.sleep(0.02)
        health = httpx.get(self.url("/__test/health"), timeout=5)
        if health.status_code != 200:
            raise RuntimeError(f"/__test/health answered {health.status_code}")

    def _dir(self) -> str:
        if self.dir is None:
            raise RuntimeError("the IdP is not started")
        return self.dir

    def _write_config(self) -> None:
        config = {
            "issuer": self.issuer,
            "clients": self.clients,
            "users": self.users,
            "jwks": self.jwks_private,
            "ttl": self.ttl,
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
            "resource_servers": self.resource_servers,
            "backchannel_logout": self.backchannel_logout,
        }
        data = json.dumps(config, indent=2).encode("utf-8")
        path = self.config_path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def log_text(self) -> str:
        """What the IdP printed so far (stdout and stderr), for failure messages."""
        if self.dir is None:
            return ""
        try:
            return (Path(self.dir) / "idp.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self._terminate()
        self._close_log()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> IdPServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- test control ---------------------------------------------------------------------

    def _control(self, path: str, body: Mapping[str, Any] | None = None) -> None:
        response = httpx.post(self.url("/__test/" + path), json=body or {}, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"IdP /__test/{path}: {response.status_code} {response.text}")

    def disable_user(self, sub: str) -> None:
        """The account disappears: no login, refresh grants fail (invalid_grant), no userinfo."""
        self._control(f"users/{quote(sub, safe='')}/disable")

    def enable_user(self, sub: str) -> None:
        """Undo :meth:`disable_user`."""
        self._control(f"users/{quote(sub, safe='')}/enable")

    def set_claims(self, sub: str, claims: Mapping[str, Any]) -> None:
        """Replace the user's other claims (names some user had in the config) from now on."""
        self._control(f"users/{quote(sub, safe='')}/claims", claims)

    def set_groups(self, sub: str, groups: Sequence[str]) -> None:
        """The user's groups from now on (userinfo and new ID tokens)."""
        self._control(f"users/{quote(sub, safe='')}/groups", {"groups": list(groups)})

    def set_jwks(self, mode: str) -> None:
        """What ``/jwks`` answers from now on: ``"normal"`` (the key set), ``"garbage"``
        (200 with invalid JSON), ``"empty"`` (``{"keys": []}``) or ``"error"`` (503)."""
        self._control("jwks", {"mode": mode})

    def jwks_requests(self) -> int:
        """How many times ``/jwks`` was fetched since the start."""
        response = httpx.get(self.url("/__test/jwks"), timeout=10)
        response.raise_for_status()
        return int(response.json()["requests"])

    def tamper_next_id_token(
        self, claims: Mapping[str, Any], remove: Sequence[str] = ()
    ) -> None:
        """The next token endpoint response carries an ID token with ``claims`` merged in and
        ``remove`` taken out, re-signed with the IdP's own key and kid. One-shot."""
        self._control("tamper", {"id_token_claims": dict(claims), "remove": list(remove)})


class _PortTaken(Exception):
    pass


# -- driving the provider's pages with httpx ---------------------------------------------


class _Form:
    def __init__(self, attrs: dict[str, str]) -> None:
        self.action = attrs.get("action", "")
        self.method = attrs.get("method", "get").lower()
        self.id = attrs.get("id")
        self.fields: dict[str, str] = {}  # hidden and prefilled inputs
        self.names: set[str] = set()  # every named input (of any type)


class _FormParser(HTMLParser):
    """The forms of a page: action, method, and the inputs that name them (``form=id``
    associates an input outside a form with it, as oidc-provider's logout page does)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self._current: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form":
            self._current = _Form(values)
            self.forms.append(self._current)
        elif tag in ("input", "button", "textarea", "select"):
            form = self._current
            if "form" in values:
                form = next((f for f in self.forms if f.id == values["form"]), form)
            name = values.get("name")
            if form is None or not name:
                return
            form.names.add(name)
            if tag == "input" and values.get("type", "text").lower() == "hidden":
                form.fields[name] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _forms(html: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _describe(response: httpx.Response) -> str:
    return f"{response.status_code} from {response.request.method} {response.url}: " \
           f"{response.text[:600]}"


def dev_login(
    client: httpx.Client, authorization_url: str, *, username: str, password: str
) -> str:
    """Log in at the IdP with ``client`` (which keeps the IdP's cookies) and return the URL the
    IdP finally redirects to outside itself: the client's redirect_uri with ``code``, ``state``
    and ``iss`` (or ``error``). Fills the login form, accepts the consent form if shown.

    Raises :class:`AssertionError` if the login is refused (the login form comes back) or the
    IdP answers something else than a redirect or one of its forms.
    """
    idp = _origin(authorization_url)
    response = client.get(authorization_url, follow_redirects=False)
    logins = 0
    for _ in range(_MAX_STEPS):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if _origin(location) != idp:
                return location
            response = client.get(location, follow_redirects=False)
            continue
        if response.status_code != 200:
            raise AssertionError(f"the IdP refused the login flow: {_describe(response)}")
        forms = _forms(response.text)
        login = next((f for f in forms if "password" in f.names), None)
        consent = next((f for f in forms if f.fields.get("prompt") == "consent"), None)
        if login is not None:
            if logins:
                raise AssertionError(
                    f"the IdP showed its login form again: login refused for {username!r} "
                    "(wrong password or disabled user?)"
                )
            logins += 1
            data = {**login.fields, "login": username, "password": password}
            form = login
        elif consent is not None:
            data, form = dict(consent.fields), consent
        else:
            raise AssertionError(f"no login or consent form in {_describe(response)}")
        action = urljoin(str(response.url), form.action or str(response.url))
        response = client.post(action, data=data, follow_redirects=False)
    raise AssertionError(f"the login flow did not end after {_MAX_STEPS} steps")


def rp_logout(client: httpx.Client, end_session_url: str) -> str:
    """Follow the IdP's RP-initiated logout from ``end_session_url`` (with ``id_token_hint``
    or ``client_id``, ``post_logout_redirect_uri`` and ``state``), confirm it with
    ``logout=yes``, and return the final location: the post_logout_redirect_uri with ``state``
    (or the IdP's own success page when none was given).

    Raises :class:`AssertionError` when the IdP refuses (e.g. an unregistered redirect URI).
    """
    idp = _origin(end_session_url)
    response = client.get(end_session_url, follow_redirects=False)
    confirmed = False
    for _ in range(_MAX_STEPS):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if _origin(location) != idp:
                return location
            response = client.get(location, follow_redirects=False)
            continue
        if response.status_code != 200:
            raise AssertionError(f"the IdP refused the logout: {_describe(response)}")
        forms = [f for f in _forms(response.text) if f.method == "post"]
        if not forms:
            if confirmed:
                return str(response.url)  # the IdP's own "signed out" page
            raise AssertionError(f"no logout form in {_describe(response)}")
        if confirmed:
            raise AssertionError(f"the IdP asked again after logout=yes: {_describe(response)}")
        form = forms[0]
        data = {**form.fields, "logout": "yes"}
        action = urljoin(str(response.url), form.action or str(response.url))
        response = client.post(action, data=data, follow_redirects=False)
        confirmed = True
    raise AssertionError(f"the logout flow did not end after {_MAX_STEPS} steps")
