"""The one way every ASGI layer runs: :class:`Layer` and :class:`Chain`.

A layer looks at a request in :meth:`Layer.enter` and answers with one :data:`Verdict`
(or a coroutine that returns one, when the decision waits for I/O): ``None`` (go on), a
:class:`~secure_mw.http.Reply` (answer now; the WebSocket refusal and the bodiless ``HEAD``
answer are handled here, once), or a :data:`Hook` that edits the response headers on their
way out. A middleware used alone is a chain of one layer; ``protect()`` fuses its layers into
one :class:`Chain`, so a request crosses them in one call, with one request view and one
``send`` wrapper, whatever the number of layers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from types import CoroutineType
from typing import Any, ClassVar, TypeAlias

from secure_mw._stack import fused
from secure_mw.asgi._io import (
    VIEW_KEY,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    refuse_websocket,
)
from secure_mw.http import Reply

__all__ = ["HTTP", "HTTP_AND_WEBSOCKET", "Chain", "Hook", "Layer", "Verdict", "fuse"]

RawHeaders: TypeAlias = list[tuple[bytes, bytes]]
#: Edits the header lines of the response start (or WebSocket accept) in place.
Hook: TypeAlias = Callable[[RawHeaders], None]
Verdict: TypeAlias = "Reply | Hook | None"
#: What :meth:`Layer.enter` returns: a verdict, or a coroutine that decides it.
Entered: TypeAlias = "Verdict | Coroutine[Any, Any, Verdict]"

HTTP = frozenset({"http"})
HTTP_AND_WEBSOCKET = frozenset({"http", "websocket"})
_STARTS = frozenset({"http.response.start", "websocket.accept"})


class Layer:
    """One secure_mw layer around ``app``. Subclasses set :attr:`kinds` (the scope types
    they look at; others pass straight through) and write :meth:`enter`, which returns a
    coroutine only when the decision must wait (a store, a body read through ``receive``).
    A layer that must undo something once the app has answered (a context variable) sets
    :attr:`has_leave` and writes :meth:`leave`."""

    kinds: ClassVar[frozenset[str]] = HTTP_AND_WEBSOCKET
    has_leave: ClassVar[bool] = False
    app: ASGIApp

    def enter(self, scope: Scope, receive: Receive) -> Entered:
        raise NotImplementedError

    def leave(self, scope: Scope) -> None:
        """Called once the app has answered (or raised), when :attr:`has_leave`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in self.kinds:
            await run((self,), self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


class Chain:
    """Layers run in order around ``app``, as if each wrapped the next."""

    def __init__(self, layers: Sequence[Layer], app: ASGIApp) -> None:
        self.layers = tuple(layers)
        self.app = app
        self._by_kind = {kind: tuple(layer for layer in self.layers if kind in layer.kinds)
                         for kind in HTTP_AND_WEBSOCKET}
        from secure_mw.asgi._lane import Lane

        #: The one-pass lane for plain HTTP requests (None: every request takes the chain).
        self.lane = Lane.for_chain(self._by_kind["http"])

    def __repr__(self) -> str:
        names = " → ".join(type(layer).__name__ for layer in self.layers)
        return f"Chain({names} → {self.app!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None and scope["type"] == "http":
            await lane.serve(self.app, scope, receive, send)
            return
        layers = self._by_kind.get(scope["type"])
        if layers:
            await run(layers, self.app, scope, receive, send, drop_view=True)
        else:
            await self.app(scope, receive, send)


async def run(layers: Sequence[Layer], app: ASGIApp, scope: Scope, receive: Receive,
              send: Send, *, drop_view: bool = False) -> None:
    """``layers`` in order, then ``app``: the first reply answers; hooks edit the response
    the app (or a later layer's reply) sends, innermost first. ``drop_view``: a chain's
    view stays its layers' (the app, or a stack nested in it, builds its own); a layer
    used alone leaves it to the next layer, which may be one of ours."""
    hooks: list[Hook] | None = None
    leaving: list[Layer] | None = None
    try:
        for layer in layers:
            verdict = layer.enter(scope, receive)
            if verdict.__class__ is CoroutineType:
                verdict = await verdict
            if layer.has_leave:
                if leaving is None:
                    leaving = [layer]
                else:
                    leaving.append(layer)
            if verdict is None:
                continue
            if isinstance(verdict, Reply):
                await answer(scope, receive, send, verdict, hooks)
                return
            if hooks is None:
                hooks = [verdict]  # type: ignore[list-item]
            else:
                hooks.append(verdict)  # type: ignore[arg-type]
        if hooks is not None:
            send = _hooked(send, hooks)
        if drop_view:
            scope.pop(VIEW_KEY, None)
        await app(scope, receive, send)
    finally:
        if leaving is not None:
            for layer in reversed(leaving):
                layer.leave(scope)


async def answer(scope: Scope, receive: Receive, send: Send, reply: Reply,
                 hooks: list[Hook] | None) -> None:
    """Send ``reply`` (refuse a WebSocket handshake before it is accepted), through the
    hooks of the layers that were crossed."""
    if scope["type"] == "websocket":
        await refuse_websocket(send, receive)
        return
    headers = [(name.encode("latin-1"), value.encode("latin-1"))
               for name, value in reply.headers]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    if hooks is not None:
        for hook in reversed(hooks):
            hook(headers)
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body",
                "body": b"" if _is_head(scope) else reply.body})


def _is_head(scope: Scope) -> bool:
    return str(scope.get("method", "")).upper() == "HEAD"


def _hooked(send: Send, hooks: list[Hook]) -> Send:
    hooks.reverse()    # the innermost layer edits first, as if each wrapped the next

    async def hooked(message: Message) -> None:
        if message["type"] in _STARTS:
            headers = list(message.get("headers", ()))
            for hook in hooks:
                hook(headers)
            message["headers"] = headers
        await send(message)

    return hooked


def fuse(app: Any) -> Any:
    """``app`` with every run of nested :class:`Layer` (and :class:`Chain`) objects turned
    into one :class:`Chain`; other middlewares stay where they are, their insides fused."""
    return fused(app, Layer, Chain)
