"""Outbound HTTP: the one module through which secure_mw talks to identity providers and JWKS
endpoints, sync and async. httpx is imported here and nowhere else.

::

    data, headers = get_json("https://idp.example/.well-known/openid-configuration")
    data, headers = await aget_json(url)
    status, data, headers = post_form(token_endpoint, {"grant_type": "authorization_code", ...})

Every refusal raises :class:`~secure_mw.errors.StoreUnavailable` (a 503: identity fails
closed) with a short reason naming the host, never the path or query:

* only ``https`` URLs — ``http`` only to a loopback host, or with ``allow_http=True``;
  no user info in the URL;
* a total deadline of ``timeout`` seconds (default 5) as well as httpx's per-phase timeouts;
* redirects: GET follows at most 3, to the same scheme only (so never https → http);
  POST follows none;
* the response must be 2xx (:func:`post_form` also returns 4xx, the OAuth error replies),
  declare a JSON media type (``application/json`` or ``application/*+json``), stay within
  ``max_bytes`` once decompressed, and be strict JSON (UTF-8, no duplicate member, no NaN).

Response headers come back as a plain ``dict`` with lower-case names.

TLS follows :mod:`secure_mw.tls` (TLS 1.2 or later, its cipher suites, certificates and host
names always verified against the system's store and certifi's), plus the certificates of
every directory given to :func:`trust_certificates_directory` (``server.certificates_directory``:
a private CA for an internal provider).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.errors import StoreUnavailable

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_REDIRECTS",
    "HTTPStatusError",
    "aget_json",
    "apost_form",
    "check_url",
    "get_json",
    "host_of",
    "post_form",
    "trust_certificates_directory",
]

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 1024 * 1024
MAX_REDIRECTS = 3

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_REQUEST_HEADERS = {
    "Accept": "application/json, application/jwk-set+json;q=0.9",
    "User-Agent": "secure-mw",
}
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError)

Headers = dict[str, str]


class _Trust:
    """The TLS context of outbound calls, made once and shared (an SSLContext is
    thread-safe), and the extra certificate directories it trusts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.directories: tuple[str, ...] = ()
        self.context: ssl.SSLContext | None = None


_trust = _Trust()


def trust_certificates_directory(directory: str | Path) -> None:
    """Trust the certificates of ``directory`` too, for every outbound call of this process
    (directories add up). ``ValueError`` names a directory or file that cannot be used."""
    from secure_mw.tls import client_context, trust_directory

    path = str(Path(directory).resolve())
    with _trust.lock:
        if path in _trust.directories:
            return
        wanted = (*_trust.directories, path)
        context = client_context()
        for each in wanted:
            trust_directory(context, each)
        _trust.directories, _trust.context = wanted, context


def _verify() -> ssl.SSLContext:
    context = _trust.context
    if context is None:
        from secure_mw.tls import client_context

        with _trust.lock:
            if _trust.context is None:
                _trust.context = client_context()
            context = _trust.context
    return context


class HTTPStatusError(StoreUnavailable):
    """The server answered with a status the call does not accept (``http_status``)."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


# -- URL policy ---------------------------------------------------------------------------


def host_of(url: str) -> str:
    """The host of a URL, for log lines and error reasons (never path or query)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_http: bool = False) -> None:
    """Raise :class:`ValueError` unless ``url`` is one secure_mw may fetch: absolute https
    (or http to a loopback host, or any http with ``allow_http``), with a host and no user
    info. Configuration code calls this at start-up."""
    if not isinstance(url, str):
        raise ValueError("URL must be a string")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise ValueError("malformed URL") from None
    host = parts.hostname
    if not host:
        raise ValueError("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URL must not carry user info")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("URL contains whitespace or control characters")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and (allow_http or _is_loopback(host)):
        return
    raise ValueError("URL must use https (http only to a loopback host)")


def _checked(url: str, allow_http: bool) -> str:
    try:
        check_url(url, allow_http=allow_http)
    except ValueError as exc:
        raise StoreUnavailable(f"refused URL for {host_of(url)}: {exc}") from None
    return url


def _headers_for_redirect(url: str, target: str, headers: Mapping[str, str] | None
                          ) -> Mapping[str, str] | None:
    """The caller's headers for the next hop: credentials never follow to another origin."""
    if headers is None:
        return None
    a, b = urlsplit(url), urlsplit(target)
    if (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port):
        return headers
    return {k: v for k, v in headers.items() if k.lower() not in ("authorization", "cookie")}


def _redirect_target(url: str, location: str | None, allow_http: bool) -> str:
    if not location:
        raise StoreUnavailable(f"redirect without location from {host_of(url)}")
    try:
        target = urljoin(url, location)
        same_scheme = urlsplit(target).scheme == urlsplit(url).scheme
    except ValueError:
        raise StoreUnavailable(f"malformed redirect from {host_of(url)}") from None
    if not same_scheme:
        raise StoreUnavailable(f"redirect to another scheme refused from {host_of(url)}")
    return _checked(target, allow_http)


# -- response checks ----------------------------------------------------------------------


def _check_response(url: str, status: int, headers: httpx.Headers, max_bytes: int,
                    client_errors: bool) -> None:
    if not (200 <= status < 300 or (client_errors and 400 <= status < 500)):
        raise HTTPStatusError(status, f"HTTP {status} from {host_of(url)}")
    if headers.get("content-length", "") == "0":
        return  # an empty answer (revocation, for one) is read as None
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not (media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )):
        raise StoreUnavailable(f"non-JSON response from {host_of(url)}")
    length = headers.get("content-length", "")
    if length.isdecimal() and int(length) > max_bytes:
        raise StoreUnavailable(f"response too large from {host_of(url)}")


def _parse(url: str, body: bytes) -> Any:
    if not body:
        return None
    try:
        return loads_strict(body)
    except StrictJSONError:
        raise StoreUnavailable(f"invalid JSON from {host_of(url)}") from None


def _too_large(url: str) -> StoreUnavailable:
    return StoreUnavailable(f"response too large from {host_of(url)}")


def _check_options(timeout: float, max_bytes: int) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
        math.isfinite(timeout) and timeout > 0
    ):
        raise ValueError("timeout must be a positive number of seconds")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError("max_bytes must be a positive integer")


def _request_headers(extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**_REQUEST_HEADERS, **(extra or {})}


def _transport_error(url: str, exc: Exception) -> StoreUnavailable:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "request failed"
    return StoreUnavailable(f"{kind}: {host_of(url)}")


# -- sync ---------------------------------------------------------------------------------


def _send(method: str, url: str, *, form: Mapping[str, str] | None,
          headers: Mapping[str, str] | None, timeout: float, max_bytes: int,
          allow_http: bool) -> tuple[int, Any, Headers]:
    _check_options(timeout, max_bytes)
    url = _checked(url, allow_http)
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, verify=_verify()) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream(method, url, data=form,
                                   headers=_request_headers(headers)) as resp:
                    if resp.status_code in _REDIRECTS and method == "GET":
                        target = _redirect_target(url, resp.headers.get("location"), allow_http)
                        headers = _headers_for_redirect(url, target, headers)
                        url = target
                        continue
                    _check_response(url, resp.status_code, resp.headers, max_bytes,
                                    client_errors=method == "POST")
                    body = bytearray()
                    for chunk in resp.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise _too_large(url)
                        if time.monotonic() > deadline:
                            raise StoreUnavailable(f"timed out: {host_of(url)}")
                    return resp.status_code, _parse(url, bytes(body)), dict(resp.headers.items())
    except _HTTPX_ERRORS as exc:
        raise _transport_error(url, exc) from None
    raise StoreUnavailable(f"too many redirects from {host_of(url)}")


def get_json(url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = DEFAULT_MAX_BYTES,
             headers: Mapping[str, str] | None = None,
             allow_http: bool = False) -> tuple[Any, Headers]:
    """GET a JSON document: ``(data, headers)``, or :class:`StoreUnavailable`."""
    _, data, response_headers = _send("GET", url, form=None, headers=headers, timeout=timeout,
                                      max_bytes=max_bytes, allow_http=allow_http)
    return data, response_headers


def post_form(url: str, form: Mapping[str, str], *, timeout: float = DEFAULT_TIMEOUT,
              max_bytes: int = DEFAULT_MAX_BYTES, headers: Mapping[str, str] | None = None,
              allow_http: bool = False) -> tuple[int, Any, Headers]:
    """POST a form (``application/x-www-form-urlencoded``), expecting JSON back.

    Returns ``(status, data, headers)`` for a 2xx or 4xx JSON reply (OAuth endpoints answer
    errors with 400 and a JSON body); anything else raises :class:`StoreUnavailable`.
    """
    return _send("POST", url, form=form, headers=headers, timeout=timeout,
                 max_bytes=max_bytes, allow_http=allow_http)


# -- async --------------------------------------------------------------------------------


async def _asend(method: str, url: str, *, form: Mapping[str, str] | None,
                 headers: Mapping[str, str] | None, timeout: float, max_bytes: int,
                 allow_http: bool) -> tuple[int, Any, Headers]:
    _check_options(timeout, max_bytes)
    url = _checked(url, allow_http)
    current = [url]  # the URL being fetched, for error reasons after a redirect
    sent = [headers]  # the caller's headers, without credentials after a cross-origin hop

    async def run() -> tuple[int, Any, Headers]:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                     verify=_verify()) as client:
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream(method, current[0], data=form,
                                         headers=_request_headers(sent[0])) as resp:
                    if resp.status_code in _REDIRECTS and method == "GET":
                        target = _redirect_target(
                            current[0], resp.headers.get("location"), allow_http
                        )
                        sent[0] = _headers_for_redirect(current[0], target, sent[0])
                        current[0] = target
                        continue
                    _check_response(current[0], resp.status_code, resp.headers, max_bytes,
                                    client_errors=method == "POST")
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise _too_large(current[0])
                    data = _parse(current[0], bytes(body))
                    return resp.status_code, data, dict(resp.headers.items())
        raise StoreUnavailable(f"too many redirects from {host_of(current[0])}")

    try:
        return await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        raise StoreUnavailable(f"timed out: {host_of(current[0])}") from None
    except _HTTPX_ERRORS as exc:
        raise _transport_error(current[0], exc) from None


async def aget_json(url: str, *, timeout: float = DEFAULT_TIMEOUT,
                    max_bytes: int = DEFAULT_MAX_BYTES, headers: Mapping[str, str] | None = None,
                    allow_http: bool = False) -> tuple[Any, Headers]:
    """Async :func:`get_json`."""
    _, data, response_headers = await _asend("GET", url, form=None, headers=headers,
                                             timeout=timeout, max_bytes=max_bytes,
                                             allow_http=allow_http)
    return data, response_headers


async def apost_form(url: str, form: Mapping[str, str], *, timeout: float = DEFAULT_TIMEOUT,
                     max_bytes: int = DEFAULT_MAX_BYTES, headers: Mapping[str, str] | None = None,
                     allow_http: bool = False) -> tuple[int, Any, Headers]:
    """Async :func:`post_form`."""
    return await _asend("POST", url, form=form, headers=headers, timeout=timeout,
                        max_bytes=max_bytes, allow_http=allow_http)
