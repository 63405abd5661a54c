"""Django settings of the sample app: the state directory ($DJANGO_APP_STATE, made by
run.py) holds the secret key, the database, the encryption key and the users file."""

import os
from pathlib import Path

STATE = Path(os.environ.get("DJANGO_APP_STATE", ".secure-mw-django")).absolute()
# Made by run.py; without it Django refuses to start (an empty SECRET_KEY).
SECRET_KEY = (STATE / "django-secret-key").read_text().strip() \
    if (STATE / "django-secret-key").exists() else ""
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "sample_apps.django_app.urls"
WSGI_APPLICATION = "sample_apps.django_app.wsgi.application"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "secure_mw.contrib.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "secure_mw.contrib.django.middleware.IdentityMiddleware",
]
AUTHENTICATION_BACKENDS = ["secure_mw.contrib.django.backends.IdentityBackend"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": STATE / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

# secure_mw: a TOML file when $SECURE_MW_CONFIG names one; otherwise the built-in login
# with the demo's users file. SECURE_MW_OIDC__ISSUER (and __CLIENT_ID, __CLIENT_SECRET) in
# the environment switch the sign-in to an OpenID provider.
SECURE_MW = os.environ.get("SECURE_MW_CONFIG") or {
    "server": {"external_url": os.environ.get("DJANGO_APP_URL", "http://127.0.0.1:8000")},
    "keys": {"encryption_keys_file": str(STATE / "encryption.keys")},
    "local_users": {"file": str(STATE / "users.toml"), "totp_file": str(STATE / "totp.json")},
    "access_control": {"default_policy": "deny", "rules": [
        {"resources": ["^/healthz$"], "policy": "bypass"},
        {"policy": "authenticated"},
    ]},
}
LOGOUT_REDIRECT_URL = "/.auth/logout"    # Django's own logout goes on to secure_mw's
SECURE_MW_SYNC_GROUPS = True
SECURE_MW_STAFF_GROUPS = ["admins"]
