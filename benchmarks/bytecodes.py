"""How many Python bytecode instructions one warm signed-in request executes in the whole
stack, per function: a count that does not wander with the machine's load, unlike times.

The app behind the stack is a two-line ASGI (or WSGI) app, so what is counted is
secure_mw's work (and, for ASGI, the event loop's own instructions around one call)::

    python -m benchmarks.bytecodes            # both flavours, the 25 largest shares
    python -m benchmarks.bytecodes --top 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sessions import asgi_scope, wsgi_environ
from benchmarks.stack_apps import flask_full, starlette_full
from secure_mw.crypto import KeyRing

_BODY = {"type": "http.response.body", "body": b"ok"}


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
    await send(_BODY)


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


class Counter:
    """Instructions (and calls) per ``file:function`` while :meth:`run` runs ``work``."""

    def __init__(self) -> None:
        self.instructions: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def _trace(self, frame: FrameType, event: str, arg: object) -> Any:
        code = frame.f_code
        key = f"{os.path.basename(code.co_filename)}:{code.co_name}"
        if event == "call":
            self.calls[key] += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            self.instructions[key] += 1
        return self._trace

    def run(self, work: Any) -> None:
        sys.settrace(self._trace)
        try:
            work()
        finally:
            sys.settrace(None)

    def report(self, title: str, top: int) -> None:
        total = sum(self.instructions.values())
        print(f"{title}: {total:,} instructions in {sum(self.calls.values())} calls")
        for key, count in self.instructions.most_common(top):
            print(f"  {count:6,} {self.calls[key]:4}  {key}")


def asgi(top: int) -> None:
    now = time.time()
    app, cookie = starlette_full([KeyRing.new_key_text()], lambda: now)
    app.app = _asgi_app              # the chain protect() built, around the two-line app
    scope = asgi_scope(cookie)
    loop = asyncio.new_event_loop()

    async def send(message: dict[str, Any]) -> None:
        return None

    def one() -> None:
        loop.run_until_complete(app(scope.copy(), None, send))

    one()    # warm: caches filled, the session read once, the verdict kept
    one()    # and the lane's memos filled
    counter = Counter()
    counter.run(one)
    counter.report("ASGI protect(), warm signed-in GET /", top)


def wsgi(top: int) -> None:
    now = time.time()
    flask, cookie = flask_full([KeyRing.new_key_text()], lambda: now)
    chain = flask.wsgi_app
    chain.app = _wsgi_app
    environ = wsgi_environ(cookie)

    def one() -> None:
        for _chunk in chain(environ.copy(), lambda status, headers, exc_info=None: None):
            pass

    one()
    one()
    counter = Counter()
    counter.run(one)
    counter.report("WSGI SecureMW(app), warm signed-in GET /", top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=25, help="functions listed per flavour")
    args = parser.parse_args(argv)
    asgi(args.top)
    print()
    wsgi(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
