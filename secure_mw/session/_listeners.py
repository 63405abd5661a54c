"""The listening socket a request came through, and whether another process still waits for
connections on it: how :class:`~secure_mw.session.memory_store.SiblingWorkers` tells the
worker processes of one server (which share one listening socket) from processes that merely
share a parent. On Linux it reads ``/proc``: this process's descriptors, ``/proc/self/net/
tcp``, ``tcp6`` and ``unix`` (which of them listen, on what), and the epoll instances of a
process (whether it still polls the socket for connections). Elsewhere it inspects
``/dev/fd``. Nothing here raises; what cannot be read is reported as unknown
(docs/sessions.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from dataclasses import dataclass

__all__ = ["UNKNOWN", "Listener", "find_listener", "holds", "poller"]

#: ``/proc`` (a test points it elsewhere to exercise the fallback).
PROC = "/proc"
#: What :func:`poller` answers when the process's descriptors cannot be read.
UNKNOWN = -1
_LISTEN = "0A"                  # TCP_LISTEN in /proc/net/tcp
_SO_ACCEPTCON = 0x10000         # a listening Unix socket in /proc/net/unix
_EPOLLIN = 0x1


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening socket this process holds: its inode and descriptor on Linux, None
    where the system does not say."""

    inode: int | None = None
    fd: int | None = None


def find_listener(server: str, *, hint: Listener | None = None) -> Listener | None:
    """The listening socket of this process that serves ``server`` (a port, or a Unix socket
    path: :attr:`~secure_mw.http.RequestView.server`); None when this process holds none
    (an in-process test client names a port nobody listens on). Where the descriptors of
    this process cannot be listed at all, an empty :class:`Listener` (assumed).
    ``hint``: the answer of the last call, confirmed with one system call when it holds."""
    if hint is not None and hint.inode is not None and hint.fd is not None \
            and _link(f"{PROC}/self/fd/{hint.fd}") == f"socket:[{hint.inode}]":
        return hint
    if server.startswith("\x00"):          # an abstract Unix socket, as /proc/net/unix shows it
        server = "@" + server[1:]
    found = _linux_listeners()
    if found is not None:
        matching = sorted((inode, fd) for inode, fd, address in found if address == server)
        if not matching:
            return None
        inode, fd = matching[0]
        return Listener(inode, fd)
    addresses = _portable_listeners()
    return Listener() if addresses is None or server in addresses else None


def holds(pid: int, inode: int, fd: int | None) -> bool | None:
    """Whether process ``pid`` has socket ``inode`` open (``fd``: where it had it); None
    when its descriptors cannot be read (another user's, or not dumpable)."""
    wanted = f"socket:[{inode}]"
    if fd is not None and _link(f"{PROC}/{pid}/fd/{fd}") == wanted:
        return True
    try:
        names = os.listdir(f"{PROC}/{pid}/fd")
    except PermissionError:
        return None
    except OSError:
        return False
    return any(_link(f"{PROC}/{pid}/fd/{name}") == wanted for name in names)


def poller(pid: int | str, inode: int, fd: int | None = None) -> int | None:
    """The descriptor of an epoll instance of process ``pid`` (or ``"self"``) that waits
    for connections on socket ``inode``; None when none does; :data:`UNKNOWN` when the
    process's descriptors cannot be read. ``fd``: where one did last time (checked first)."""
    base = f"{PROC}/{pid}"
    if fd is not None and fd >= 0 and _polls(base, fd, inode):
        return fd
    try:
        names = os.listdir(f"{base}/fd")
    except PermissionError:
        return UNKNOWN
    except OSError:
        return None
    for name in names:
        if name.isdigit() and int(name) != fd and _polls(base, int(name), inode):
            return int(name)
    return None


def _polls(base: str, fd: int, inode: int) -> bool:
    """Whether descriptor ``fd`` of the process at ``base`` is an epoll instance that polls
    socket ``inode`` for reading (``tfd: … events: 19 … ino:c0121 sdev:9`` in its fdinfo)."""
    if _link(f"{base}/fd/{fd}") != "anon_inode:[eventpoll]":
        return False
    try:
        with open(f"{base}/fdinfo/{fd}", "rb") as handle:
            info = handle.read()
    except OSError:
        return False
    needle = b" ino:%x sdev:" % inode
    at = info.find(needle)
    while at >= 0:
        line = info[info.rfind(b"\n", 0, at) + 1:at].split()
        with contextlib.suppress(ValueError, IndexError):
            if int(line[line.index(b"events:") + 1], 16) & _EPOLLIN:
                return True
        at = info.find(needle, at + 1)
    return False


def _link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _linux_listeners() -> list[tuple[int, int, str]] | None:
    """(inode, fd, address) of each listening socket this process holds, the address being
    the port of a TCP socket or the path of a Unix one; None without a readable /proc."""
    try:
        names = os.listdir(f"{PROC}/self/fd")
    except OSError:
        return None
    sockets: dict[int, int] = {}
    for name in names:
        link = _link(f"{PROC}/self/fd/{name}")
        if link and link.startswith("socket:[") and name.isdigit():
            with contextlib.suppress(ValueError):
                sockets.setdefault(int(link[8:-1]), int(name))
    if not sockets:
        return []
    found: list[tuple[int, int, str]] = []
    readable = False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"{PROC}/self/net/{table}", encoding="ascii", errors="replace") as rows:
                readable = True
                next(rows, None)                                   # the heading
                for row in rows:
                    fields = row.split()
                    if len(fields) > 9 and fields[3] == _LISTEN and fields[9].isdigit():
                        inode = int(fields[9])
                        if inode in sockets:
                            port = int(fields[1].rpartition(":")[2], 16)
                            found.append((inode, sockets[inode], str(port)))
        except (OSError, ValueError):
            continue
    try:
        with open(f"{PROC}/self/net/unix", encoding="utf-8", errors="replace") as rows:
            readable = True
            next(rows, None)
            for row in rows:
                fields = row.split(maxsplit=7)
                if len(fields) == 8 and fields[6].isdigit() \
                        and int(fields[3], 16) & _SO_ACCEPTCON:
                    inode = int(fields[6])
                    if inode in sockets:
                        found.append((inode, sockets[inode], fields[7].rstrip("\n")))
    except (OSError, ValueError):
        pass
    return found if readable else None


def _portable_listeners() -> set[str] | None:
    """The addresses (port or Unix path) this process listens on, from ``/dev/fd`` (macOS,
    the BSDs); None when that cannot be told."""
    accept_conn = getattr(socket, "SO_ACCEPTCONN", None)
    # socket(fileno=) puts a descriptor in non-blocking mode when a default timeout is set,
    # and that flag is shared with the server's own descriptor: then do not look.
    if accept_conn is None or socket.getdefaulttimeout() is not None:
        return None
    try:
        names = os.listdir("/dev/fd")
    except OSError:
        return None
    addresses: set[str] = set()
    for name in names:
        if not name.isdigit():
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                continue
            copy = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue
        with sock, contextlib.suppress(OSError):
            if sock.getsockopt(socket.SOL_SOCKET, accept_conn):
                address = sock.getsockname()
                addresses.add(str(address[1]) if isinstance(address, tuple)
                              else os.fsdecode(address))
    return addresses
