"""Bearer-token checks for the admin and feedback endpoints: secure by default, constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from pydantic import SecretStr
from starlette.responses import Response

from serving.errors import json_error
from training.settings import Settings


@dataclass(frozen=True)
class Denied:
    status: int
    message: str


DISABLED = "retrain is disabled on this server: set IRIS_ADMIN_TOKEN to enable it"


def check_bearer(
    authorization: str | None, expected: SecretStr | None, disabled: str = DISABLED
) -> Denied | None:
    """None if ``authorization`` carries the expected token, else why not.

    With no token configured the admin endpoints are disabled outright (403), so a
    deployment that forgot the variable is closed, not open. The comparison runs in
    constant time over bytes; the token itself is never echoed or logged.
    """
    if expected is None or not expected.get_secret_value():
        return Denied(403, disabled)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return Denied(401, "missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        return Denied(401, "invalid bearer token")
    return None


def admin_denied(settings: Settings, authorization: str | None) -> Response | None:
    """None if the admin token is presented, else the 401/403 response to send."""
    return denied_response(check_bearer(authorization, settings.admin_token))


def feedback_denied(settings: Settings, authorization: str | None) -> Response | None:
    """Like :func:`admin_denied`, with the feedback token (or else the admin token)."""
    token = settings.feedback_token or settings.admin_token
    disabled = (
        "feedback is disabled on this server: set IRIS_FEEDBACK_TOKEN"
        " (or IRIS_ADMIN_TOKEN) to enable it"
    )
    return denied_response(check_bearer(authorization, token, disabled=disabled))


def denied_response(denied: Denied | None) -> Response | None:
    """None if allowed, else the 401/403 response (with WWW-Authenticate on a 401)."""
    if denied is None:
        return None
    response = json_error(denied.status, denied.message)
    if denied.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response
