"""Set-Cookie lines and the split-cookie codec.

Browsers keep about 4 KB per cookie. A value longer than :data:`CHUNK` is split over
``name``, ``name.1``, ``name.2`` …; the first part is prefixed with the count (``3.``), which
cannot be mistaken for data because base64url has no ``.``. Reading is all-or-nothing: a
missing or extra part gives no value, and since the whole value is one authenticated
ciphertext, parts from two different values never decrypt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CHUNK", "CookieJarSpec", "join_chunks", "split_chunks"]

CHUNK = 3800
MAX_CHUNKS = 8
_EXPIRED = "Thu, 01 Jan 1970 00:00:00 GMT"
_COUNTS = frozenset(str(n) for n in range(2, MAX_CHUNKS + 1))


@dataclass(frozen=True, slots=True)
class CookieJarSpec:
    """How our cookies are written: attributes shared by every cookie we set."""

    secure: bool = True
    domain: str = ""
    same_site: str = "Lax"

    def name(self, base: str) -> str:
        """``__Host-`` for host-only Secure cookies, ``__Secure-`` with a domain."""
        if not self.secure:
            return base
        return f"__Secure-{base}" if self.domain else f"__Host-{base}"

    def set(self, name: str, value: str, *, max_age: int | None = None,
            same_site: str | None = None) -> str:
        parts = [f"{name}={value}", "Path=/"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if max_age is not None:
            parts.append(f"Max-Age={max(0, int(max_age))}")
        if self.secure:
            parts.append("Secure")
        parts.append("HttpOnly")
        parts.append(f"SameSite={same_site or self.same_site}")
        return "; ".join(parts)

    def delete(self, name: str) -> str:
        parts = [f"{name}=", "Path=/"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        parts += ["Max-Age=0", f"Expires={_EXPIRED}"]
        if self.secure:
            parts.append("Secure")
        parts += ["HttpOnly", f"SameSite={self.same_site}"]
        return "; ".join(parts)


def split_chunks(value: str, *, chunk: int = CHUNK) -> list[str]:
    """The cookie values for ``value``; raises :class:`ValueError` beyond ``MAX_CHUNKS``."""
    if len(value) <= chunk:
        return [value]
    parts = [value[i:i + chunk] for i in range(0, len(value), chunk)]
    if len(parts) > MAX_CHUNKS:
        raise ValueError(f"value needs {len(parts)} cookies; at most {MAX_CHUNKS} are written")
    parts[0] = f"{len(parts)}.{parts[0]}"
    return parts


def chunk_name(name: str, index: int) -> str:
    return name if index == 0 else f"{name}.{index}"


def join_chunks(cookies: Mapping[str, str], name: str) -> str | None:
    """The value split over ``name``, ``name.1`` …, or ``None`` if anything is amiss."""
    first = cookies.get(name)
    if not first:
        return None
    count_text, dot, rest = first.partition(".")
    if not dot:
        return first
    if count_text not in _COUNTS:
        return None
    count = int(count_text)
    parts = [rest]
    for index in range(1, count):
        part = cookies.get(chunk_name(name, index))
        if not part:
            return None
        parts.append(part)
    if chunk_name(name, count) in cookies:
        return None
    return "".join(parts)


def chunk_names(name: str) -> tuple[str, ...]:
    """``name``, ``name.1`` … ``name.MAX_CHUNKS``."""
    return tuple(chunk_name(name, i) for i in range(MAX_CHUNKS + 1))


def chunk_names_present(cookies: Mapping[str, str], name: str,
                        names: tuple[str, ...] | None = None) -> list[str]:
    """Every cookie of ours named ``name`` or ``name.<n>`` the client sent (``names``: the
    precomputed :func:`chunk_names`)."""
    return [n for n in names or chunk_names(name) if n in cookies]
