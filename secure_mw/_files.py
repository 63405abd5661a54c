"""Reading and writing files that hold secrets.

A secret file readable or writable by group or others is refused, with a message that
names the path and its mode; files we create are written 0600 atomically.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from secure_mw.errors import ConfigError, ConfigProblem

__all__ = ["read_secret_file", "secret_file_problem", "write_secret_file"]

#: Upper bound for any secret file we read (a JWKS with many RSA keys is well below).
MAX_SECRET_FILE = 1 << 20


def secret_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not an acceptable secret file, or ``None`` when it is."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return f"secret file {str(p)!r} does not exist"
    except OSError as exc:
        return f"secret file {str(p)!r} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"secret file {str(p)!r} is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"secret file {str(p)!r} has mode {mode:04o}: it must not be readable or writable "
            f"by group or others (chmod 600 {p})"
        )
    if st.st_size > MAX_SECRET_FILE:
        return f"secret file {str(p)!r} is larger than {MAX_SECRET_FILE} bytes"
    return None


def read_secret_file(path: str | os.PathLike[str], *, key: str = "") -> bytes:
    """Read a secret file, checking type, mode and size on the open handle (so the file
    cannot be swapped between the check and the read); raises :class:`ConfigError`."""
    problem = secret_file_problem(path)
    if problem is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            problem = f"secret file {str(path)!r} cannot be read: {exc.strerror}"
        else:
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                mode = stat.S_IMODE(st.st_mode)
                if not stat.S_ISREG(st.st_mode):
                    problem = f"secret file {str(path)!r} is not a regular file"
                elif mode & 0o077:
                    problem = (f"secret file {str(path)!r} has mode {mode:04o}: it must not be "
                               f"readable or writable by group or others (chmod 600 {path})")
                else:
                    data = fh.read(MAX_SECRET_FILE + 1)
                    if len(data) <= MAX_SECRET_FILE:
                        return data
                    problem = f"secret file {str(path)!r} is larger than {MAX_SECRET_FILE} bytes"
    raise ConfigError([ConfigProblem(key, problem)])


def write_secret_file(
    path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False
) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically. Without ``overwrite`` the file
    is linked into place, which fails if another process created it first."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to overwrite a secret file")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)  # atomic create-if-absent: FileExistsError when it lost a race
    finally:
        Path(tmp).unlink(missing_ok=True)
