"""The short-lived encrypted cookie that carries a login attempt to its callback.

It holds, for each login started in this browser and not yet finished, the ``state``, the
``nonce``, the PKCE verifier and where to go afterwards. Several tabs may log in at once, so
it keeps up to :data:`MAX_PENDING` attempts (the oldest is dropped first) and forgets any
older than :data:`LIFETIME`: it cannot grow without bound. Nothing of it is stored server-side.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.crypto import KeyRing
from secure_mw.errors import DecryptError
from secure_mw.http import RequestView
from secure_mw.session.cookies import CHUNK, CookieJarSpec

__all__ = ["LIFETIME", "MAX_PENDING", "PendingLogin", "PreLoginCookie"]

MAX_PENDING = 4
LIFETIME = 600.0


@dataclass(frozen=True, slots=True)
class PendingLogin:
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)
    return_to: str
    created: float
    remember: bool = False

    @classmethod
    def start(cls, *, verifier: str, return_to: str, now: float,
              remember: bool = False) -> PendingLogin:
        return cls(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                   verifier=verifier, return_to=return_to, created=now, remember=remember)


class PreLoginCookie:
    def __init__(self, keyring: KeyRing, jar: CookieJarSpec, base_name: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.keyring = keyring
        self.jar = jar
        self.name = jar.name(f"{base_name}_login")
        self._aad = f"secure_mw/prelogin:{self.name}".encode()
        self._clock = clock

    def read(self, view: RequestView) -> list[PendingLogin]:
        """The unexpired attempts in the request's cookie ([] when absent or invalid)."""
        raw = view.cookies.get(self.name)
        if not raw:
            return []
        try:
            items = loads_strict(self.keyring.decrypt(raw, self._aad))
        except (DecryptError, StrictJSONError):
            return []
        now = self._clock()
        out: list[PendingLogin] = []
        if not isinstance(items, list):
            return []
        for item in items[-MAX_PENDING:]:
            if not (isinstance(item, list) and len(item) == 6
                    and all(isinstance(v, str) for v in item[:4])
                    and isinstance(item[4], int | float) and isinstance(item[5], bool)):
                return []
            pending = PendingLogin(*item)
            if 0 <= now - pending.created < LIFETIME:
                out.append(pending)
        return out

    def write(self, pending: list[PendingLogin]) -> str:
        """The Set-Cookie value holding ``pending`` (the newest :data:`MAX_PENDING`)."""
        if not pending:
            return self.jar.delete(self.name)
        kept = pending[-MAX_PENDING:]
        while True:
            data = json.dumps([[p.state, p.nonce, p.verifier, p.return_to, p.created,
                                p.remember] for p in kept], separators=(",", ":")).encode()
            value = self.keyring.encrypt(data, self._aad)
            # Browsers drop a cookie above ~4 KB: give up the oldest attempts instead.
            if len(value) <= CHUNK or len(kept) == 1:
                break
            kept = kept[1:]
        # Lax, so the top-level redirect back from the provider carries it.
        return self.jar.set(self.name, value, max_age=int(LIFETIME), same_site="Lax")

    def add(self, view: RequestView, pending: PendingLogin) -> str:
        return self.write([*self.read(view), pending])

    def take(self, view: RequestView, state: str) -> tuple[PendingLogin | None, str | None]:
        """The attempt for ``state`` and the Set-Cookie value without it (``None`` when the
        request had no attempt to remove)."""
        attempts = self.read(view)
        found = None
        for pending in attempts:
            if hmac.compare_digest(pending.state.encode(), state.encode()):
                found = pending
        if found is None:
            return None, None
        return found, self.write([p for p in attempts if p is not found])
