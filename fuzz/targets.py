"""Fuzz targets: each takes arbitrary bytes, feeds them to one parser that meets hostile
input, and fails (raises :class:`Finding`, or lets an unexpected exception through) only
when the parser breaks its contract — a value or the documented exception, never a crash,
and the documented invariants of its answer.

The same functions are driven by atheris (``python -m fuzz NAME``: coverage-guided, as long
as you like) and by hypothesis in the test suite (tests/test_fuzz_targets.py: a bounded
number of examples at every run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from secure_mw.authz.paths import PathRefused, normalize_path, route_path
from secure_mw.crypto import KeyRing
from secure_mw.errors import ConfigError, DecryptError, InvalidToken
from secure_mw.guards.clientaddr import TrustedProxies
from secure_mw.guards.redirect import is_safe_redirect
from secure_mw.http import parse_cookies
from secure_mw.session.model import Session
from secure_mw.settings import Settings
from secure_mw.tokens.jwks import KeySet
from secure_mw.tokens.jwt import JWTVerifier, sign
from secure_mw.tokens.keys import SigningKey

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["TARGETS", "Finding"]


class Finding(AssertionError):
    """A parser broke its contract on this input."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@functools.cache
def _ring() -> KeyRing:
    return KeyRing.from_strings([KeyRing.new_key_text()])


def session_cookie(data: bytes) -> None:
    """The session cookie path: the Cookie header, the envelope, the session record."""
    text = _text(data)
    cookies = parse_cookies(text)
    if not isinstance(cookies, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in cookies.items()):
        raise Finding("parse_cookies gave something other than str -> str")
    ring = _ring()
    for value in (text, *cookies.values()):
        try:
            ring.decrypt(value, aad=b"cookie:fuzz")
        except DecryptError:
            pass
        else:
            raise Finding("a ciphertext nobody made decrypted")
    with contextlib.suppress(ValueError):   # a record that decrypts must still be checked
        Session.from_bytes(ring.decrypt(ring.encrypt(data, aad=b"x"), aad=b"x"))


@functools.cache
def _verifier() -> tuple[JWTVerifier, SigningKey]:
    key = SigningKey.generate("ES256")
    verifier = JWTVerifier(KeySet([key.verifying_key()]), issuer="https://iss.example",
                           audience="fuzz", clock=lambda: 1_800_000_000.0)
    return verifier, key


def token(data: bytes) -> None:
    """The JWT verifier: arbitrary text, and claims of our own key built from the input."""
    verifier, key = _verifier()
    text = _text(data)
    try:
        verifier.verify(text)
    except InvalidToken:
        pass
    else:
        raise Finding("a token nobody signed verified")
    try:
        claims = json.loads(text)
    except (ValueError, RecursionError):
        return
    if not isinstance(claims, dict):
        return
    try:
        signed = sign(claims, key)
    except (ValueError, TypeError):
        return
    try:
        got = verifier.verify(signed)
    except InvalidToken:
        return
    if got.get("iss") != "https://iss.example" or got.get("aud") not in ("fuzz", ["fuzz"]):
        raise Finding("claims verified with a wrong issuer or audience")
    now = 1_800_000_000.0
    if not (isinstance(got.get("exp"), int | float) and got["exp"] > now - 60):
        raise Finding("an expired token verified")


def redirect(data: bytes) -> None:
    """The open-redirect guard: never raises; what it calls safe stays on allowed hosts."""
    from urllib.parse import urlsplit

    url = _text(data)
    allowed = ("app.example.com", "*.trusted.example")
    try:
        safe = is_safe_redirect(url, allowed)
    except Exception as exc:
        raise Finding(f"is_safe_redirect raised {type(exc).__name__}") from exc
    if not safe:
        return
    if any(c in url for c in "\\\r\n\t\x00"):
        raise Finding("a URL with a backslash or control character was called safe")
    parts = urlsplit(url)
    if parts.netloc or url.startswith("//"):
        host = (parts.hostname or "").rstrip(".").lower()
        if host != "app.example.com" and not host.endswith(".trusted.example"):
            raise Finding(f"a redirect to {host!r} was called safe")


def path(data: bytes) -> None:
    """The path normalizer: a normalized path or PathRefused; normalizing is idempotent."""
    raw = _text(data)
    try:
        once = normalize_path(raw)
    except PathRefused:
        return
    if not once.startswith("/"):
        raise Finding(f"normalized path {once!r} does not start with /")
    if any(seg.split(";", 1)[0] in (".", "..") for seg in once.split("/")):
        raise Finding(f"normalized path {once!r} keeps a dot segment")
    try:
        if normalize_path(once) != once:
            raise Finding("normalizing twice changed the path")
    except PathRefused as exc:
        raise Finding(f"a normalized path was refused: {exc}") from exc
    routed = route_path(raw)
    if not isinstance(routed, str):
        raise Finding("route_path gave no string")


@functools.cache
def _proxies() -> tuple[TrustedProxies, ...]:
    return tuple(TrustedProxies(["10.0.0.0/8", "2001:db8::/32"], header=h)
                 for h in ("auto", "forwarded", "x-forwarded-for"))


def forwarded(data: bytes) -> None:
    """Forwarded / X-Forwarded-* from a trusted peer: resolve never raises, and the client
    it reports is an IP address or empty."""
    import ipaddress

    text = _text(data)
    third = len(text) // 3
    headers = {"forwarded": text, "x-forwarded-for": text[:third],
               "x-forwarded-proto": text[third:2 * third], "x-forwarded-host": text[2 * third:]}
    for proxies in _proxies():
        try:
            info = proxies.resolve("10.1.2.3", headers, scheme="http", host="app")
        except Exception as exc:
            raise Finding(f"resolve raised {type(exc).__name__}") from exc
        if info.ip:
            try:
                ipaddress.ip_address(info.ip)
            except ValueError:
                raise Finding(f"client {info.ip!r} is not an IP address") from None
        if info.scheme not in ("http", "https"):
            raise Finding(f"scheme {info.scheme!r}")


def _mapping(data: bytes) -> Any:
    text = _text(data)
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, UnicodeError):
        pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def rules(data: bytes) -> None:
    """The access-rules parser: a JSON or TOML value as ``[access_control]``."""
    value = _mapping(data)
    if value is None:
        return
    for section in (value, {"rules": value}, {"rules": [value]}):
        with contextlib.suppress(ConfigError):
            Settings.from_mapping({"access_control": section}, environ={})


def settings(data: bytes) -> None:
    """The settings loader: any TOML document (or JSON value) as a whole configuration."""
    value = _mapping(data)
    if value is None:
        return
    try:
        Settings.from_mapping(value if isinstance(value, dict) else {"x": value}, environ={})
    except ConfigError as exc:
        if not exc.problems or not all(isinstance(p.message, str) for p in exc.problems):
            raise Finding("a ConfigError without its problems") from exc


TARGETS: dict[str, Callable[[bytes], None]] = {
    "session_cookie": session_cookie, "token": token, "redirect": redirect, "path": path,
    "forwarded": forwarded, "rules": rules, "settings": settings,
}
