"""The password policy of the built-in login's users file.

:class:`PasswordPolicy` decides whether a new password may be stored: a minimum length (in
code points, invisible format characters left out, a character that NFKC expands counted
once), the hasher's maximum, no user name or e-mail name inside it, not one character or one
short sequence repeated, not a plain run (``abcd…``, ``9876…``) or a keyboard row, and — when
the operator supplies a list (``local_users.password_blocklist_file``) — not a listed
password, also with numbers, punctuation, symbols or spaces of any script added around it.
Every refusal says what to change and never shows the password; docs/login.md says what is
and is not caught.
"""

from __future__ import annotations

import itertools
import os
import threading
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from secure_mw.crypto.passwords import MAX_PASSWORD_BYTES
from secure_mw.errors import ConfigError, ConfigProblem, SecureMWError

if TYPE_CHECKING:
    from secure_mw.settings import LocalUsersSettings

__all__ = ["DEFAULT_MIN_LENGTH", "PasswordPolicy", "PasswordPolicyError"]

#: The default minimum length (``local_users.password_min_length``).
DEFAULT_MIN_LENGTH: Final = 12
#: A name or e-mail name shorter than this is not looked for inside the password.
MIN_CONTEXT_WORD: Final = 3
#: Passwords need at least this many different characters (or ``min_length``, if lower).
MIN_DISTINCT: Final = 5

# Rows of the common Latin keyboard layouts (QWERTY, QWERTZ, AZERTY), in order, each
# layout's rows joined: a password that is a stretch of one of them, either way, is a walk
# along the keyboard.
_KEYBOARD_ROWS: Final = (
    "1234567890qwertyuiopasdfghjklzxcvbnm",
    "1234567890qwertzuiopasdfghjklyxcvbnm",
    "1234567890azertyuiopqsdfghjklmwxcvbn",
)
_CONTROL: Final = frozenset({"Cc", "Cs"})
#: The categories a decoration added around a listed password is made of: numbers,
#: punctuation, symbols and separators (spaces), of any script.
_DECORATION: Final = ("N", "P", "S", "Z")


class PasswordPolicyError(SecureMWError, ValueError):
    """The policy refuses a password; the message says what to change (never the password)."""


def _visible(text: str) -> str:
    """``text`` without its format characters (Cf: zero-width spaces and joiners, the soft
    hyphen, bidirectional marks), which show nothing."""
    if text.isascii():
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def _fold(text: str) -> str:
    """How passwords, names and list entries are compared: format characters left out,
    NFKC, then case folded."""
    return _visible(unicodedata.normalize("NFKC", _visible(text))).casefold()


def _length(password: str) -> int:
    """The length a person typed: code points without format characters, composed (NFC),
    and never more than as written (NFKC would count U+FDFA as 18)."""
    visible = _visible(password)
    return min(len(visible), len(unicodedata.normalize("NFC", visible)))


def _strip_decoration(text: str) -> str:
    """``text`` without the numbers, punctuation, symbols and spaces around it."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start])[0] in _DECORATION:
        start += 1
    while end > start and unicodedata.category(text[end - 1])[0] in _DECORATION:
        end -= 1
    return text[start:end]


def _is_run(text: str) -> bool:
    """One step between every pair of neighbours, the same each time (``abcd``, ``7531``),
    digits wrapping around (``7890123``)."""
    if len(text) < 3:
        return False
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(text)}
    if len(steps) == 1:
        return True
    if text.isdigit() and text.isascii():
        wrapped = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(text)}
        return wrapped in ({1}, {9})
    return False


def _is_keyboard_walk(text: str) -> bool:
    return len(text) >= 4 and any(text in row or text in row[::-1] for row in _KEYBOARD_ROWS)


class PasswordPolicy:
    """What a new password must satisfy. ``blocklist_file`` (one password per line, UTF-8;
    lines that are not UTF-8 are skipped) is read once, the first time a password is
    checked; a file that cannot be read raises :class:`~secure_mw.errors.ConfigError`."""

    def __init__(self, *, min_length: int = DEFAULT_MIN_LENGTH,
                 blocklist_file: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(min_length, int) or min_length < 1:
            raise ValueError("min_length is a positive number of characters")
        self.min_length = min_length
        self.blocklist_file = Path(blocklist_file) if blocklist_file is not None else None
        self._blocked: frozenset[str] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: LocalUsersSettings) -> PasswordPolicy:
        return cls(min_length=settings.password_min_length,
                   blocklist_file=settings.password_blocklist_file)

    def __repr__(self) -> str:
        listed = f", blocklist_file={str(self.blocklist_file)!r}" if self.blocklist_file else ""
        return f"PasswordPolicy(min_length={self.min_length}{listed})"

    # -- checking -----------------------------------------------------------------------

    def check(self, password: str, *, username: str = "", email: str = "") -> None:
        """Raise :class:`PasswordPolicyError` naming every problem of ``password``."""
        problems = self.problems(password, username=username, email=email)
        if problems:
            raise PasswordPolicyError("the password is refused: " + "; ".join(problems))

    def problems(self, password: str, *, username: str = "", email: str = "") -> list[str]:
        """What is wrong with ``password`` for the user ``username`` (empty when nothing)."""
        if not isinstance(password, str) or not password:
            return ["a password must not be empty"]
        if any(unicodedata.category(ch) in _CONTROL for ch in password):
            return ["a password must not contain control characters (a line break, a tab …)"]
        out: list[str] = []
        length = _length(password)
        if length < self.min_length:
            out.append(f"use at least {self.min_length} characters; this one has {length}")
        size = len(password.encode("utf-8"))
        if size > MAX_PASSWORD_BYTES:
            out.append(f"use at most {MAX_PASSWORD_BYTES} bytes (UTF-8); this one has {size}")
            return out   # nothing more worth computing on an oversized input
        folded = _fold(password)
        for what, word in (("the user name", _fold(username).strip()),
                           ("the name part of the e-mail address",
                            _fold(email.rpartition("@")[0]).strip() if "@" in email else "")):
            if len(word) >= MIN_CONTEXT_WORD and word in folded:
                out.append(f"it must not contain {what}")
        distinct = len(set(folded))
        needed = min(MIN_DISTINCT, self.min_length)
        period = (folded + folded).find(folded, 1)
        if distinct < needed:
            out.append(f"use at least {needed} different characters; this one has {distinct}")
        elif period < len(folded) and period < self.min_length:
            out.append(f"it is one {period}-character sequence repeated "
                       f"{len(folded) // period} times")
        elif _is_run(folded):
            out.append("it is a plain run of consecutive characters (like abcd… or 9876…)")
        elif _is_keyboard_walk(folded):
            out.append("it is a row of the keyboard (like qwerty…)")
        blocked = self._blocklist()
        if blocked:
            core = _strip_decoration(folded)
            if folded.strip() in blocked:
                out.append("it is on the list of common passwords "
                           "(local_users.password_blocklist_file)")
            elif core and core in blocked:
                out.append("it is a password on the list of common passwords "
                           "(local_users.password_blocklist_file) with digits or symbols "
                           "added")
        return out

    # -- the list -----------------------------------------------------------------------

    def _blocklist(self) -> frozenset[str]:
        if self.blocklist_file is None:
            return frozenset()
        blocked = self._blocked
        if blocked is None:
            with self._lock:
                if self._blocked is None:
                    self._blocked = frozenset(_read_list(self.blocklist_file))
                blocked = self._blocked
        return blocked


def _read_list(path: Path) -> Iterable[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigProblem(
            "local_users.password_blocklist_file",
            f"cannot read {str(path)!r}: {exc.strerror or exc}")]) from None
    for line in data.splitlines():
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            continue
        entry = _fold(text).strip()
        if entry:
            yield entry
