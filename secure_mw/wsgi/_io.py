"""WSGI plumbing shared by every WSGI middleware."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Any

from secure_mw.errors import SecureMWError
from secure_mw.http import Reply, RequestView

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


def write_reply(start_response: StartResponse, reply: Reply, *,
                head: bool = False) -> list[bytes]:
    headers = [*reply.headers, ("content-length", str(len(reply.body)))]
    start_response(status_line(reply.status), headers)
    return [b"" if head else reply.body]


class BodyTooLarge(SecureMWError):
    """The request body is longer than the limit."""

    status = 413


def read_body(environ: Environ, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (by Content-Length; chunked bodies are read
    up to the limit)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    length_text = environ.get("CONTENT_LENGTH") or ""
    if length_text.isdecimal():
        length = int(length_text)
        if length > limit:
            raise BodyTooLarge
        return bytes(stream.read(length)) if length else b""
    if environ.get("wsgi.input_terminated"):
        data = bytes(stream.read(limit + 1))
        if len(data) > limit:
            raise BodyTooLarge
        return data
    return b""


VIEW_KEY = "secure_mw.view"


def view_of(environ: Environ) -> RequestView:
    """The request view of ``environ``, built once and shared by every secure_mw layer."""
    view = environ.get(VIEW_KEY)
    if view is None:
        view = environ[VIEW_KEY] = RequestView.from_environ(environ)
    return view
