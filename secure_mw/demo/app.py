"""The demo app: a small WSGI app that shows what the secure_mw stack around it does.

``run.py`` wraps it in ``protect()``: security headers with a per-request CSP nonce, the
trusted client address, the open-redirect guard, the built-in password login (or an OpenID
provider) with its sessions, the access rules and the signed identity header. The page shows
who is signed in and which rule let them in, and keeps an encrypted visit counter cookie
bound to its name by associated data: a tampered cookie is refused, audited and reset, never
a 500. ``/two-factor`` needs the second step; ``/healthz`` is public. It uses Werkzeug's
request and response objects (a base dependency), so the demo runs on a plain install.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from secure_mw import Settings
from secure_mw.audit import AuditLogger
from secure_mw.crypto import KeyRing
from secure_mw.errors import DecryptError
from secure_mw.identity import Identity

COOKIE = "demo_visits"
AAD = b"cookie:" + COOKIE.encode()

WSGIApp = Any


def create_app(settings: Settings, ring: KeyRing, *, audit: AuditLogger | None = None,
               key_source: str | None = None) -> WSGIApp:
    audit = audit or AuditLogger(fmt="json" if settings.audit.format == "json" else "logfmt",
                                 logger=logging.getLogger(settings.audit.logger))

    def visits_from(request: Request) -> int:
        token = request.cookies.get(COOKIE)
        if not token:
            return 0
        try:
            return int(ring.decrypt(token, AAD).decode("ascii"))
        except (DecryptError, ValueError, UnicodeDecodeError):
            audit.event("cookie_rejected", remote_ip=request.remote_addr or "",
                        method=request.method, host=request.host, path=request.path,
                        reason="visit counter cookie failed authentication")
            return 0

    def two_factor(request: Request) -> Response:
        identity: Identity | None = request.environ.get("secure_mw.identity")
        if identity is None or identity.auth_level < 2:
            # (The two_factor policy of access rules will do this for any path.)
            return Response(status=303, headers={"Location": "/.auth/2fa?rd=/two-factor"})
        name = html.escape(identity.display_name)
        return Response(f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Two-step page</title></head><body><h1>Two-step page</h1>
<p id="two-factor">{name} passed the second step (TOTP).</p><p><a href="/">Back</a></p>
</body></html>""", content_type="text/html; charset=utf-8")

    def index(request: Request) -> Response:
        visits = visits_from(request) + 1
        summary = html.escape(settings.summary(encryption_source=key_source))
        nonce = html.escape(request.environ.get("secure_mw.csp_nonce") or "", quote=True)
        identity: Identity | None = request.environ.get("secure_mw.identity")
        who = html.escape(identity.display_name if identity else "nobody")
        groups = html.escape(", ".join(identity.groups) if identity else "")
        decision = request.environ.get("secure_mw.decision")
        rule = html.escape(decision.reason if decision else "no access rules configured")
        body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>secure_mw demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">body{{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto}}
pre{{overflow-x:auto}}
</style></head>
<body>
<h1>secure_mw demo</h1>
<p>Signed in as <strong id="who">{who}</strong> (groups: {groups}).
Let in by <strong id="rule">{rule}</strong>.
<a href="/two-factor">A page that needs a second step</a> ·
<a href="/.auth/logout">Sign out</a></p>
<p>This page has been visited <strong id="visits">{visits}</strong> time(s) in this browser.
The counter lives in an encrypted cookie (XChaCha20-Poly1305, bound to its name);
change one character of it and it is refused, audited and reset. Every response carries
secure_mw's security headers (a per-request CSP nonce styles this page), and redirect
parameters that leave this site are refused.</p>
<h2>Effective configuration</h2>
<pre>{summary}</pre>
<p>Key ring ids: <code>{html.escape(", ".join(ring.key_ids))}</code></p>
</body></html>"""
        response = Response(body, content_type="text/html; charset=utf-8")
        response.set_cookie(
            COOKIE, ring.encrypt(str(visits).encode("ascii"), AAD), httponly=True,
            samesite="Lax", secure=request.scheme == "https", max_age=86400,
        )
        return response

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        if request.method not in ("GET", "HEAD"):
            response = Response("method not allowed\n", status=405, content_type="text/plain",
                                headers={"Allow": "GET, HEAD"})
        elif request.path == "/healthz":
            response = Response(json.dumps({"status": "ok"}), content_type="application/json")
        elif request.path == "/two-factor":
            response = two_factor(request)
        elif request.path == "/":
            response = index(request)
        else:
            response = Response("not found\n", status=404, content_type="text/plain")
        result: Iterable[bytes] = response(environ, start_response)
        return result

    return app
