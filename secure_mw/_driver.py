"""Write each request flow once, run it sync (WSGI) or async (ASGI).

A flow is a generator that yields :class:`Op` values whenever it needs I/O (a store read, an
HTTP call to the identity provider) and receives the result back. :func:`run_sync` calls the
blocking function of each op, :func:`run_async` awaits the coroutine function; exceptions
raised by the I/O are thrown back into the flow at the ``yield``. The decision logic therefore
exists exactly once, whichever flavour serves the request::

    def load(store, sid):
        blob = yield Op(store.load, store.aload, sid)
        return decode(blob)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator
from time import perf_counter
from typing import Any, TypeVar

from secure_mw import _observe

__all__ = ["Flow", "Op", "run_async", "run_inline", "run_sync"]

T = TypeVar("T")


class Op:
    """One I/O step: ``sync(*args, **kwargs)`` under WSGI, ``await async_(...)`` under
    ASGI."""

    __slots__ = ("args", "async_", "inline", "kwargs", "sync")

    def __init__(self, sync: Callable[..., Any], async_: Callable[..., Awaitable[Any]],
                 *args: Any, **kwargs: Any) -> None:
        self.sync = sync
        self.async_ = async_
        self.args = args
        self.kwargs = kwargs
        # An object that never blocks (in-memory stores, limiters) is called directly even
        # under ASGI: awaiting a coroutine that does no I/O only costs time.
        self.inline = getattr(getattr(sync, "__self__", None), "nonblocking", False) is True

    def __repr__(self) -> str:
        return f"Op({getattr(self.sync, '__qualname__', self.sync)!r})"


Flow = Generator[Op, Any, T]


def _step(flow: Flow[Any], op: Op) -> Op:
    """Run ``op`` without waiting and hand its result (or what it raised) to ``flow``: the
    flow's next op (its StopIteration ends the caller's loop)."""
    try:
        result = op.sync(*op.args, **op.kwargs)
    except BaseException as exc:
        return flow.throw(exc)
    return flow.send(result)


def run_sync(flow: Flow[T]) -> T:
    """Run ``flow`` to completion with blocking I/O (telling the request's observer, when
    one watches, how long each op that may wait took and what it raised)."""
    seen = _observe.current.get() if _observe.active else None
    observer = seen.observer if seen is not None else None
    try:
        op = next(flow)
        while True:
            if observer is None or op.inline:   # nothing to time (an in-memory engine)
                op = _step(flow, op)
                continue
            start = perf_counter()
            try:
                result = op.sync(*op.args, **op.kwargs)
            except BaseException as exc:
                observer.store_call(op.sync, perf_counter() - start, exc)
                op = flow.throw(exc)
            else:
                observer.store_call(op.sync, perf_counter() - start, None)
                op = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def run_async(flow: Flow[T]) -> T:
    """Run ``flow`` to completion, awaiting each op (see :func:`_resume_async`)."""
    seen = _observe.current.get() if _observe.active else None
    try:
        op = next(flow)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    return await _resume_async(flow, op, seen.observer if seen is not None else None)


def run_inline(flow: Flow[T]) -> T | Coroutine[Any, Any, T]:
    """Run ``flow`` under ASGI without a coroutine while its ops never block (in-memory
    stores and limiters): its result when it finished so, else — at the first op that would
    wait — a coroutine that finishes it (the caller awaits it). A warm request served from
    memory then costs no coroutine and no ``await`` at all."""
    try:
        op = next(flow)
        while op.inline:
            op = _step(flow, op)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    seen = _observe.current.get() if _observe.active else None
    return _resume_async(flow, op, seen.observer if seen is not None else None)


async def _resume_async(flow: Flow[T], op: Op, observer: _observe.Observer | None) -> T:
    """The rest of a flow from ``op``, awaiting each op that waits and telling ``observer``
    (when given) how long it took and what it raised."""
    try:
        while True:
            if op.inline:
                op = _step(flow, op)
                continue
            start = perf_counter()
            try:
                result = await op.async_(*op.args, **op.kwargs)
            except BaseException as exc:
                if observer is not None:
                    observer.store_call(op.sync, perf_counter() - start, exc)
                op = flow.throw(exc)
            else:
                if observer is not None:
                    observer.store_call(op.sync, perf_counter() - start, None)
                op = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def done(value: T) -> Flow[T]:
    """A flow that needs no I/O (for code paths that must still be flows)."""
    yield from ()
    return value
