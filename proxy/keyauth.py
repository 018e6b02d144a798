"""The proxy's API-key check, shared by the request pipeline and `GET /v1/moderation/{id}`: one
reading of `Authorization: Bearer <key>` and one wording of the 401s."""

from __future__ import annotations

from accounts.selectors import aapi_key_authenticate
from proxy.errors import ProxyError


def bearer_token(value: bytes) -> str | None:
    """The key in one Authorization header's value, or None when the scheme is not Bearer."""
    scheme, _, token = value.partition(b" ")
    if scheme.lower() == b"bearer":
        return token.strip().decode("latin-1")
    return None


async def aprincipal_for(raw: str | None):
    """The live API key `raw` names; a 401 ProxyError when it is missing, unknown, revoked or expired."""
    if raw is None:
        raise ProxyError(401, "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key")
    principal = await aapi_key_authenticate(raw)
    if principal is None:
        raise ProxyError(401, "Incorrect, revoked or expired API key.", code="invalid_api_key")
    return principal
