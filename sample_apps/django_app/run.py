"""Start the sample app: ``python -m sample_apps.django_app`` (gunicorn, the WSGI entry) or
``python -m sample_apps.django_app --asgi`` (uvicorn). The first run makes the state
directory: Django's secret key, the database, an encryption key and a users file whose
``demo`` user (in ``admins``) gets a new password at every start, printed here."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from secure_mw._files import write_secret_file
from secure_mw.crypto import KeyRing


def prepare(state_dir: str | Path, *, demo_user: bool = True) -> tuple[dict[str, str], str]:
    """Make what the app needs under ``state_dir``; returns the environment to start the
    server with and the demo user's new password ("" without ``demo_user``)."""
    state = Path(state_dir).absolute()
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, make in (("django-secret-key", lambda: secrets.token_urlsafe(50)),
                       ("encryption.keys", KeyRing.new_key_text)):
        if not (state / name).exists():
            write_secret_file(state / name, (make() + "\n").encode())
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "sample_apps.django_app.settings",
           "DJANGO_APP_STATE": str(state)}
    password = ""
    if demo_user:
        from secure_mw.login import UsersFile
        from secure_mw.login.policy import PasswordPolicy

        policy = PasswordPolicy()
        users = UsersFile(state / "users.toml", policy=policy)
        password = secrets.token_urlsafe(16)
        while policy.problems(password, username="demo"):   # a rare chance: draw again
            password = secrets.token_urlsafe(16)
        if users.get("demo") is None:
            users.add("demo", password=password, display_name="Demo Admin",
                      email="demo@example.com", groups=["admins"])
        else:
            users.set_password("demo", password)
    os.environ.update(env)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("check")     # every SECURE_MW problem, as secure_mw.E... / W...
    return env, password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sample_apps.django_app")
    parser.add_argument("--bind", default="127.0.0.1:8000")
    parser.add_argument("--state-dir", default=".secure-mw-django")
    parser.add_argument("--asgi", action="store_true", help="serve asgi.py with uvicorn")
    args = parser.parse_args(argv)
    oidc = bool(os.environ.get("SECURE_MW_OIDC__ISSUER") or os.environ.get("SECURE_MW_CONFIG"))
    env, password = prepare(args.state_dir, demo_user=not oidc)
    host, _, port = args.bind.rpartition(":")
    env.setdefault("DJANGO_APP_URL", f"http://{host}:{port}")
    if password:
        print(f"django_app: sign in as 'demo' with password {password!r} (new at every start)")
    print(f"django_app: open http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    if args.asgi:
        command = [sys.executable, "-m", "uvicorn", "sample_apps.django_app.asgi:application",
                   "--host", host, "--port", port, "--no-proxy-headers"]
    else:
        command = [sys.executable, "-m", "gunicorn", "sample_apps.django_app.wsgi:application",
                   "--bind", args.bind, "--workers", "1", "--threads", "4"]
    os.execvpe(command[0], command, env)   # noqa: S606 - our own interpreter, fixed arguments
