"""The one way every WSGI layer runs: :class:`Layer` and :class:`Chain` (the WSGI twin of
:mod:`secure_mw.asgi._layer`).

A layer looks at a request in :meth:`Layer.enter` and answers with one :data:`Verdict`:
``None`` (go on), a :class:`~secure_mw.http.Reply` (answer now), or a :data:`Hook` that
edits the response headers on their way out. A middleware used alone is a chain of one
layer; ``protect()`` fuses its layers into one :class:`Chain`: one call, one request view
and one ``start_response`` wrapper, whatever the number of layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeAlias

from secure_mw._stack import fused
from secure_mw.http import Reply
from secure_mw.wsgi._io import VIEW_KEY, Environ, ExcInfo, StartResponse, WSGIApp, status_line

__all__ = ["Chain", "Hook", "Layer", "Verdict", "fuse"]

Headers: TypeAlias = list[tuple[str, str]]
#: Edits the header lines the app passes to ``start_response``, in place.
Hook: TypeAlias = Callable[[Headers], None]
Verdict: TypeAlias = "Reply | Hook | None"


class Layer:
    """One secure_mw layer around ``app``: subclasses write :meth:`enter`. A layer that must
    undo something once the app has answered (a context variable) sets :attr:`has_leave`
    and writes :meth:`leave`."""

    has_leave: ClassVar[bool] = False
    app: WSGIApp

    def enter(self, environ: Environ) -> Verdict:
        raise NotImplementedError

    def leave(self, environ: Environ) -> None:
        """Called once the app has returned (or raised), when :attr:`has_leave`."""

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return run((self,), self.app, environ, start_response)


class Chain:
    """Layers run in order around ``app``, as if each wrapped the next."""

    def __init__(self, layers: Sequence[Layer], app: WSGIApp) -> None:
        self.layers = tuple(layers)
        self.app = app
        from secure_mw.wsgi._lane import Lane

        #: The one-pass lane for plain requests (None: every request takes the chain).
        self.lane = Lane.for_chain(self.layers)

    def __repr__(self) -> str:
        names = " → ".join(type(layer).__name__ for layer in self.layers)
        return f"Chain({names} → {self.app!r})"

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        lane = self.lane
        if lane is not None:
            return lane.serve(self.app, environ, start_response)
        return run(self.layers, self.app, environ, start_response, drop_view=True)


def run(layers: Sequence[Layer], app: WSGIApp, environ: Environ,
        start_response: StartResponse, *, drop_view: bool = False) -> Iterable[bytes]:
    """``layers`` in order, then ``app``: the first reply answers; hooks edit the response
    headers, innermost first. ``drop_view``: a chain's view stays its layers' (the app, or
    a stack nested in it, builds its own); a layer used alone leaves it to the next layer,
    which may be one of ours."""
    hooks: list[Hook] | None = None
    leaving: list[Layer] | None = None
    try:
        for layer in layers:
            verdict = layer.enter(environ)
            if layer.has_leave:
                if leaving is None:
                    leaving = [layer]
                else:
                    leaving.append(layer)
            if verdict is None:
                continue
            if isinstance(verdict, Reply):
                return answer(environ, start_response, verdict, hooks)
            if hooks is None:
                hooks = [verdict]
            else:
                hooks.append(verdict)
        if hooks is not None:
            start_response = _hooked(start_response, hooks)
        if drop_view:
            environ.pop(VIEW_KEY, None)
        return app(environ, start_response)
    finally:
        if leaving is not None:
            for layer in reversed(leaving):
                layer.leave(environ)


def answer(environ: Environ, start_response: StartResponse, reply: Reply,
           hooks: list[Hook] | None) -> list[bytes]:
    """Write ``reply`` through the hooks of the layers that were crossed."""
    headers = [*reply.headers, ("content-length", str(len(reply.body)))]
    if hooks is not None:
        for hook in reversed(hooks):
            hook(headers)
    start_response(status_line(reply.status), headers)
    head = str(environ.get("REQUEST_METHOD", "")).upper() == "HEAD"
    return [b"" if head else reply.body]


def _hooked(start_response: StartResponse, hooks: list[Hook]) -> StartResponse:
    hooks.reverse()    # the innermost layer edits first, as if each wrapped the next

    def hooked(status: str, headers: Headers,
               exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
        lines = list(headers)
        for hook in hooks:
            hook(lines)
        return start_response(status, lines, exc_info)

    return hooked


def fuse(app: Any) -> Any:
    """``app`` with every run of nested :class:`Layer` (and :class:`Chain`) objects turned
    into one :class:`Chain`; other middlewares stay where they are, their insides fused."""
    return fused(app, Layer, Chain)
