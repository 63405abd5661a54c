"""Security response headers: defaults, presets, HSTS, overrides, app headers, the CSP nonce
and start-up validation."""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace
from typing import Any

import pytest

from secure_mw.guards.headers import (
    API_CSP,
    POWERFUL_FEATURES,
    SecurityHeaders,
    permissions_policy,
)
from secure_mw.settings import HeadersSettings, Settings

NONCE = "AAAAAAAAAAAAAAAAAAAAAA=="


def as_dict(lines: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out = {name.decode(): value.decode() for name, value in lines}
    assert len(out) == len(lines), "a header name came out twice"
    return out


def page(headers: SecurityHeaders | None = None, *, path: str = "/", https: bool = True,
         nonce: str | None = NONCE, present: Any = frozenset()) -> dict[str, str]:
    headers = headers or SecurityHeaders()
    return as_dict(headers.for_response(path=path, https=https, nonce=nonce, present=present))


# --- defaults --------------------------------------------------------------------------------

def test_page_defaults_exact() -> None:
    got = page()
    pp = got.pop("permissions-policy")
    assert got == {
        "x-content-type-options": "nosniff",
        "referrer-policy": "strict-origin-when-cross-origin",
        "x-frame-options": "DENY",
        "x-dns-prefetch-control": "off",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-origin",
        "content-security-policy": (
            f"default-src 'self'; script-src 'self' 'nonce-{NONCE}'; "
            f"style-src 'self' 'nonce-{NONCE}'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'"),
        "strict-transport-security": "max-age=31536000; includeSubDomains",
    }
    assert pp == ", ".join(f"{feature}=()" for feature in POWERFUL_FEATURES)


def test_permissions_policy_disables_every_powerful_feature() -> None:
    value = page()["permissions-policy"]
    items = dict(item.split("=", 1) for item in value.split(", "))
    required = {
        "accelerometer", "ambient-light-sensor", "autoplay", "battery", "camera",
        "display-capture", "document-domain", "encrypted-media", "fullscreen", "geolocation",
        "gyroscope", "hid", "idle-detection", "magnetometer", "microphone", "midi", "payment",
        "picture-in-picture", "publickey-credentials-get", "screen-wake-lock", "serial", "usb",
        "web-share", "xr-spatial-tracking",
    }
    assert required <= items.keys()
    assert set(items.values()) == {"()"}
    assert len(items) == len(POWERFUL_FEATURES)


def test_permissions_policy_helper() -> None:
    value = permissions_policy(allow=["fullscreen", "clipboard-write"])
    assert "fullscreen=(self)" in value
    assert value.endswith("clipboard-write=(self)")
    assert "camera=()" in value
    assert permissions_policy(allow={"camera": '(self "https://a.example")'},
                              features=["camera"]) == 'camera=(self "https://a.example")'
    with pytest.raises(ValueError, match="feature name"):
        permissions_policy(allow=["Camera=()"])


def test_hsts_only_over_https() -> None:
    assert "strict-transport-security" not in page(https=False)
    assert page(https=True)["strict-transport-security"] == \
        "max-age=31536000; includeSubDomains"
    # Everything else is the same either way.
    plain, secure = page(https=False), page(https=True)
    secure.pop("strict-transport-security")
    assert plain == secure


def test_hsts_variants() -> None:
    assert page(SecurityHeaders(hsts_include_subdomains=False))[
        "strict-transport-security"] == "max-age=31536000"
    assert page(SecurityHeaders(hsts_max_age=15552000.9))[
        "strict-transport-security"] == "max-age=15552000; includeSubDomains"
    assert page(SecurityHeaders(hsts_max_age=2 * 31536000, hsts_preload=True))[
        "strict-transport-security"] == "max-age=63072000; includeSubDomains; preload"
    assert page(SecurityHeaders(hsts_max_age=0))["strict-transport-security"] == \
        "max-age=0; includeSubDomains"


@pytest.mark.parametrize("kwargs", [
    {"hsts_preload": True, "hsts_include_subdomains": False},
    {"hsts_preload": True, "hsts_max_age": 31535999},
    {"hsts_preload": True, "hsts_max_age": 15552000, "hsts_include_subdomains": False},
])
def test_preload_needs_subdomains_and_a_year(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"Strict-Transport-Security.*preload"):
        SecurityHeaders(**kwargs)


@pytest.mark.parametrize("max_age", [-1, float("nan"), float("inf"), True, "31536000"])
def test_bad_hsts_max_age(max_age: Any) -> None:
    with pytest.raises(ValueError, match="hsts_max_age"):
        SecurityHeaders(hsts_max_age=max_age)


def test_api_preset() -> None:
    api = SecurityHeaders(preset="api")
    got = page(api)
    assert got["cache-control"] == "no-store"
    assert got["pragma"] == "no-cache"
    assert got["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert got["content-security-policy"] == API_CSP
    assert got["x-content-type-options"] == "nosniff"
    assert got["x-frame-options"] == "DENY"
    assert got["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert api.uses_nonce("/") is False
    # A nonce is accepted and changes nothing.
    assert page(api, nonce=None) == got


def test_page_preset_has_no_cache_headers() -> None:
    got = page()
    assert "cache-control" not in got and "pragma" not in got


def test_bad_preset() -> None:
    with pytest.raises(ValueError, match="preset"):
        SecurityHeaders(preset="strict")


# --- the nonce -------------------------------------------------------------------------------

def test_nonce_is_128_bit_base64_and_unique() -> None:
    nonces = {SecurityHeaders.new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000
    for nonce in list(nonces)[:20]:
        assert len(base64.b64decode(nonce, validate=True)) == 16


def test_nonce_spliced_per_response() -> None:
    headers = SecurityHeaders()
    first, second = headers.new_nonce(), headers.new_nonce()
    csp1 = page(headers, nonce=first)["content-security-policy"]
    csp2 = page(headers, nonce=second)["content-security-policy"]
    assert csp1.count(f"'nonce-{first}'") == 2 and first not in csp2
    assert csp2.count(f"'nonce-{second}'") == 2
    assert "{nonce}" not in csp1 + csp2


def test_without_nonce_no_nonce_source() -> None:
    csp = page(nonce=None)["content-security-policy"]
    assert csp == ("default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
                   "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
    assert "nonce" not in csp and "unsafe" not in csp


@pytest.mark.parametrize("nonce", ["", "short", "a'b" * 8, "AAAA\r\nSet-Cookie: x=1AAAAA",
                                   "A" * 300, "AAAAAAAAAAAAAAAAAAAA; script-src *"])
def test_bad_nonce_refused(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        SecurityHeaders().for_response(path="/", https=True, nonce=nonce, present=())


def test_custom_csp_with_and_without_marker() -> None:
    headers = SecurityHeaders(csp="default-src 'none'; script-src {nonce}; img-src 'self'")
    assert page(headers)["content-security-policy"] == \
        f"default-src 'none'; script-src 'nonce-{NONCE}'; img-src 'self'"
    assert page(headers, nonce=None)["content-security-policy"] == \
        "default-src 'none'; script-src; img-src 'self'"
    fixed = SecurityHeaders(csp="default-src 'self'")
    assert fixed.uses_nonce("/") is False
    assert page(fixed)["content-security-policy"] == "default-src 'self'"


# --- overrides -------------------------------------------------------------------------------

def overridden() -> SecurityHeaders:
    return SecurityHeaders(overrides={
        "/": {"x-permitted-cross-domain-policies": "none"},
        "/api": {"Cache-Control": "no-store", "content-security-policy": API_CSP},
        "/api/public/": {"cache-control": "public, max-age=60",
                         "cross-origin-resource-policy": "cross-origin"},
        "/embed/": {"x-frame-options": None,
                    "content-security-policy":
                        "default-src 'self'; script-src 'self' {nonce}; "
                        "frame-ancestors https://partner.example"},
    })


def test_override_root_applies_everywhere() -> None:
    headers = overridden()
    for path in ("/", "/x", "/api", "/api/public/x", "/embed/a"):
        assert page(headers, path=path)["x-permitted-cross-domain-policies"] == "none"


def test_override_prefix_is_segment_aware() -> None:
    headers = overridden()
    assert page(headers, path="/api")["cache-control"] == "no-store"
    assert page(headers, path="/api/v1/users")["cache-control"] == "no-store"
    assert "cache-control" not in page(headers, path="/apix")
    assert "cache-control" not in page(headers, path="/ap")
    # "/embed/" (trailing slash) does not match "/embed" itself.
    assert page(headers, path="/embed")["x-frame-options"] == "DENY"


def test_longest_prefix_wins_and_inherits() -> None:
    got = page(overridden(), path="/api/public/feed")
    assert got["cache-control"] == "public, max-age=60"                # longest wins
    assert got["cross-origin-resource-policy"] == "cross-origin"
    assert got["content-security-policy"] == API_CSP                   # inherited from /api
    assert got["x-permitted-cross-domain-policies"] == "none"          # inherited from /


def test_override_none_removes() -> None:
    headers = overridden()
    got = page(headers, path="/embed/widget")
    assert "x-frame-options" not in got
    assert got["content-security-policy"] == (
        f"default-src 'self'; script-src 'self' 'nonce-{NONCE}'; "
        "frame-ancestors https://partner.example")
    assert headers.uses_nonce("/embed/widget") is True
    assert headers.uses_nonce("/api/x") is False


def test_override_hsts_still_https_only() -> None:
    headers = SecurityHeaders(overrides={"/": {"strict-transport-security": "max-age=600"}})
    assert page(headers)["strict-transport-security"] == "max-age=600"
    assert "strict-transport-security" not in page(headers, https=False)


def test_override_can_remove_hsts_and_csp() -> None:
    headers = SecurityHeaders(overrides={"/raw/": {"strict-transport-security": None,
                                                   "content-security-policy": None}})
    got = page(headers, path="/raw/x")
    assert "strict-transport-security" not in got and "content-security-policy" not in got
    assert "strict-transport-security" in page(headers, path="/other")


# --- app-set headers -------------------------------------------------------------------------

def test_app_headers_are_kept() -> None:
    headers = SecurityHeaders()
    present = {b"x-frame-options", b"content-security-policy", b"content-type"}
    got = page(headers, present=present)
    assert "x-frame-options" not in got and "content-security-policy" not in got
    assert got["x-content-type-options"] == "nosniff"
    # Any collection works, and without a nonce too.
    got = page(headers, present=[b"referrer-policy"], nonce=None)
    assert "referrer-policy" not in got and "x-frame-options" in got


def test_app_headers_replaced_when_configured() -> None:
    headers = SecurityHeaders(replace_app_headers=True)
    present = {b"x-frame-options", b"content-security-policy"}
    got = page(headers, present=present)
    assert got["x-frame-options"] == "DENY"
    assert f"'nonce-{NONCE}'" in got["content-security-policy"]
    assert headers.replace_app_headers is True


def test_result_is_a_fresh_list_of_lowercase_bytes() -> None:
    headers = SecurityHeaders()
    lines = headers.for_response(path="/", https=True, nonce=None, present=())
    assert all(isinstance(n, bytes) and isinstance(v, bytes) and n == n.lower()
               for n, v in lines)
    lines.clear()
    assert headers.for_response(path="/", https=True, nonce=None, present=())


# --- X-XSS-Protection ------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["page", "api"])
@pytest.mark.parametrize("https", [True, False])
@pytest.mark.parametrize("path", ["/", "/api/x", "/embed/y"])
def test_never_x_xss_protection(preset: str, https: bool, path: str) -> None:
    headers = SecurityHeaders(preset=preset, overrides={"/api/": {"cache-control": "no-store"}})
    for nonce in (None, NONCE):
        names = [n for n, _ in headers.for_response(path=path, https=https, nonce=nonce,
                                                    present=())]
        assert b"x-xss-protection" not in names


@pytest.mark.parametrize("value", ["0", "1; mode=block", None])
def test_x_xss_protection_cannot_be_configured(value: str | None) -> None:
    with pytest.raises(ValueError, match="X-XSS-Protection"):
        SecurityHeaders(overrides={"/": {"X-XSS-Protection": value}})


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "message"), [
    ({"/": {"x-custom": "a\r\nSet-Cookie: s=1"}}, r"'x-custom'.*control character"),
    ({"/": {"x-custom": "a\nb"}}, r"'x-custom'.*control character"),
    ({"/": {"x-custom": "a\x00b"}}, r"'x-custom'.*control character"),
    ({"/": {"x-custom": "a\x7fb"}}, r"'x-custom'.*control character"),
    ({"/": {"x-custom": "caf\u00e9 \u2603"}}, r"'x-custom'.*latin-1"),
    ({"/": {"x-custom": ""}}, r"'x-custom'.*empty"),
    ({"/": {"x-custom": " padded"}}, r"'x-custom'.*whitespace"),
    ({"/": {"x-custom": 5}}, r"'x-custom'.*must be a string"),
    ({"/": {"bad header": "x"}}, r"'bad header'.*not a valid HTTP header name"),
    ({"/": {"x-a:b": "x"}}, r"not a valid HTTP header name"),
    ({"/": {"": "x"}}, r"not a valid HTTP header name"),
    ({"/": {"set-cookie": "a=b"}}, r"'set-cookie'.*not a security header"),
    ({"/": {"Content-Length": "0"}}, r"'Content-Length'.*not a security header"),
    ({"/": {"x-frame-options": "{nonce}"}}, r"may appear only in a Content-Security-Policy"),
    ({"/": {"strict-transport-security": "includeSubDomains"}}, r"needs a max-age"),
    ({"/": {"x-a": "1", "X-A": "2"}}, r"given twice"),
    ({"api/": {"x-a": "1"}}, r"must start with '/'"),
    ({"/": ["x-a"]}, r"expected a mapping"),
])
def test_invalid_overrides_rejected(overrides: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SecurityHeaders(overrides=overrides)


@pytest.mark.parametrize("csp", ["default-src 'self'\r\nX-Evil: 1", "default-src \u2028",
                                 "", "default-src 'none';\x00"])
def test_invalid_csp_rejected(csp: str) -> None:
    with pytest.raises(ValueError, match="content-security-policy"):
        SecurityHeaders(csp=csp)


# --- settings --------------------------------------------------------------------------------

def test_from_settings_defaults() -> None:
    headers = SecurityHeaders.from_settings(Settings.from_mapping({}).headers)
    assert page(headers) == page()


def test_from_settings_values() -> None:
    settings = HeadersSettings(preset="api", hsts_max_age=2 * 31536000.0, hsts_preload=True)
    got = page(SecurityHeaders.from_settings(settings))
    assert got["strict-transport-security"] == "max-age=63072000; includeSubDomains; preload"
    assert got["cache-control"] == "no-store"


def test_from_settings_optional_keys() -> None:
    stub = SimpleNamespace(
        preset="page", hsts_max_age=31536000.0, hsts_include_subdomains=True,
        hsts_preload=False, csp="default-src 'self'; script-src {nonce}",
        replace_app_headers=True,
        overrides={"/embed/": {"x-frame-options": "", "x-extra": "1"}},
    )
    headers = SecurityHeaders.from_settings(stub)  # type: ignore[arg-type]
    got = page(headers, path="/embed/x", present={b"referrer-policy"})
    assert "x-frame-options" not in got               # "" removes (TOML has no null)
    assert got["x-extra"] == "1"
    assert got["referrer-policy"] == "strict-origin-when-cross-origin"   # replaced
    assert got["content-security-policy"] == f"default-src 'self'; script-src 'nonce-{NONCE}'"


# --- what the MDN HTTP Observatory looks at --------------------------------------------------

def directives(csp: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in csp.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


@pytest.mark.parametrize("preset", ["page", "api"])
def test_observatory_expectations(preset: str) -> None:
    """The tests the Observatory scores, checked the way it checks them."""
    headers = SecurityHeaders(preset=preset)
    got = page(headers, nonce=headers.new_nonce())
    csp = directives(got["content-security-policy"])
    script = csp.get("script-src", csp["default-src"])
    style = csp.get("style-src", csp["default-src"])
    obj = csp.get("object-src", csp["default-src"])
    broad = {"*", "http:", "https:", "data:", "'unsafe-inline'", "'unsafe-eval'"}
    assert not broad & set(script + style + obj)
    assert csp["frame-ancestors"] == ["'none'"]
    if preset == "page":
        assert csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'self'"]
        assert obj == ["'none'"]
    else:
        assert csp["default-src"] == ["'none'"]
    max_age = int(re.search(r"max-age=(\d+)", got["strict-transport-security"])[1])  # type: ignore[index]
    assert max_age >= 15552000                                     # six months
    assert got["x-content-type-options"] == "nosniff"
    assert got["x-frame-options"] == "DENY"
    assert got["referrer-policy"] in {"no-referrer", "same-origin", "strict-origin",
                                      "strict-origin-when-cross-origin"}
    assert got["cross-origin-resource-policy"] in {"same-origin", "same-site"}
    assert "access-control-allow-origin" not in got
