"""Bearer-token check for admin endpoints: secure by default, constant-time compare."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from pydantic import SecretStr


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
