"""Path normalization before authorization (secure_mw.authz.paths)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_mw.authz import MAX_PATH, PathRefused, check_raw_path, normalize_path
from secure_mw.errors import SecureMWError

# (decoded path, normalized)
NORMALIZED = [
    ("", "/"),
    ("/", "/"),
    ("/a", "/a"),
    ("/a/", "/a/"),
    ("/a/b/c", "/a/b/c"),
    ("//", "/"),
    ("///a", "/a"),
    ("/a//b", "/a/b"),
    ("/a///b//", "/a/b/"),
    ("/./", "/"),
    ("/.", "/"),
    ("/..", "/"),
    ("/../", "/"),
    ("/../../a", "/a"),
    ("/a/..", "/"),
    ("/a/../", "/"),
    ("/a/.", "/a/"),
    ("/a/./b", "/a/b"),
    ("/a/b/../c", "/a/c"),
    ("/a/b/../../c", "/c"),
    ("/a/b/../../../c", "/c"),
    ("/public/../admin", "/admin"),
    ("/public/..//admin", "/admin"),
    ("/public/.//./../admin/", "/admin/"),
    ("/a/b/..", "/a/"),
    ("/a/b/../", "/a/"),
    ("/a/.../b", "/a/.../b"),
    ("/a/..b/c", "/a/..b/c"),
    ("/a/b../c", "/a/b../c"),
    ("/.hidden", "/.hidden"),
    ("/a/.well-known/x", "/a/.well-known/x"),
    ("/café/naïve", "/café/naïve"),
    ("/日本/../語", "/語"),
    ("/%", "/%"),
    ("/100%", "/100%"),
    ("/a%zz", "/a%zz"),
    ("/a b", "/a b"),
    ("/a;b=c/d", "/a;b=c/d"),
    # fullwidth look-alikes ("/AB/..") are plain characters, not syntax
    ("/\uff21\uff22\uff0f\uff0e\uff0e", "/\uff21\uff22\uff0f\uff0e\uff0e"),
    ("/a/b?c", "/a/b?c"),
]

REFUSED = [
    ("/public/..;/admin", "path parameters"),     # Tomcat and Jetty resolve it to /admin
    ("/public/..;jsessionid=x/admin", "path parameters"),
    ("/a/.;x/b", "path parameters"),
    ("a/b", "start"),
    ("*", "start"),
    ("/a\\b", "backslash"),
    ("/a/..\\admin", "backslash"),
    ("/a\x00b", "control"),
    ("/a\nb", "control"),
    ("/a\rb", "control"),
    ("/a\tb", "control"),
    ("/a\x7fb", "control"),
    ("/a\x85b", "control"),
    ("/a%2Fb", "percent"),
    ("/a%2fb", "percent"),
    ("/a%5Cb", "percent"),
    ("/a/%2e%2e/b", "percent"),
    ("/a/%2E%2E/b", "percent"),
    ("/%2e/", "percent"),
    ("/a%252Fb", "percent"),
    ("/a%25", "percent"),
    ("/a%00", "percent"),
    ("/a%41", "percent"),
    ("/a\ud800b", "unicode"),
    ("/" + "a" * MAX_PATH, "too long"),
]

RAW_OK = [
    b"/",
    b"/a/b/",
    b"/a%20b",
    b"/caf%C3%A9",
    b"/a%2Eb",           # an encoded dot inside a name is no dot segment
    b"/a/.%2Ehidden",
    b"/a/b..c",
    b"/100%",
    b"/a?x=%2F",         # the query is not looked at
    b"/a/%7Euser",
]

RAW_REFUSED = [
    (b"/a%2Fb", "encoded slash"),
    (b"/a%2fb", "encoded slash"),
    (b"/public/..%2fadmin", "encoded slash"),
    (b"/a%5Cb", "encoded slash"),
    (b"/a%5cb", "encoded slash"),
    (b"/a\\b", "backslash"),
    (b"/a/%2e%2e/b", "dot segment"),
    (b"/a/%2E%2e/b", "dot segment"),
    (b"/a/.%2e/b", "dot segment"),
    (b"/a/%2e./b", "dot segment"),
    (b"/a/%2e/b", "dot segment"),
    (b"/a/%2e", "dot segment"),
    (b"/a%252Fb", "double"),
    (b"/a%252e%252e", "double"),
    (b"/a%2541", "double"),
    (b"/a%00", "control"),
    (b"/a%0a", "control"),
    (b"/a%0D", "control"),
    (b"/a%1f", "control"),
    (b"/a%7F", "control"),
    (b"/a\x00", "control"),
    (b"/a\r\nb", "control"),
    (b"/a\x7f", "control"),
    (b"/" + b"a" * MAX_PATH, "too long"),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZED)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(("raw", "why"), REFUSED)
def test_normalize_refuses(raw: str, why: str) -> None:
    with pytest.raises(PathRefused) as info:
        normalize_path(raw)
    assert why in info.value.reason
    assert info.value.status == 400
    assert isinstance(info.value, SecureMWError)


@pytest.mark.parametrize("raw", RAW_OK)
def test_raw_accepts(raw: bytes) -> None:
    check_raw_path(raw)


@pytest.mark.parametrize(("raw", "why"), RAW_REFUSED)
def test_raw_refuses(raw: bytes, why: str) -> None:
    with pytest.raises(PathRefused) as info:
        check_raw_path(raw)
    assert why in info.value.reason


def test_length_limit_is_inclusive() -> None:
    path = "/" + "a" * (MAX_PATH - 1)
    assert normalize_path(path) == path
    check_raw_path(path.encode())


def test_normalized_path_is_a_fixed_point() -> None:
    for raw, expected in NORMALIZED:
        assert normalize_path(expected) == expected, raw


def test_cve_2023_33189_shape() -> None:
    # What the server decodes "/public/..%2fadmin" to must not be matched as "/public/..."
    with pytest.raises(PathRefused):
        check_raw_path(b"/public/..%2fadmin")
    with pytest.raises(PathRefused):
        check_raw_path(b"/public/%2e%2e/admin")
    assert normalize_path("/public/../admin") == "/admin"


_SEGMENT = st.sampled_from(["", ".", "..", "a", "b", "...", "%", "%2f", "%2e", "\\", "\x00",
                            "é", "\t", "%25", "?", "~"])


def _check_output(out: str) -> None:
    assert out.startswith("/")
    assert "/../" not in out and "/./" not in out and "//" not in out
    assert not out.endswith(("/..", "/."))
    assert normalize_path(out) == out


@settings(max_examples=500, deadline=None)
@given(st.lists(_SEGMENT, max_size=12))
def test_property_segments(segments: list[str]) -> None:
    raw = "/" + "/".join(segments)
    try:
        out = normalize_path(raw)
    except PathRefused:
        return
    _check_output(out)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_property_any_text(raw: str) -> None:
    for candidate in (raw, "/" + raw):
        try:
            out = normalize_path(candidate)
        except PathRefused:
            continue
        _check_output(out)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_property_raw_bytes(raw: bytes) -> None:
    try:
        check_raw_path(b"/" + raw)
    except PathRefused:
        return
    raw = raw.split(b"?", 1)[0]   # the query part is not looked at
    assert b"%2f" not in raw.lower() and b"%5c" not in raw.lower()
    assert not re.search(rb"%25[0-9a-fA-F]{2}", raw)
    assert b"\\" not in raw and b"\x00" not in raw
