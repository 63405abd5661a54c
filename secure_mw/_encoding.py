"""Strict decoders shared by every core: base64url and JSON.

Both refuse every second spelling of the same value, so a changed character is always a
changed value: base64url only in its URL-safe alphabet, unpadded, with the unused bits of
the last character zero; JSON only as objects without duplicate members, NaN or Infinity.
Both raise :class:`ValueError` subclasses with safe messages; callers turn them into their
own errors (DecryptError, InvalidToken, StoreUnavailable).
"""

from __future__ import annotations

import binascii
import json
import math
import sys
from typing import Any, Final

from secure_mw.errors import SecureMWError

__all__ = ["StrictJSONError", "b64url_decode", "b64url_encode", "loads_strict"]

_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE: Final = {c: i for i, c in enumerate(_ALPHABET)}
_STD_ALPHABET: Final = _ALPHABET[:62] + b"+/"
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
# '-' and '_' become the standard alphabet's '+' and '/'; '+', '/' and '=' (valid for the
# standard decoder, not in our form) become '!', which the strict decoder refuses.
_FROM_URLSAFE: Final = bytes.maketrans(b"-_+/=", b"+/!!!")


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5, RFC 7515 section 2)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode(
        "ascii"
    )


def b64url_decode(text: str | bytes) -> bytes:
    """Strict unpadded base64url; raises :class:`ValueError` for anything else."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("not base64url") from None
    elif isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text)
    else:
        raise ValueError("not base64url")
    rem = len(raw) % 4
    if rem == 1:
        raise ValueError("not base64url")
    if rem and _VALUE.get(raw[-1], 0) & (0x0F if rem == 2 else 0x03):
        raise ValueError("non-canonical base64url")
    try:
        return _strict_a2b(raw.translate(_FROM_URLSAFE) + b"=" * (-rem % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


if sys.version_info >= (3, 11):

    def _strict_a2b(data: bytes) -> bytes:
        return binascii.a2b_base64(data, strict_mode=True)

else:  # pragma: no cover - Python 3.10

    def _strict_a2b(data: bytes) -> bytes:
        if data.rstrip(b"=").translate(None, _STD_ALPHABET):
            raise binascii.Error("not base64")
        return binascii.a2b_base64(data)


class StrictJSONError(SecureMWError, ValueError):
    """JSON refused by :func:`loads_strict`; the message is safe to show."""


def _object_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise StrictJSONError("duplicate member")
    return obj


def _refuse_constant(_name: str) -> Any:
    raise StrictJSONError("NaN or Infinity")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError("number out of range")
    return value


_STRICT_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_object_no_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)


#: Deepest nesting accepted, the same on every Python (3.13's parser no longer stops early).
MAX_DEPTH: Final = 64


def _check_depth(value: Any, budget: int) -> None:
    if isinstance(value, dict | list):
        if budget <= 0:
            raise StrictJSONError("nested too deeply")
        for item in value.values() if isinstance(value, dict) else value:
            _check_depth(item, budget - 1)


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON (UTF-8 when given bytes) refusing duplicate members, NaN/Infinity and
    numbers that overflow. Raises :class:`StrictJSONError` with a safe message."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        value = _STRICT_DECODER.decode(text)
        _check_depth(value, MAX_DEPTH)
        return value
    except StrictJSONError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, huge ints, deep nesting
        raise StrictJSONError("not valid JSON") from None
