"""Open-redirect guard: a corpus of safe and unsafe targets, allow-list validation,
normalization, parity with Django's url_has_allowed_host_and_scheme, and properties."""

from __future__ import annotations

import string
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_mw.guards.redirect import RedirectPolicy, _cached_policy, is_safe_redirect

ALLOWED = (
    "app.example.com",
    "*.example.org",
    "admin.example.com:8443",
    "bücher.example",
    "[::1]:8080",
    "127.0.0.1",
    "localhost:8000",
)
POLICY = RedirectPolicy(ALLOWED)

SAFE = [
    # Relative references stay on the current host.
    pytest.param("/", id="root"),
    # Scheme-relative references to an allowed host (Django accepts them too).
    pytest.param("//app.example.com", id="scheme-relative-allowed-host"),
    pytest.param("//app.example.com/a?b#c", id="scheme-relative-allowed-host-path"),
    pytest.param("//x.example.org/", id="scheme-relative-wildcard"),
    pytest.param("//admin.example.com:8443/", id="scheme-relative-listed-port"),
    pytest.param("//[::1]:8080/", id="scheme-relative-ipv6-port"),
    pytest.param("/a/b?c#d", id="path-query-fragment"),
    pytest.param("/a/b", id="path-absolute"),
    pytest.param("a/b", id="path-relative"),
    pytest.param("a", id="path-relative-one-segment"),
    pytest.param("./a", id="dot-relative"),
    pytest.param("../a", id="dot-dot-relative"),
    pytest.param("?q=1", id="query-only"),
    pytest.param("#frag", id="fragment-only"),
    pytest.param("/?next=//evil.test", id="scheme-relative-in-query"),
    pytest.param("/go/?to=http://evil.test", id="http-url-in-query"),
    pytest.param("/go/?to=https://evil.test", id="https-url-in-query"),
    pytest.param("/go?to=ftp://evil.test", id="ftp-url-in-query"),
    pytest.param("go/?to=//evil.test", id="relative-with-scheme-relative-in-query"),
    pytest.param("/notify/me@evil.test", id="at-sign-in-path"),
    pytest.param("/with%20encoded%20spaces/", id="encoded-spaces"),
    pytest.param("segment/http:31337", id="colon-after-first-slash"),
    pytest.param("/a:b", id="colon-in-absolute-path"),
    pytest.param("evil.test", id="host-looking-relative-path"),
    pytest.param("evil.test/x", id="host-looking-relative-path-2"),
    pytest.param("/a/../b", id="dot-dot-segment"),
    pytest.param("/a/./b", id="dot-segment"),
    pytest.param("/a//b", id="inner-empty-segment"),
    pytest.param("/%41%42", id="encoded-letters"),
    pytest.param("/?next=%2Fdashboard", id="encoded-slash-in-query"),
    pytest.param("/?next=%252Fdashboard", id="double-encoded-slash-in-query"),
    pytest.param("/?q=100%25off", id="encoded-percent-literal"),
    pytest.param("/ü", id="non-ascii-path"),
    pytest.param("/日本語?q=値#片", id="cjk-everywhere"),
    pytest.param("/a?b=c&d=e", id="query-pairs"),
    pytest.param("/a#/route", id="slash-in-fragment"),
    pytest.param("/a#x?y", id="question-in-fragment"),
    pytest.param("/a?x#y?z", id="question-after-fragment"),
    pytest.param("/%E2%82%AC", id="encoded-utf8"),
    pytest.param("/x'y", id="apostrophe"),
    pytest.param("/path;params", id="semicolon"),
    pytest.param("/<b>", id="angle-brackets-encoded-later"),
    pytest.param("/a?", id="empty-query"),
    pytest.param("/a#", id="empty-fragment"),
    pytest.param("/~user/", id="tilde"),
    # Absolute URLs to allowed hosts.
    pytest.param("https://app.example.com", id="abs-bare"),
    pytest.param("https://app.example.com/", id="abs-root"),
    pytest.param("http://app.example.com/x", id="abs-http"),
    pytest.param("HTTPS://app.example.com/", id="abs-upper-scheme"),
    pytest.param("HtTp://app.example.com/", id="abs-mixed-scheme"),
    pytest.param("https://APP.EXAMPLE.COM/", id="abs-upper-host"),
    pytest.param("https://app.example.com:443/", id="abs-https-default-port"),
    pytest.param("http://app.example.com:80/", id="abs-http-default-port"),
    pytest.param("https://app.example.com:0443/", id="abs-port-leading-zero"),
    pytest.param("https://app.example.com/confirm?email=me@evil.test", id="abs-at-in-query"),
    pytest.param("https://app.example.com#@evil.test", id="abs-at-in-fragment"),
    pytest.param("https://app.example.com?@evil.test", id="abs-at-in-bare-query"),
    pytest.param("https://app.example.com/@evil.test", id="abs-at-in-path"),
    pytest.param("https://app.example.com/?next=https://evil.test", id="abs-url-in-query"),
    pytest.param("https://app.example.com/a/../b", id="abs-dot-dot"),
    pytest.param("https://app.example.com/%7Euser", id="abs-encoded-tilde"),
    pytest.param("https://x.example.org/", id="wildcard-one-level"),
    pytest.param("https://a.b.c.example.org/p", id="wildcard-deep"),
    pytest.param("https://X.Example.ORG/", id="wildcard-upper"),
    pytest.param("https://admin.example.com:8443/", id="listed-port"),
    pytest.param("https://bücher.example/", id="idn-unicode"),
    pytest.param("https://BÜCHER.example/", id="idn-upper"),
    pytest.param("https://xn--bcher-kva.example/", id="idn-punycode"),
    pytest.param("https://bücher\u3002example/", id="idn-ideographic-full-stop"),
    pytest.param("https://\uff41\uff50\uff50.example.com/", id="fullwidth-letters-host"),
    pytest.param("http://[::1]:8080/", id="ipv6"),
    pytest.param("http://[0:0:0:0:0:0:0:1]:8080/", id="ipv6-long-form"),
    pytest.param("http://127.0.0.1/", id="ipv4"),
    pytest.param("https://127.0.0.1/", id="ipv4-https"),
    pytest.param("http://localhost:8000/", id="localhost-port"),
    pytest.param("http://LOCALHOST:8000/x", id="localhost-upper"),
]

UNSAFE = [
    pytest.param("", id="empty"),
    # Other hosts.
    pytest.param("https://evil.test", id="other-host"),
    pytest.param("http://evil.test/", id="other-host-http"),
    pytest.param("https://example.com", id="parent-of-exact"),
    pytest.param("https://example.org", id="apex-of-wildcard"),
    pytest.param("https://notexample.org", id="suffix-without-dot"),
    pytest.param("https://evilexample.org/", id="suffix-without-dot-2"),
    pytest.param("https://example.org.evil.test", id="wildcard-base-as-prefix"),
    pytest.param("https://app.example.com.evil.test", id="allowed-as-prefix"),
    pytest.param("https://evil-app.example.com/", id="sibling-of-exact"),
    pytest.param("https://x.app.example.com/", id="subdomain-of-exact"),
    # User info, and delimiters that hide the real host.
    pytest.param("https://app.example.com@evil.test", id="userinfo-allowed-name"),
    pytest.param("https://user:pass@app.example.com/", id="userinfo-on-allowed"),
    pytest.param("https://@app.example.com/", id="empty-userinfo"),
    pytest.param("https://app.example.com:443@evil.test", id="userinfo-with-port"),
    pytest.param("https://evil.test#@app.example.com", id="fragment-hides-host"),
    pytest.param("https://evil.test?@app.example.com", id="query-hides-host"),
    pytest.param("https://evil.test/@app.example.com", id="path-hides-host"),
    pytest.param("http://evil.test\\@app.example.com", id="backslash-userinfo"),
    pytest.param("https://app.example.com\\@evil.test", id="backslash-then-at"),
    pytest.param("https://app.example.com\\.evil.test", id="backslash-in-host"),
    # Scheme-relative and slash games.
    pytest.param("//evil.test", id="scheme-relative"),
    pytest.param("//app.example.com:443/", id="scheme-relative-default-port-of-unknown-scheme"),
    pytest.param("//admin.example.com/", id="scheme-relative-without-the-listed-port"),
    pytest.param("//app.example.com@evil.test/", id="scheme-relative-userinfo"),
    pytest.param("//evil.test/?//app.example.com", id="scheme-relative-other-host-query"),
    pytest.param("//app.example.com.evil.test/", id="scheme-relative-suffix-trick"),
    pytest.param("//example.org/", id="scheme-relative-apex-of-wildcard"),
    pytest.param("//", id="scheme-relative-empty"),
    pytest.param("//:443/", id="scheme-relative-port-only"),
    pytest.param("///evil.test", id="triple-slash"),
    pytest.param("////evil.test", id="quadruple-slash"),
    pytest.param("/\\evil.test", id="slash-backslash"),
    pytest.param("\\\\evil.test", id="double-backslash"),
    pytest.param("\\/evil.test", id="backslash-slash"),
    pytest.param("/a\\b", id="backslash-in-path"),
    pytest.param("/?q=a\\b", id="backslash-in-query"),
    pytest.param("https:\\\\evil.test", id="scheme-double-backslash"),
    pytest.param("https:/\\evil.test", id="scheme-slash-backslash"),
    pytest.param("https:evil.test", id="scheme-no-slashes"),
    pytest.param("http:app.example.com", id="scheme-no-slashes-allowed-host"),
    pytest.param("https:/evil.test", id="scheme-one-slash"),
    pytest.param("https:///evil.test", id="scheme-three-slashes"),
    pytest.param("https:////evil.test", id="scheme-four-slashes"),
    pytest.param("https:", id="scheme-only"),
    pytest.param("https://", id="empty-authority"),
    pytest.param("https:///", id="empty-authority-slash"),
    pytest.param("https://?x", id="empty-authority-query"),
    pytest.param("https://:443/", id="port-without-host"),
    # Ports.
    pytest.param("https://app.example.com:/", id="empty-port"),
    pytest.param("https://app.example.com:8443/", id="unlisted-port"),
    pytest.param("http://app.example.com:443/", id="https-port-over-http"),
    pytest.param("https://app.example.com:80/", id="http-port-over-https"),
    pytest.param("https://admin.example.com/", id="listed-port-missing"),
    pytest.param("https://admin.example.com:8444/", id="listed-port-other"),
    pytest.param("https://app.example.com:65536/", id="port-too-big"),
    pytest.param("https://app.example.com:-1/", id="port-negative"),
    pytest.param("https://app.example.com:+443/", id="port-plus"),
    pytest.param("https://app.example.com:44\uff13/", id="port-fullwidth-digit"),
    pytest.param("https://app.example.com:443:443/", id="port-twice"),
    pytest.param("http://localhost/", id="localhost-default-port"),
    # Host shapes.
    pytest.param("https://app.example.com./", id="trailing-dot"),
    pytest.param("https://x.example.org./", id="trailing-dot-wildcard"),
    pytest.param("https://app.example.com../", id="two-trailing-dots"),
    pytest.param("https://app..example.com/", id="empty-label"),
    pytest.param("https://.app.example.com/", id="leading-dot"),
    pytest.param("https://.example.org/", id="empty-wildcard-label"),
    pytest.param("https://app.exa*mple.com/", id="star-in-host"),
    pytest.param("https://app.example.com;evil.test/", id="semicolon-in-host"),
    pytest.param("https://" + "a" * 64 + ".example.org/", id="label-too-long"),
    # Control characters and whitespace, which browsers strip or skip.
    pytest.param("/\t/evil.test", id="tab-inside"),
    pytest.param("/\n/evil.test", id="newline-inside"),
    pytest.param("/\r/evil.test", id="cr-inside"),
    pytest.param(" /a", id="leading-space"),
    pytest.param("/a ", id="trailing-space"),
    pytest.param("/a b", id="inner-space"),
    pytest.param("\t//evil.test", id="leading-tab"),
    pytest.param("\x00/a", id="leading-nul"),
    pytest.param("/a\x00", id="trailing-nul"),
    pytest.param("\x08//evil.test", id="leading-backspace"),
    pytest.param("\x7f/a", id="del"),
    pytest.param("\u00a0/a", id="nbsp"),
    pytest.param("/a\u2028", id="line-separator"),
    pytest.param("/a\u200b", id="zero-width-space"),
    pytest.param("\ufeff/a", id="bom"),
    pytest.param("/\u202eevil", id="bidi-override"),
    pytest.param("\u3000/a", id="ideographic-space"),
    pytest.param("/a\x85", id="nel"),
    pytest.param("/a\ue000", id="private-use"),
    pytest.param("https://app.exam\u00adple.com/", id="soft-hyphen-in-host"),
    pytest.param("https://app\u200d.example.com/", id="zwj-in-host"),
    pytest.param("\n", id="newline-only"),
    pytest.param(" ", id="space-only"),
    # Other schemes.
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("JavaScript:alert(1)", id="javascript-mixed-case"),
    pytest.param("\njavascript:alert(1)", id="javascript-leading-newline"),
    pytest.param("java\nscript:alert(1)", id="javascript-split"),
    pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
    pytest.param("vbscript:msgbox(1)", id="vbscript"),
    pytest.param("ftp://app.example.com/", id="ftp-allowed-host"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("ws://app.example.com/", id="websocket"),
    pytest.param("mailto:a@app.example.com", id="mailto"),
    pytest.param("blob:https://app.example.com/uuid", id="blob"),
    pytest.param("http:31337", id="http-colon-number"),
    pytest.param("ftp:31337", id="ftp-colon-number"),
    pytest.param("a:b", id="unknown-scheme"),
    pytest.param(":foo", id="empty-scheme"),
    pytest.param("1a:b", id="colon-in-first-segment"),
    pytest.param("localhost:8000/path", id="host-port-without-scheme"),
    # Percent-encoding tricks.
    pytest.param("%2F%2Fevil.test", id="encoded-double-slash"),
    pytest.param("%2f%2fevil.test", id="encoded-double-slash-lower"),
    pytest.param("/%2F/evil.test", id="encoded-slash-after-slash"),
    pytest.param("/%2Fevil.test", id="encoded-second-slash"),
    pytest.param("/a%2Fb", id="encoded-slash-in-path"),
    pytest.param("/%5Cevil.test", id="encoded-backslash"),
    pytest.param("/%5cevil.test", id="encoded-backslash-lower"),
    pytest.param("%5C%5Cevil.test", id="encoded-double-backslash"),
    pytest.param("/?q=%5C", id="encoded-backslash-in-query"),
    pytest.param("/%09/evil.test", id="encoded-tab"),
    pytest.param("/%0d%0aSet-Cookie:x=1", id="encoded-crlf"),
    pytest.param("/?q=%0A", id="encoded-newline-in-query"),
    pytest.param("/%00", id="encoded-nul"),
    pytest.param("/%7F", id="encoded-del"),
    pytest.param("/%C2%85", id="encoded-c1-control"),
    pytest.param("/%252F%252Fevil.test", id="double-encoded-slash"),
    pytest.param("/%25252F", id="triple-encoded-slash"),
    pytest.param("/%25%32%46evil.test", id="split-double-encoded-slash"),
    pytest.param("/%255C", id="double-encoded-backslash"),
    pytest.param("/%2509", id="double-encoded-tab"),
    pytest.param("/%", id="lone-percent"),
    pytest.param("/%zz", id="percent-non-hex"),
    pytest.param("/%2", id="percent-one-digit"),
    pytest.param("/a%g0", id="percent-bad-first-digit"),
    pytest.param("?q=%", id="lone-percent-in-query"),
    pytest.param("#%2F%2Fevil.test", id="encoded-slashes-in-fragment"),
    pytest.param("https://evil%2Etest/", id="encoded-dot-in-host"),
    pytest.param("https://app%2Eexample.com/", id="encoded-dot-in-allowed-host"),
    pytest.param("https://app.example.com%2F@evil.test", id="encoded-slash-before-at"),
    pytest.param("https://app.example.com%23@evil.test", id="encoded-hash-before-at"),
    pytest.param("https://%61pp.example.com/", id="encoded-letter-in-host"),
    # Unicode look-alikes of delimiters, and IDNA deviations.
    pytest.param("https://evil.test\uff0f.app.example.com", id="fullwidth-solidus-in-host"),
    pytest.param("/\uff0fevil.test", id="fullwidth-solidus-in-path"),
    pytest.param("\uff0f\uff0fevil.test", id="fullwidth-double-slash"),
    pytest.param("https://app.example.com\uff20evil.test", id="fullwidth-at"),
    pytest.param("https://evil.test\uff03@app.example.com", id="fullwidth-hash"),
    pytest.param("https://app.example.com\uff0eevil.test", id="fullwidth-full-stop"),
    pytest.param("https://evil\u2024test/", id="one-dot-leader"),
    pytest.param("https://app.example.com\u2215evil.test/", id="division-slash"),
    pytest.param("https://\uff05\uff12\uff46/", id="fullwidth-percent"),
    pytest.param("https://fa\u00df.example.org/", id="sharp-s-deviation"),
    pytest.param("https://\u03c2.example.org/", id="final-sigma-deviation"),
    pytest.param("https://b\u00fccher.example.evil.test/", id="idn-as-prefix"),
    pytest.param("https://bucher.example/", id="idn-without-diacritic"),
    # IP literals.
    pytest.param("http://[::1]/", id="ipv6-unlisted-default-port"),
    pytest.param("http://[::2]:8080/", id="ipv6-other-address"),
    pytest.param("http://[::1/", id="ipv6-unclosed"),
    pytest.param("http://::1]/", id="ipv6-unopened"),
    pytest.param("http://[2001:db8::3257:9652/", id="ipv6-unclosed-long"),
    pytest.param("http://2001:db8::3257:9652]/", id="ipv6-no-open-bracket"),
    pytest.param("http://[::1]x:8080/", id="ipv6-junk-after"),
    pytest.param("http://[::1%25eth0]:8080/", id="ipv6-zone"),
    pytest.param("http://[fe80::1%eth0]/", id="ipv6-raw-zone"),
    pytest.param("http://[::g]:8080/", id="ipv6-bad-hex"),
    pytest.param("http://2130706433/", id="ipv4-as-integer"),
    pytest.param("http://0x7f.0.0.1/", id="ipv4-hex"),
    pytest.param("http://0177.0.0.1/", id="ipv4-octal"),
    pytest.param("http://127.1/", id="ipv4-short"),
    pytest.param("http://127.0.0.01/", id="ipv4-leading-zero"),
    pytest.param("http://127.0.0.1.evil.test/", id="ipv4-as-prefix"),
    pytest.param("http://256.0.0.1/", id="ipv4-out-of-range"),
    # Dot segments that resolve to a path starting with '//'.
    pytest.param("/.//evil.test", id="dot-then-empty-segment"),
    pytest.param("/a/..//evil.test", id="dot-dot-then-empty-segment"),
    pytest.param(".//evil.test", id="relative-dot-empty-segment"),
    pytest.param("..//evil.test", id="relative-dot-dot-empty-segment"),
    pytest.param("a/..//evil.test", id="relative-pop-then-empty-segment"),
    pytest.param("/%2e//evil.test", id="encoded-dot-then-empty-segment"),
    pytest.param("/%2E%2E//evil.test", id="encoded-dot-dot-then-empty-segment"),
    pytest.param("https://app.example.com//evil.test", id="abs-path-starts-with-two-slashes"),
    pytest.param("https://app.example.com/.//evil.test", id="abs-dot-then-empty-segment"),
    # Length.
    pytest.param("/" + "a" * 2048, id="too-long"),
]


@pytest.mark.parametrize("url", SAFE)
def test_safe(url: str) -> None:
    assert POLICY.is_safe(url) is True
    assert POLICY.normalize(url) is not None


@pytest.mark.parametrize("url", UNSAFE)
def test_unsafe(url: str) -> None:
    assert POLICY.is_safe(url) is False
    assert POLICY.normalize(url) is None


def test_corpus_is_large_and_ids_unique() -> None:
    ids = [p.id for p in SAFE + UNSAFE]
    assert len(ids) >= 150
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("url", [None, b"/a", 123, 1.5, ["/"], ("/",), object(), {"/": 1}])
def test_non_str_is_refused_without_raising(url: object) -> None:
    assert POLICY.is_safe(url) is False  # type: ignore[arg-type]
    assert POLICY.normalize(url) is None  # type: ignore[arg-type]
    assert is_safe_redirect(url, ALLOWED) is False  # type: ignore[arg-type]


def test_max_length_boundary() -> None:
    assert POLICY.is_safe("/" + "a" * 2047) is True
    assert POLICY.is_safe("/" + "a" * 2048) is False
    short = RedirectPolicy([], max_length=10)
    assert short.is_safe("/123456789") is True
    assert short.is_safe("/1234567890") is False


@pytest.mark.parametrize("max_length", [0, -1, True, 1.5, "10"])
def test_bad_max_length(max_length: object) -> None:
    with pytest.raises(ValueError, match="max_length"):
        RedirectPolicy([], max_length=max_length)  # type: ignore[arg-type]


REQUIRE_HTTPS = RedirectPolicy(["app.example.com"], require_https=True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("https://app.example.com/p", True, id="https"),
        pytest.param("HTTPS://app.example.com/p", True, id="https-upper"),
        pytest.param("/go/?to=http://app.example.com", True, id="relative-with-http-in-query"),
        pytest.param("/relative", True, id="relative-absolute-path"),
        pytest.param("relative", True, id="relative-path"),
        pytest.param("?q", True, id="query-only"),
        pytest.param("http://app.example.com/p", False, id="http"),
        pytest.param("HTTP://app.example.com/p", False, id="http-upper"),
        pytest.param("http://app.example.com:443/", False, id="http-on-443"),
        pytest.param("ftp://app.example.com/p", False, id="ftp"),
        pytest.param("//app.example.com/p", False, id="scheme-relative"),
    ],
)
def test_require_https(url: str, expected: bool) -> None:
    assert REQUIRE_HTTPS.is_safe(url) is expected
    assert is_safe_redirect(url, ["app.example.com"], require_https=True) is expected


def test_wildcard_with_port() -> None:
    policy = RedirectPolicy(["*.example.net:8443"])
    assert policy.is_safe("https://a.example.net:8443/")
    assert policy.is_safe("https://a.b.example.net:8443/")
    assert not policy.is_safe("https://a.example.net/")
    assert not policy.is_safe("https://example.net:8443/")


def test_explicit_default_port_entry() -> None:
    policy = RedirectPolicy(["app.example.com:443"])
    assert policy.is_safe("https://app.example.com/")
    assert policy.is_safe("https://app.example.com:443/")
    assert not policy.is_safe("http://app.example.com/")


def test_wildcard_and_apex_listed_together() -> None:
    policy = RedirectPolicy(["example.org", "*.example.org"])
    assert policy.is_safe("https://example.org/")
    assert policy.is_safe("https://www.example.org/")
    assert not policy.is_safe("https://notexample.org/")


def test_empty_allow_list_still_allows_relative() -> None:
    policy = RedirectPolicy([])
    assert policy.is_safe("/confirm/me@app.example.com")
    assert not policy.is_safe("https://app.example.com/")


# Allow-list validation.


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("*.", id="star-dot"),
        pytest.param("*", id="star"),
        pytest.param("**.example.com", id="double-star"),
        pytest.param("a*.example.com", id="star-inside-label"),
        pytest.param("*.*.example.com", id="two-stars"),
        pytest.param("ex*mple.com", id="star-mid-host"),
        pytest.param("*example.com", id="star-without-dot"),
        pytest.param("", id="empty"),
        pytest.param("https://app.example.com", id="url"),
        pytest.param("app.example.com/", id="trailing-slash"),
        pytest.param("app.example.com/path", id="with-path"),
        pytest.param("app.example.com?x", id="with-query"),
        pytest.param("user@app.example.com", id="userinfo"),
        pytest.param("user:pass@app.example.com", id="userinfo-with-password"),
        pytest.param(" app.example.com", id="leading-space"),
        pytest.param("app.example.com ", id="trailing-space"),
        pytest.param("app .example.com", id="inner-space"),
        pytest.param("app.example.com\n", id="newline"),
        pytest.param("\tapp.example.com", id="tab"),
        pytest.param(".example.com", id="leading-dot"),
        pytest.param("example.com.", id="trailing-dot"),
        pytest.param("*.example.com.", id="wildcard-trailing-dot"),
        pytest.param("example.com.:8443", id="trailing-dot-with-port"),
        pytest.param("a..b", id="empty-label"),
        pytest.param("app.example.com:", id="empty-port"),
        pytest.param("app.example.com:99999", id="port-too-big"),
        pytest.param("app.example.com:http", id="port-not-numeric"),
        pytest.param("[::1", id="ipv6-unclosed"),
        pytest.param("[::g]", id="ipv6-bad"),
        pytest.param("*.[::1]", id="wildcard-ipv6"),
        pytest.param("*.127.0.0.1", id="wildcard-ipv4"),
        pytest.param("0x7f.1", id="numeric-host-not-dotted-decimal"),
        pytest.param("app%2Eexample.com", id="percent"),
        pytest.param("app\\example.com", id="backslash"),
        pytest.param("fa\u00df.example", id="idna-deviation"),
        pytest.param("evil.test\uff0f.example.com", id="fullwidth-solidus"),
    ],
)
def test_invalid_entries(entry: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="invalid allowed host") as info:
        RedirectPolicy([entry])
    assert repr(entry) in str(info.value)
    # At request time nothing raises: the bad entry matches nothing, the others still do.
    assert is_safe_redirect("/", ["app.example.com", entry])
    assert is_safe_redirect("https://app.example.com/", ["app.example.com", entry])
    assert not is_safe_redirect("https://evil.test/", [entry])


def test_is_safe_redirect_with_user_info_in_the_allow_list_never_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    """The issue: ValueError at request time for ``user:pass@host`` in allowed_hosts."""
    _cached_policy.cache_clear()
    hosts = ["user:pass@portal.test", "https://portal.test", "portal.test/x"]
    for url in ("http://user:pass@portal.test/", "https://portal.test/", "/ok", "//portal.test/"):
        assert is_safe_redirect(url, hosts) is (url == "/ok")
    warnings = [r.getMessage() for r in caplog.records if "is_safe_redirect" in r.getMessage()]
    assert len(warnings) == 3 and "'user:pass@portal.test'" in warnings[0]
    assert "user info" in warnings[0]


@pytest.mark.parametrize("hosts", [None, 42, [None], [b"portal.test"], [["portal.test"]],
                                   [{"a": 1}]])
def test_is_safe_redirect_never_raises_for_odd_allow_lists(hosts: object) -> None:
    assert is_safe_redirect("/ok", hosts) is True  # type: ignore[arg-type]
    assert is_safe_redirect("https://portal.test/", hosts) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(("entry", "reason"), [
    ("user:pass@portal.test", "user info"), ("https://portal.test", "not a URL"),
    ("portal.test/path", "not a URL"), ("*", "wildcard"), ("*.com", "public suffix"),
    ("*.co.uk", "public suffix"),
])
def test_bad_entries_are_configuration_errors(entry: str, reason: str) -> None:
    from secure_mw import Settings
    from secure_mw.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"redirects": {"allowed_hosts": ["ok.test", entry]}}, environ={})
    [problem] = info.value.problems
    assert problem.path == "redirects.allowed_hosts"
    assert repr(entry) in problem.message and reason in problem.message


@pytest.mark.parametrize("entry", [None, b"app.example.com", 443])
def test_non_str_entries(entry: object) -> None:
    with pytest.raises(TypeError, match="must be str"):
        RedirectPolicy([entry])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        pytest.param("APP.Example.COM", "https://app.example.com/", id="upper-entry"),
        pytest.param("bücher.example", "https://xn--bcher-kva.example/", id="idn-entry"),
        pytest.param("xn--bcher-kva.example", "https://bücher.example/", id="punycode-entry"),
        pytest.param("*.bücher.example", "https://a.xn--bcher-kva.example/", id="idn-wildcard"),
        pytest.param("[::1]", "http://[::1]/", id="ipv6-entry"),
        pytest.param("[0::1]:8080", "http://[::1]:8080/", id="ipv6-entry-long"),
        pytest.param("127.0.0.1:8000", "http://127.0.0.1:8000/", id="ipv4-port-entry"),
        pytest.param("localhost", "http://localhost/", id="single-label"),
        pytest.param("my_service", "http://my_service/", id="underscore"),
        pytest.param("*.example.org:8443", "https://a.example.org:8443/", id="wildcard-port"),
    ],
)
def test_valid_entries(entry: str, url: str) -> None:
    assert RedirectPolicy([entry]).is_safe(url)


def test_str_allow_list_is_one_host() -> None:
    assert RedirectPolicy("app.example.com").is_safe("https://app.example.com/")
    assert is_safe_redirect("https://app.example.com/", "app.example.com")
    assert not is_safe_redirect("https://a/", "app.example.com")


def test_policies_are_cached() -> None:
    _cached_policy.cache_clear()
    hosts = ["cache.example.com", "*.cache.example.com"]
    assert is_safe_redirect("https://cache.example.com/", hosts)
    assert is_safe_redirect("https://a.cache.example.com/", hosts)
    assert not is_safe_redirect("https://evil.test/", iter(hosts))
    assert is_safe_redirect("https://cache.example.com/", hosts, require_https=True)
    info = _cached_policy.cache_info()
    assert (info.misses, info.hits) == (2, 2)


def test_repr_lists_the_normalized_allow_list() -> None:
    text = repr(RedirectPolicy(["B.example", "*.A.example"], require_https=True))
    assert text == "RedirectPolicy(['b.example', '*.a.example'], require_https=True)"


# Normalization: the URL as a browser would resolve it.


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("HTTPS://App.Example.COM:443/a/../b", "https://app.example.com/b", id="full"),
        pytest.param("https://app.example.com", "https://app.example.com/", id="empty-path"),
        pytest.param("https://app.example.com?q", "https://app.example.com/?q", id="bare-query"),
        pytest.param("http://app.example.com:80/x", "http://app.example.com/x", id="http-port"),
        pytest.param(
            "https://admin.example.com:8443", "https://admin.example.com:8443/", id="port"
        ),
        pytest.param(
            "https://BÜCHER.example/ü?q=ä#ö",
            "https://xn--bcher-kva.example/%C3%BC?q=%C3%A4#%C3%B6",
            id="idn",
        ),
        pytest.param(
            "https://\uff41\uff50\uff50.example.com/",
            "https://app.example.com/",
            id="fullwidth-host",
        ),
        pytest.param("http://[0:0::1]:8080/x", "http://[::1]:8080/x", id="ipv6"),
        pytest.param(
            "https://app.example.com/a/./b/../c/", "https://app.example.com/a/c/", id="dots"
        ),
        pytest.param(
            "https://app.example.com/a/%2e%2E/b", "https://app.example.com/b", id="encoded-dots"
        ),
        pytest.param(
            "https://app.example.com/a/..", "https://app.example.com/", id="trailing-dot-dot"
        ),
        pytest.param(
            "https://app.example.com/<x>?'\"#`",
            "https://app.example.com/%3Cx%3E?%27%22#%60",
            id="encode-ascii",
        ),
        pytest.param(
            "https://app.example.com/%41?%2F#%20",
            "https://app.example.com/%41?%2F#%20",
            id="keep-escapes",
        ),
        pytest.param("/a/../b?x#y", "/b?x#y", id="relative-absolute-path-dots"),
        pytest.param("a/../b", "a/../b", id="path-relative-kept"),
        pytest.param("/ü", "/%C3%BC", id="relative-non-ascii"),
        pytest.param("?q=ä", "?q=%C3%A4", id="query-only"),
        pytest.param("#", "#", id="empty-fragment"),
        pytest.param("/a?", "/a?", id="empty-query"),
    ],
)
def test_normalize(url: str, expected: str) -> None:
    assert POLICY.normalize(url) == expected


# Django's url_has_allowed_host_and_scheme: every case its own tests exercise, in our own
# words (hosts portal.test / other.test / evil.test), with Django's verdict and ours.
# The one disagreement: an allow-list entry with user info matches nothing here (and is a
# configuration error for RedirectPolicy and the settings).

PORTAL = ("portal.test", "portal2.test")
PORTAL_OTHER = ("other.test", "portal.test")

DJANGO_PARITY = [
    # (url, allowed hosts, require_https, Django's verdict, ours)
    pytest.param("http://evil.test", PORTAL, False, False, False, id="dj-http-other"),
    pytest.param("http:///evil.test", PORTAL, False, False, False, id="dj-http-triple"),
    pytest.param("https://evil.test", PORTAL, False, False, False, id="dj-https-other"),
    pytest.param("ftp://evil.test", PORTAL, False, False, False, id="dj-ftp"),
    pytest.param(r"\\evil.test", PORTAL, False, False, False, id="dj-bs2"),
    pytest.param(r"\\\evil.test", PORTAL, False, False, False, id="dj-bs3"),
    pytest.param(r"/\\/evil.test", PORTAL, False, False, False, id="dj-s-bs2-s"),
    pytest.param(r"\\//evil.test", PORTAL, False, False, False, id="dj-bs2-s2"),
    pytest.param(r"/\/evil.test", PORTAL, False, False, False, id="dj-s-bs-s"),
    pytest.param(r"\/evil.test", PORTAL, False, False, False, id="dj-bs-s"),
    pytest.param(r"/\evil.test", PORTAL, False, False, False, id="dj-s-bs"),
    pytest.param(r"http:/\//evil.test", PORTAL, False, False, False, id="dj-http-s-bs-s2"),
    pytest.param(r"http:\/evil.test", PORTAL, False, False, False, id="dj-http-bs-s"),
    pytest.param(r"http:/\evil.test", PORTAL, False, False, False, id="dj-http-s-bs"),
    pytest.param("javascript:alert('x')", PORTAL, False, False, False, id="dj-javascript"),
    pytest.param("\njavascript:alert(2)", PORTAL, False, False, False, id="dj-nl-javascript"),
    pytest.param("javas\ncript:alert(3)", PORTAL, False, False, False, id="dj-split-javascript"),
    pytest.param("\x08//evil.test", PORTAL, False, False, False, id="dj-backspace"),
    pytest.param(r"http://other.test\@evil.test", PORTAL, False, False, False, id="dj-bs-at"),
    pytest.param(r"http:\\portal.test\@evil.test", PORTAL, False, False, False, id="dj-bs-host-at"),
    pytest.param(r"http://portal.test\u:p@evil.test", PORTAL, False, False, False, id="dj-bs-cred"),
    pytest.param(r"http://portal.test\@evil.test", PORTAL, False, False, False, id="dj-bs-at-2"),
    pytest.param(
        r"http:\\portal.test\ok\me@evil.test", PORTAL, False, False, False, id="dj-bs-path"
    ),
    pytest.param("http:123456789", PORTAL, False, False, False, id="dj-http-number"),
    pytest.param("ftp:1234567890", PORTAL, False, False, False, id="dj-ftp-number"),
    pytest.param("\n", PORTAL, False, False, False, id="dj-newline"),
    pytest.param("http://[2001:db8::9652/", PORTAL, False, False, False, id="dj-v6-unclosed"),
    pytest.param("http://2001:db8::9652]/", PORTAL, False, False, False, id="dj-v6-unopened"),
    pytest.param("/go/?to=http://evil.test", PORTAL_OTHER, False, True, True, id="dj-q-http"),
    pytest.param("/go/?to=https://evil.test", PORTAL_OTHER, False, True, True, id="dj-q-https"),
    pytest.param("/go?to=ftp://evil.test", PORTAL_OTHER, False, True, True, id="dj-q-ftp"),
    pytest.param("go/?to=//evil.test", PORTAL_OTHER, False, True, True, id="dj-rel-q"),
    pytest.param("https://portal.test/", PORTAL_OTHER, False, True, True, id="dj-allowed"),
    pytest.param("HTTPS://portal.test/", PORTAL_OTHER, False, True, True, id="dj-allowed-upper"),
    pytest.param("//portal.test/", PORTAL_OTHER, False, True, True, id="dj-scheme-relative"),
    pytest.param(
        "http://portal.test/a?mail=me@evil.test", PORTAL_OTHER, False, True, True, id="dj-q-at"
    ),
    pytest.param("/with%20spaces/", PORTAL_OTHER, False, True, True, id="dj-encoded-space"),
    pytest.param("seg/http:2222222222", PORTAL_OTHER, False, True, True, id="dj-colon-later"),
    pytest.param("http://u:p@portal.test/", ("u:p@portal.test",), False, True, False, id="dj-auth"),
    pytest.param("http://u:p@portal.test/", ("portal.test",), False, False, False, id="dj-auth-2"),
    pytest.param("/confirm/me@evil.test", (), False, True, True, id="dj-no-hosts-path"),
    pytest.param(r"http://portal.test\@evil.test", (), False, False, False, id="dj-no-hosts-bs"),
    pytest.param("http://good.test/good", "good.test", False, True, True, id="dj-str-hosts"),
    pytest.param("http://good.tes/evil", "good.test", False, False, False, id="dj-str-hosts-no"),
    pytest.param("https://portal.test/p", PORTAL, True, True, True, id="dj-https-ok"),
    pytest.param("HTTPS://portal.test/p", PORTAL, True, True, True, id="dj-https-upper-ok"),
    pytest.param("/go/?to=http://portal.test", PORTAL, True, True, True, id="dj-https-rel"),
    pytest.param("http://portal.test/p", PORTAL, True, False, False, id="dj-https-http"),
    pytest.param("ftp://portal.test/p", PORTAL, True, False, False, id="dj-https-ftp"),
    pytest.param("//portal.test/p", PORTAL, True, False, False, id="dj-https-scheme-rel"),
]


@pytest.mark.parametrize(("url", "hosts", "https", "django", "ours"), DJANGO_PARITY)
def test_django_parity(
    url: str, hosts: tuple[str, ...] | str, https: bool, django: bool, ours: bool
) -> None:
    assert is_safe_redirect(url, hosts, require_https=https) is ours
    assert not ours or django, "never looser than Django"


@pytest.mark.parametrize(("url", "hosts", "https", "django", "ours"), DJANGO_PARITY)
def test_django_verdicts_are_recorded_right(
    url: str, hosts: tuple[str, ...] | str, https: bool, django: bool, ours: bool
) -> None:
    http = pytest.importorskip("django.utils.http")
    verdict = http.url_has_allowed_host_and_scheme(
        url, set(hosts) if isinstance(hosts, tuple) else hosts, require_https=https
    )
    assert verdict is django


def test_never_looser_than_django_on_the_corpus() -> None:
    """Where we say safe, Django (given the exact authority we matched) says safe too."""
    http = pytest.importorskip("django.utils.http")
    for param in SAFE:
        url = param.values[0]
        assert isinstance(url, str)
        netloc = urlsplit(url).netloc if "//" in url.split("?")[0].split("#")[0] else ""
        assert http.url_has_allowed_host_and_scheme(url, {netloc} - {""}), url


# Properties.

TOKENS = [
    "https:",
    "http:",
    "HTTPS:",
    "javascript:",
    "//",
    "/",
    "\\",
    "@",
    "#",
    "?",
    ":",
    ":443",
    ":8443",
    ":80",
    ".",
    "..",
    "app.example.com",
    "example.org",
    "x.example.org",
    "example.com",
    "evil.test",
    "%2F",
    "%5C",
    "%25",
    "%2e",
    "%",
    "%41",
    "a",
    "ü",
    "\t",
    " ",
    "\uff45",
    "\uff0f",
    "\u3002",
    "[::1]",
    "[",
    "]",
    "127.0.0.1",
    "xn--bcher-kva.example",
    "*",
]


def _independent_host_check(scheme: str, host: str, port: int | None) -> bool:
    """A deliberately plain restatement of ALLOWED for ASCII hosts."""
    default = {"http": 80, "https": 443}[scheme]
    port = default if port is None else port
    if host in ("app.example.com", "127.0.0.1", "xn--bcher-kva.example") and port == default:
        return True
    if host == "admin.example.com" and port == 8443:
        return True
    if host == "[::1]" and port == 8080:
        return True
    if host == "localhost" and port == 8000:
        return True
    return host.endswith(".example.org") and len(host) > len(".example.org") and port == default


def _independent_scheme_relative_check(host: str, port: int | None) -> bool:
    """ALLOWED for ``//host[:port]``: no port matches entries without one, a port only an
    entry that lists it."""
    if port is None:
        return host in ("app.example.com", "127.0.0.1", "xn--bcher-kva.example") or (
            host.endswith(".example.org") and len(host) > len(".example.org"))
    return (host, port) in (("admin.example.com", 8443), ("[::1]", 8080), ("localhost", 8000))


def _check_safe_verdict(url: str) -> None:
    normalized = POLICY.normalize(url)
    if normalized is None:
        assert not POLICY.is_safe(url)
        return
    assert POLICY.is_safe(url)
    assert "\\" not in url
    assert not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)
    assert normalized.isascii()
    assert POLICY.normalize(normalized) == normalized
    parts = urlsplit(normalized)
    if parts.scheme:
        assert parts.scheme in ("http", "https")
        assert "@" not in parts.netloc
        host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
        assert _independent_host_check(parts.scheme, host, parts.port), url
        # The raw string, read by the stdlib, names the same host.
        raw = urlsplit(url)
        assert raw.hostname is not None
        raw_host = raw.hostname if raw.hostname.isascii() else raw.hostname.encode("idna").decode()
        assert raw_host.lower() == (parts.hostname or "").lower()
    elif normalized.startswith("//"):
        # Scheme-relative: the host is allowed, with a port exactly as listed (or none).
        assert "@" not in parts.netloc and not normalized.startswith("///")
        host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
        assert _independent_scheme_relative_check(host, parts.port), url
        for base in ("https://current.test/base/page", "http://current.test/"):
            assert urlsplit(urljoin(base, normalized)).netloc == parts.netloc, url
    else:
        resolved = urlsplit(urljoin("https://current.test/base/page", url))
        assert resolved.netloc == "current.test", url


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(TOKENS), max_size=12).map("".join)))
def test_never_raises_and_safe_means_allowed(url: str) -> None:
    _check_safe_verdict(url)


@settings(max_examples=150, deadline=None)
@given(
    scheme=st.sampled_from(["https://"] * 3 + ["http://", "HTTPS://", "https:", "https:/", "//"]),
    userinfo=st.sampled_from([""] * 12 + ["u@", "app.example.com@", ":@"]),
    host=st.sampled_from(
        [
            "app.example.com",
            "APP.example.com",
            "app.example.com:443",
            "x.example.org",
            "a.b.example.org",
            "admin.example.com:8443",
            "bücher.example",
            "localhost:8000",
            "127.0.0.1",
            "[::1]:8080",
            "xn--bcher-kva.example",
            "\uff41\uff50\uff50.example.com",
            "example.org",
            "notexample.org",
            "evil.test",
            "app.example.com.evil.test",
            "admin.example.com",
            "app.example.com.",
            "[::1]",
            "localhost",
        ]
    ),
    port=st.sampled_from([""] * 8 + [":443", ":80", ":8443", ":8080", ":", ":0"]),
    tail=st.one_of(
        st.sampled_from(["", "/", "/x", "/a/../b", "?q=1", "#f", "/?u=//evil.test"]),
        st.lists(st.sampled_from(TOKENS), max_size=6).map("".join),
    ),
)
def test_structured_urls(scheme: str, userinfo: str, host: str, port: str, tail: str) -> None:
    _check_safe_verdict(scheme + userinfo + host + port + tail)


SEGMENT = st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", min_size=1)
ALLOWED_HOST = st.one_of(
    st.sampled_from(["app.example.com", "APP.EXAMPLE.COM", "admin.example.com:8443"]),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).map(
        lambda label: label + ".example.org"
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    scheme=st.sampled_from(["https", "http"]),
    host=ALLOWED_HOST,
    segments=st.lists(SEGMENT, max_size=5),
    query=st.one_of(st.none(), st.text(string.ascii_letters + string.digits + "=&/?:@-._~")),
    fragment=st.one_of(st.none(), st.text(string.ascii_letters + string.digits + "/?:@-._~")),
)
def test_allowed_host_with_any_safe_path_is_safe(
    scheme: str, host: str, segments: list[str], query: str | None, fragment: str | None
) -> None:
    url = f"{scheme}://{host}/" + "/".join(segments)
    if query is not None:
        url += "?" + query
    if fragment is not None:
        url += "#" + fragment
    assert POLICY.is_safe(url), url
    assert POLICY.is_safe("/" + "/".join(segments)), segments
    normalized = POLICY.normalize(url)
    assert normalized is not None
    assert urlsplit(normalized).hostname == host.partition(":")[0].lower()


@settings(max_examples=200, deadline=None)
@given(hosts=st.lists(st.one_of(st.text(max_size=30),
                                st.lists(st.sampled_from(TOKENS), max_size=5).map("".join)),
                      max_size=4),
       url=st.one_of(st.text(), st.lists(st.sampled_from(TOKENS), max_size=10).map("".join)))
def test_is_safe_redirect_never_raises_for_any_allow_list(hosts: list[str], url: str) -> None:
    verdict = is_safe_redirect(url, hosts)
    assert verdict is is_safe_redirect(url, [h for h in hosts if _valid_entry(h)])


def _valid_entry(entry: str) -> bool:
    try:
        RedirectPolicy([entry])
    except ValueError:
        return False
    return True
