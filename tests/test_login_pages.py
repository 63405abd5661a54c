"""The app's own look for the sign-in, second-step and sign-out pages: layouts checked at
start-up (every problem with its key), hostile files and URLs refused, values escaped, a
fresh CSP nonce per page, files served with a year of caching; then end to end on real
servers, both flavours."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from secure_mw import Settings, asgi, wsgi
from secure_mw.errors import ConfigError
from secure_mw.guards.timing import LoginDelay
from secure_mw.login import UsersFile
from secure_mw.login.pages import ASSET_CACHE, Pages, PagesError, check_template
from secure_mw.session import MemorySessionStore
from tests.apps import FLAVOURS, asgi_inner, browser, uvicorn_server, wsgi_inner, wsgi_server
from tests.test_local_login_e2e import FAST, KEY

LAYOUT = """<!doctype html>
<html lang="$lang"><head><meta charset="utf-8"><title>$title</title>
<link rel="stylesheet" href="$stylesheet_url">
<style nonce="$nonce">header{padding:1rem}</style></head>
<body><header id="brand"><img src="$logo_url" alt="$app_name"> $app_name &middot; $$5 plan</header>
<main class="card">$content</main></body></html>
"""
LOGO = (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="#c00"/></svg>')


def problems(tmp_path: Path, pages: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping({"pages": pages}, environ={}, base_dir=tmp_path)
    found: dict[str, str] = {}
    for p in caught.value.problems:
        found[p.path] = f"{found.get(p.path, '')} | {p.message}"
    return found


# -- layouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "message"), [
    ("<main></main>", "$content exactly once"),
    ("$content $content", "it holds it 2 times"),
    ("$content ${content}", "it holds it 2 times"),
    ("$content $password", "unknown placeholder $password"),
    ("$content costs 5$", "a '$' that starts no placeholder"),
    ("$content\n<script>steal()</script>", 'line 2: <script> without nonce="$nonce"'),
    ("$content<STYLE>p{}</STYLE>", "<style> without nonce"),
    ('$content<script nonce="abc">x()</script>', "<script> without nonce"),
    ('$content<img src=x onerror="steal()">', "inline onerror= attribute"),
    ('<p style="color:red">$content</p>', "inline style= attribute"),
    ('<form action="https://evil.example/">$content</form>', "a <form> of its own"),
    ('<base href="https://evil.example/">$content', "<base>"),
    ('<a href="javascript:steal()">x</a>$content', "javascript: URL"),
])
def test_a_layout_that_would_drop_a_protection_is_refused(layout: str, message: str) -> None:
    with pytest.raises(PagesError) as caught:
        check_template(layout)
    assert message in str(caught.value)


def test_a_good_layout_passes() -> None:
    check_template(LAYOUT)
    check_template("<main>${content}</main><script nonce='${nonce}'>1</script>")


def test_every_problem_is_named_with_its_key_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "no-content.html").write_text("<main></main>")
    (tmp_path / "latin1.html").write_bytes(b"$content \xe9")
    (tmp_path / "big.css").write_bytes(b"a" * (512 * 1024 + 1))
    (tmp_path / "dir.svg").mkdir()
    found = problems(tmp_path, {
        "template": "no-content.html", "stylesheet": "big.css", "logo": "dir.svg",
        "stylesheet_url": "https://cdn.example/x.css", "logo_url": "http://cdn.example/l.png",
        "lang": "en;x"})
    assert "$content exactly once" in found["pages.template"]
    assert "larger than 512 KiB" in found["pages.stylesheet"]
    assert "give either stylesheet or stylesheet_url" in found["pages.stylesheet"]
    assert "not a regular file" in found["pages.logo"]
    assert "https URL" in found["pages.logo_url"]
    assert "language tag" in found["pages.lang"]
    assert "not UTF-8" in problems(tmp_path, {"template": "latin1.html"})["pages.template"]
    assert "cannot be read" in problems(tmp_path, {"template": "absent.html"})[
        "pages.template"]


def test_hostile_paths_are_refused_without_being_opened(tmp_path: Path) -> None:
    """A FIFO would block the start-up forever if opened, a device would be read without
    end: both are refused by their type first; a logo path is an image by its name."""
    os.mkfifo(tmp_path / "fifo.html")
    found = problems(tmp_path, {"template": "fifo.html", "stylesheet": "/dev/zero",
                                "logo": "../../../../etc/passwd"})
    assert "not a regular file" in found["pages.template"]
    assert "not a regular file" in found["pages.stylesheet"]
    assert "a logo is a file ending in one of" in found["pages.logo"]


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "data:text/css,body{}", "http://cdn.example/x.css",
    "https://cdn.example/x.css; script-src *", "https://cdn.example/x.css 'unsafe-inline'",
    "https://user:pw@cdn.example/x.css", "//cdn.example/x.css", "https:///x.css",
    "https://cdn.example/x.css#f", "https://cdn.example/a,b.css",
    "https://cdn.example/{nonce}.css"])
def test_urls_no_csp_can_name_exactly_are_refused(tmp_path: Path, url: str) -> None:
    assert "pages.stylesheet_url" in problems(tmp_path, {"stylesheet_url": url})


# -- rendering -------------------------------------------------------------------------------


def test_values_are_escaped_and_each_page_gets_its_own_nonce() -> None:
    pages = Pages(app_name='<script>x</script>"', template=LAYOUT,
                  stylesheet=b"body{}", logo=(".svg", LOGO))
    one = pages.render(200, "Sign in", "<b>hi</b>", body_html='<form id="ours"></form>')
    two = pages.render(200, "Sign in", "m")
    text = one.body.decode()
    assert "<script>x" not in text and "&lt;script&gt;x&lt;/script&gt;&quot;" in text
    assert "&lt;b&gt;hi&lt;/b&gt;" in text and '<form id="ours"></form>' in text
    assert "$5 plan" in text
    headers = dict(one.headers)
    nonce = re.search(r"'nonce-([^']+)'", headers["content-security-policy"])
    assert nonce and f'<style nonce="{nonce.group(1)}">' in text
    assert nonce.group(1) not in two.body.decode()
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src 'self'" in csp
    assert "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and headers["cache-control"] == "no-store"


def test_a_url_is_allowed_exactly_by_the_csp() -> None:
    pages = Pages(stylesheet_url="https://cdn.example/brand.css",
                  logo_url="https://cdn.example/logo.png")
    csp = dict(pages.render(200, "t", "m").headers)["content-security-policy"]
    assert "style-src 'nonce-" in csp and " https://cdn.example/brand.css;" in csp
    assert "img-src https://cdn.example/logo.png;" in csp
    assert pages.assets == {}


def test_without_settings_the_pages_are_the_built_in_ones() -> None:
    from secure_mw.http import html_reply

    plain = Pages().render(200, "Sign in", "m", body_html="<p>x</p>")
    assert plain == html_reply(200, "Sign in", "m", body_html="<p>x</p>")


def test_files_are_served_with_hashed_names_and_a_year_of_caching() -> None:
    pages = Pages(stylesheet=b"body{color:red}", logo=(".svg", LOGO))
    logo, css = sorted(pages.assets.values(), key=lambda a: a.name)
    assert logo.name.startswith("logo-") and css.name.startswith("style-")
    got = dict(css.reply("GET").headers)
    assert got["cache-control"] == ASSET_CACHE and got["content-type"].startswith("text/css")
    svg = dict(logo.reply("GET").headers)
    assert "sandbox" in svg["content-security-policy"] and svg["x-content-type-options"]
    assert css.reply("POST").status == 405
    assert Pages(stylesheet=b"body{color:blue}").assets.keys() != {css.name}


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def branded(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "layout.html").write_text(LAYOUT)
    (tmp_path / "brand.css").write_text("#brand{background:rgb(200, 0, 0)}")
    (tmp_path / "logo.svg").write_bytes(LOGO)
    return {"title": "Acme Books", "template": "layout.html", "stylesheet": "brand.css",
            "logo": "logo.svg"}


@pytest.fixture
def app(flavour: str, tmp_path: Path, branded: dict[str, str]) -> Callable[..., Any]:
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse", groups=["admins"])

    @contextmanager
    def run(**options: Any) -> Iterator[str]:
        settings = Settings.from_mapping({
            "keys": {"encryption_keys": [KEY]}, "local_users": {"file": str(users.path)},
            "pages": branded}, environ={}, base_dir=tmp_path)
        options.setdefault("users", users)
        options.setdefault("store", MemorySessionStore())
        options.setdefault("delay", LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
        module = asgi if flavour == "asgi" else wsgi
        inner = asgi_inner() if flavour == "asgi" else wsgi_inner
        server = uvicorn_server if flavour == "asgi" else wsgi_server
        with server(module.protect(inner, settings, **options)) as url:
            yield url

    return run


def nonce_of(response: httpx.Response) -> str:
    match = re.search(r"'nonce-([^']+)'", response.headers["content-security-policy"])
    assert match, response.headers["content-security-policy"]
    return match.group(1)


def test_the_app_layout_around_our_form_on_a_real_server(app: Any) -> None:
    with app() as base, browser() as client:
        page = client.get(base + "/.auth/login?rd=/books")
        assert page.status_code == 200
        text = page.text
        assert '<header id="brand">' in text and "Acme Books" in text
        assert "<title>Sign in · Acme Books</title>" in text
        assert f'<style nonce="{nonce_of(page)}">' in text
        assert re.search(r'name="state" value="[^"]+"', text)
        assert 'autocomplete="current-password"' in text
        assert page.headers["x-frame-options"] == "DENY"        # the guards still wrap it
        css_url = re.search(r'<link rel="stylesheet" href="([^"]+)">', text)
        logo_url = re.search(r'<img src="([^"]+)" alt="Acme Books">', text)
        assert css_url and logo_url and css_url.group(1).startswith("/.auth/assets/style-")
        css = client.get(base + css_url.group(1))
        assert css.status_code == 200 and css.text == "#brand{background:rgb(200, 0, 0)}"
        assert css.headers["cache-control"] == ASSET_CACHE
        logo = client.get(base + logo_url.group(1))
        assert logo.headers["content-type"] == "image/svg+xml" and logo.content == LOGO
        assert client.get(base + "/.auth/assets/style-0000.css").status_code == 404
        # the form in the layout signs in; the sign-out pages wear the layout too
        state = re.search(r'name="state" value="([^"]+)"', text)
        assert state
        done = client.post(base + "/.auth/login", data={
            "state": state.group(1), "username": "alice", "password": "correct horse"})
        assert done.status_code == 303 and done.headers["location"] == "/books"
        out = client.get(base + "/.auth/logout")
        assert '<header id="brand">' in out.text and 'name="csrf"' in out.text
        assert f'nonce="{nonce_of(out)}"' in out.text
        code = client.get(base + "/.auth/2fa")
        assert '<header id="brand">' in code.text and 'name="csrf"' in code.text
        assert "<svg" in code.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', out.text)
        assert csrf
        bye = client.post(base + "/.auth/logout", data={"csrf": csrf.group(1)},
                          follow_redirects=True)
        assert "You are signed out." in bye.text and '<header id="brand">' in bye.text


# -- the examples of docs/login.md, copied verbatim -----------------------------------------------


def docs_example(title: str) -> str:
    """The code block of docs/login.md that follows ``<!-- example: title -->``."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "login.md").read_text()
    marker = f"<!-- example: {title} -->\n```"
    assert marker in text, f"docs/login.md has no example {title!r}"
    block = text.split(marker, 1)[1]
    return block.split("\n", 1)[1].split("```", 1)[0]


def write_docs_pages(directory: Path) -> dict[str, Any]:
    """The documented [pages] example with its documented layout, in ``directory``."""
    import tomllib

    (directory / "login.html").write_text(docs_example("pages-layout"))
    (directory / "brand.css").write_text("header{background:rgb(12, 34, 56)}")
    (directory / "logo.svg").write_bytes(LOGO)
    pages: dict[str, Any] = tomllib.loads(docs_example("pages-settings"))["pages"]
    return pages


def test_the_documented_layout_serves_the_sign_in(flavour: str, tmp_path: Path) -> None:
    pages = write_docs_pages(tmp_path)
    users = UsersFile(tmp_path / "users.toml", hasher=FAST)
    users.add("alice", password="correct horse")
    settings = Settings.from_mapping({
        "keys": {"encryption_keys": [KEY]}, "local_users": {"file": str(users.path)},
        "pages": pages}, environ={}, base_dir=tmp_path)
    module = asgi if flavour == "asgi" else wsgi
    inner = asgi_inner() if flavour == "asgi" else wsgi_inner
    server = uvicorn_server if flavour == "asgi" else wsgi_server
    app = module.protect(inner, settings, users=users, store=MemorySessionStore(),
                         delay=LoginDelay(floor=0.01, seed=0.01, jitter=0.001))
    with server(app) as base, browser() as client:
        page = client.get(base + "/.auth/login")
        assert "<footer>&copy; Acme Books &middot; prices from $5</footer>" in page.text
        assert page.text.count("<img") == 1          # the layout places the logo
        state = re.search(r'name="state" value="([^"]+)"', page.text)
        assert state
        done = client.post(base + "/.auth/login", data={
            "state": state.group(1), "username": "alice", "password": "correct horse"})
        assert done.status_code == 303


def test_a_file_broken_after_the_check_is_a_config_error_at_start_up(tmp_path: Path) -> None:
    (tmp_path / "layout.html").write_text(LAYOUT)
    settings = Settings.from_mapping({"pages": {"template": "layout.html"}}, environ={},
                                     base_dir=tmp_path)
    (tmp_path / "layout.html").write_text("<main></main>")
    with pytest.raises(ConfigError) as caught:
        Pages.from_settings(settings.pages, "/.auth/")
    assert caught.value.problems[0].path == "pages.template"


def test_a_language_alone_makes_the_pages_custom() -> None:
    assert b'<html lang="fr">' in Pages(lang="fr").render(200, "t", "m").body
