"""The sample app: FastAPI routes that say what they need with secure_mw's dependencies.

``create_app(settings)`` returns a plain FastAPI object with ``SecureMW`` added, so
``uvicorn``, ``include_router`` and test clients use it as any FastAPI app. Every page needs a
sign-in (the stack's default); ``/admin`` needs the ``admins`` group, ``/two-factor`` a second
factor; ``/api/...`` is JSON; ``/healthz`` is public by an access rule.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse

from secure_mw import Settings
from secure_mw.contrib.fastapi import SecureMW, current_identity, require
from secure_mw.identity import Identity

api = APIRouter(prefix="/api", tags=["api"])


@api.get("/me")
def me(identity: Identity = Depends(current_identity)) -> dict[str, Any]:
    """Who is signed in, as JSON."""
    return identity.as_dict()


@api.get("/reports", dependencies=[Depends(require(groups=["admins"]))])
def reports() -> list[dict[str, Any]]:
    """Figures only admins may read."""
    return [{"month": "2026-11", "signups": 42}, {"month": "2026-12", "signups": 17}]


def _page(request: Request, title: str, body: str) -> HTMLResponse:
    nonce = html.escape(request.scope.get("secure_mw.csp_nonce") or "", quote=True)
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style nonce="{nonce}">body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto}}
</style></head><body><h1>{html.escape(title)}</h1>
{body}
<p><a href="/">Home</a> · <a href="/admin">Admin</a> · <a href="/two-factor">Two-step page</a> ·
<a href="/docs">API docs</a> · <a href="/.auth/logout">Sign out</a></p>
</body></html>""")


def create_app(settings: Settings, **options: Any) -> FastAPI:
    """The app; ``options`` go to ``SecureMW`` (``keyring``, ``store``, ...)."""
    app = FastAPI(title="secure_mw sample")
    app.add_middleware(SecureMW, settings=settings, **options)
    app.include_router(api)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, identity: Identity = Depends(current_identity)) -> HTMLResponse:
        groups = ", ".join(identity.groups) or "none"
        return _page(request, "secure_mw sample", f'<p>Signed in as <strong id="who">'
                     f"{html.escape(identity.display_name)}</strong> (groups: "
                     f"{html.escape(groups)}).</p>")

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request, identity: Identity = Depends(require(groups=["admins"]))
              ) -> HTMLResponse:
        return _page(request, "Admin", f'<p id="admin">Welcome, '
                     f"{html.escape(identity.display_name)}: only admins see this page.</p>")

    @app.get("/two-factor", response_class=HTMLResponse)
    def two_factor(request: Request, identity: Identity = Depends(require(auth_level=2))
                   ) -> HTMLResponse:
        return _page(request, "Two-step page", f'<p id="two-factor">'
                     f"{html.escape(identity.display_name)} passed the second step.</p>")

    return app
