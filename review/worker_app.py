"""The counting login endpoint behind ``protect()``, as app factories for servers with
several workers: ``uvicorn --factory review.worker_app:asgi_app --workers 4`` and
``gunicorn -w 4 'review.worker_app:wsgi_app()'``. Settings from ``SECURE_MW_*``; every
password the endpoint checks is appended to ``$REVIEW_COUNT_FILE``; ``$REVIEW_FAIL_STATUS``
is its answer to a wrong password (401)."""

from __future__ import annotations

import os
from typing import Any

from review.common import CountingLogin
from secure_mw import Settings, asgi, wsgi


def _login() -> CountingLogin:
    return CountingLogin(count_file=os.environ["REVIEW_COUNT_FILE"],
                         fail_status=int(os.environ.get("REVIEW_FAIL_STATUS", "401")))


def asgi_app() -> Any:
    return asgi.protect(_login().asgi, Settings.from_environment())


def wsgi_app() -> Any:
    return wsgi.protect(_login().wsgi, Settings.from_environment())
