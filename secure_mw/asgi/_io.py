"""ASGI plumbing shared by every ASGI middleware: write a Reply, add headers, read a body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from secure_mw.errors import SecureMWError
from secure_mw.http import Reply, RequestView

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_reply(send: Send, reply: Reply, *, head: bool = False) -> None:
    headers = encode_headers(reply.headers)
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


async def refuse_websocket(send: Send, receive: Receive) -> None:
    """Refuse a WebSocket handshake before accepting it (the server answers 403)."""
    await send({"type": "websocket.close", "code": 1008, "reason": "authentication required"})


class BodyTooLarge(SecureMWError):
    """The request body is longer than the limit."""

    status = 413


async def read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            break
    return bytes(body)


VIEW_KEY = "secure_mw.view"


def view_of(scope: Scope) -> RequestView:
    """The request view of ``scope``, built once and shared by every secure_mw layer (a layer
    that changes what the view shows — the client address — drops it)."""
    view = scope.get(VIEW_KEY)
    if view is None:
        view = scope[VIEW_KEY] = RequestView.from_scope(scope)
    return view
