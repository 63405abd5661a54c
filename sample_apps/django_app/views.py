"""The sample app's pages: who you are, an admin-only page, a JSON API route and a page that
needs two factors."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape

from secure_mw.contrib.django.decorators import login_required, require


def _page(title: str, body: str) -> HttpResponse:
    return HttpResponse(f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1>"
                        f"{body}<p><a href='/.auth/logout'>Sign out</a></p>")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    return _page(f"Hello, {user.get_full_name() or user.get_username()}",
                 f"<p>Django user <code>{escape(user.get_username())}</code>, groups "
                 f"{escape(', '.join(request.identity.groups) or 'none')}.</p>"
                 "<ul><li><a href='/admin-only/'>Admins only</a></li>"
                 "<li><a href='/api/me'>JSON API</a></li>"
                 "<li><a href='/two-factor/'>Two factors</a></li></ul>")


@require(groups="admins")
def admin_only(request: HttpRequest) -> HttpResponse:
    return _page("Admins only", f"<p>Welcome, {escape(request.user.get_username())}.</p>")


@login_required
def api_me(request: HttpRequest) -> JsonResponse:
    identity = request.identity
    return JsonResponse({"user": request.user.get_username(), "email": request.user.email,
                         "groups": sorted(request.user.groups.values_list("name", flat=True)),
                         "auth_level": identity.auth_level, "source": identity.source})


@require(auth_level=2)
def two_factor(request: HttpRequest) -> HttpResponse:
    return _page("Two factors", "<p>You signed in with a second factor.</p>")


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
