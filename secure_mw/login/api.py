"""The JSON face of the built-in login, for single-page apps.

``GET {prefix}api/login`` hands out an attempt's ``state`` (and the encrypted attempts
cookie it is bound to); ``POST {prefix}api/login`` takes ``{"username", "password",
"state", "remember_me"}``; ``GET``/``POST {prefix}api/2fa`` enrol and check a code with the
session's CSRF token in ``X-CSRF-Token``. The decisions are the form's own
(:class:`~secure_mw.login.core.LocalLoginCore` runs one flow for both): this module only reads
the request and words the answers. A body that is not ``application/json`` is refused before
anything is judged — a cross-site form or ``text/plain`` post cannot send that type without a
CORS preflight, which we never grant — and so is a request a browser marks ``cross-site``.
"""

from __future__ import annotations

from collections.abc import Iterable

from secure_mw._encoding import StrictJSONError, loads_strict
from secure_mw.errors import SecureMWError
from secure_mw.http import Reply, RequestView, json_reply
from secure_mw.oidc.prelogin import PendingLogin
from secure_mw.session.model import Session

__all__ = ["APIRefused", "api_error", "api_fields", "api_refusal", "signed_in"]

FAILED = "Incorrect user name or password."
EXPIRED = "The sign-in form had expired. Please try again."
USED = "This sign-in form was already used. Please try again."
BUSY = "Too many sign-in attempts are running. Please wait a moment."
#: The stable ``error`` of each answer a sign-in attempt can get.
CODES = {FAILED: "invalid_credentials", EXPIRED: "state_invalid", USED: "state_used",
         BUSY: "too_many_attempts"}


class APIRefused(SecureMWError):
    """A request to the JSON endpoints refused before it is judged: ``reply`` says why,
    ``reason`` is the audit line's, ``event`` its name."""

    def __init__(self, reply: Reply, reason: str, event: str = "bad_request") -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.event = event


def api_error(status: int, error: str, message: str, *,
              headers: Iterable[tuple[str, str]] = ()) -> Reply:
    return json_reply(status, {"error": error, "message": message}, headers=headers)


def api_fields(view: RequestView, *, strings: Iterable[str],
               flags: Iterable[str] = ()) -> dict[str, str]:
    """The JSON object of the request's body: ``strings`` must be strings, ``flags``
    booleans (read as ``"1"`` when true); nothing else may be in it. :class:`APIRefused`
    for a cross-site request, another content type, or a body that is not such an object."""
    if view.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        raise APIRefused(api_error(403, "cross_site", "Cross-site requests are refused."),
                         "cross-site request to the JSON login", "csrf_failure")
    media = view.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise APIRefused(api_error(415, "unsupported_media_type",
                                   "Send the body as application/json."),
                         f"JSON login with content type {media[:40] or 'none'!r}",
                         "csrf_failure")
    try:
        data = loads_strict(view.body)
    except StrictJSONError as exc:
        raise APIRefused(api_error(400, "bad_request", f"The body is not JSON: {exc}."),
                         f"JSON login body: {exc}") from None
    if not isinstance(data, dict):
        raise APIRefused(api_error(400, "bad_request", "The body is not a JSON object."),
                         "JSON login body is not an object")
    names, switches = set(strings), set(flags)
    fields: dict[str, str] = {}
    for key, value in data.items():
        if key in names and isinstance(value, str):
            fields[key] = value
        elif key in switches and isinstance(value, bool):
            fields[key] = "1" if value else ""
        else:
            kind = "a string" if key in names else "true or false" if key in switches \
                else None
            message = f"{key!r} must be {kind}." if kind else "The body has an unknown member."
            raise APIRefused(api_error(400, "bad_request", message),
                             "JSON login body: a member of the wrong type" if kind
                             else "JSON login body: an unknown member")
    return fields


def api_refusal(status: int, message: str, attempt: tuple[PendingLogin, str], *,
                retry_after: int | None = None) -> Reply:
    """A sign-in attempt refused: its ``error``, and the next attempt's ``state``."""
    pending, cookie = attempt
    headers = [("set-cookie", cookie)]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return json_reply(status, {"error": CODES.get(message, "bad_request"), "message": message,
                               "state": pending.state}, headers=headers)


def signed_in(session: Session, return_to: str) -> dict[str, object]:
    """What a successful step answers: who, how strongly, and the session's CSRF token."""
    return {"authenticated": True, **session.identity().as_dict(),
            "csrf_token": session.csrf, "return_to": return_to}
