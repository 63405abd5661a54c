"""The sample app: a public home page, an admin-only page, a JSON API route and a page that
needs two factors, behind the whole secure_mw stack through ``secure_mw.contrib.flask``.

Its state (an encryption key, the users file, enrolled TOTP secrets) lives in a state
directory (``$SAMPLE_STATE_DIR``, default ``.secure-mw-flask-app``), made on first use. The
built-in password login is the default; set ``SECURE_MW_OIDC__ISSUER`` (and the client's
``SECURE_MW_OIDC__CLIENT_ID`` / ``SECURE_MW_OIDC__CLIENT_SECRET``) to sign in through an
OpenID provider instead. Any ``SECURE_MW_*`` variable overrides the configuration.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, render_template_string

from secure_mw import Settings
from secure_mw._files import write_secret_file
from secure_mw.contrib.flask import SecureMW, current_identity, login_required, require
from secure_mw.crypto import KeyRing
from secure_mw.login import UsersFile

DEFAULT_STATE_DIR = ".secure-mw-flask-app"

# The home page and the health check are public; every other page needs a login, and the
# views' decorators add what they need on top.
RULES = [
    {"resources": ["^/$", "^/healthz$"], "policy": "bypass"},
    {"policy": "authenticated"},
]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{{ csp_nonce }}">body{font-family:system-ui,sans-serif;max-width:40rem;
margin:2rem auto}</style></head><body>
<h1>{{ title }}</h1>
{% if current_identity %}
<p>Signed in as <strong id="who">{{ current_identity.display_name }}</strong>
(groups: {{ current_identity.groups | join(", ") or "none" }};
factors: {{ current_identity.auth_level }}). <a href="/.auth/logout">Sign out</a></p>
{% else %}
<p id="who">Nobody is signed in. <a href="/.auth/login?rd=/">Sign in</a></p>
{% endif %}
<p>{{ text }}</p>
<ul><li><a href="/">Home</a></li><li><a href="/admin">Admins only</a></li>
<li><a href="/api/me">The JSON API</a></li><li><a href="/two-factor">Two factors</a></li></ul>
</body></html>"""


def prepare(state_dir: str | os.PathLike[str], *, new_passwords: bool = False
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """The app's configuration mapping, making what it needs under ``state_dir``: the key
    file, and (for the built-in login) the users file with an ``admin`` (group ``admins``)
    and a ``user``. Returns the mapping and the passwords it set (none when the users file
    was there already, unless ``new_passwords``)."""
    state = Path(state_dir)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = state / "encryption.keys"
    if not keys.exists():
        write_secret_file(keys, (KeyRing.new_key_text() + "\n").encode())
    config: dict[str, Any] = {
        "keys": {"encryption_keys_file": str(keys)},
        "local_users": {"file": str(state / "users.toml"), "totp_file": str(state / "totp.json"),
                        "totp_issuer": "secure_mw Flask sample"},
        "access_control": {"default_policy": "deny", "rules": RULES},
    }
    passwords: dict[str, str] = {}
    if Settings.from_mapping(config, environ=os.environ).oidc is not None:
        return config, passwords          # the provider's users sign in
    if not (state / "users.toml").exists():
        write_secret_file(state / "users.toml", b"")
    users = UsersFile(state / "users.toml")
    for name, groups in (("admin", ["admins"]), ("user", [])):
        if users.get(name) is None:
            passwords[name] = _new_password(users, name)
            users.add(name, password=passwords[name], display_name=name.title(),
                      email=f"{name}@example.com", groups=groups)
        elif new_passwords:
            passwords[name] = _new_password(users, name)
            users.set_password(name, passwords[name])
    return config, passwords


def _new_password(users: UsersFile, name: str) -> str:
    password = secrets.token_urlsafe(12)
    while users.policy and users.policy.problems(password, username=name):  # rare: again
        password = secrets.token_urlsafe(12)
    return password


def create_app(config: object = None) -> Flask:
    """The app; ``config`` is what ``app.config["SECURE_MW"]`` takes (default: the
    sample's own, from :func:`prepare` on ``$SAMPLE_STATE_DIR``)."""
    app = Flask(__name__)
    if config is None:
        config, made = prepare(os.environ.get("SAMPLE_STATE_DIR", DEFAULT_STATE_DIR))
        for name, password in made.items():
            app.logger.warning("sample user %r created with password %r", name, password)
    app.config["SECURE_MW"] = config
    SecureMW(app)

    @app.get("/")
    def index() -> str:
        return render_template_string(PAGE, title="secure_mw Flask sample",
                                      text="This page is public.")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/admin")
    @require(groups="admins")
    def admin() -> str:
        return render_template_string(PAGE, title="Admins only",
                                      text="Only members of the admins group see this.")

    @app.get("/api/me")
    @login_required
    def api_me() -> dict[str, Any]:
        return {"user": current_identity.as_dict()}     # type: ignore[union-attr]

    @app.get("/two-factor")
    @require(auth_level=2)
    def two_factor() -> str:
        return render_template_string(PAGE, title="Two factors",
                                      text="You passed the second step (TOTP).")

    return app
