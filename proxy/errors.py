"""The OpenAI error envelope and the proxy's own exception.

Every answer that is not a success is `{"error": {"message", "type", "param", "code"}}` with the
status the OpenAI API would use. `ProxyError` carries everything needed to render it and to log
the request; `proxy_error_from(exc)` maps the project's ApplicationError family onto it.
"""

from __future__ import annotations

import math

import orjson

from core.errors import ApplicationError, RateLimited, TransientUpstreamError

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ProxyError(Exception):
    """A failure answered to the client. `outcome` is the request-log status (rejected or error)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
        outcome: str | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "api_error")
        self.retry_after = retry_after
        # Client-side and admission failures are "rejected"; upstream and internal ones are "error".
        self.outcome = outcome or ("rejected" if status < 500 else "error")
        self.extra = extra or {}

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.extra:
            error.update({k: v for k, v in self.extra.items() if k not in error})
        return orjson.dumps({"error": error})

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after is None:
            return []
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after))).encode())]


def proxy_error_from(exc: ApplicationError) -> ProxyError:
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, RateLimited) or (exc.status == 429 and retry_after is None):
        retry_after = retry_after or 1
    extra = exc.extra if isinstance(exc.extra, dict) else {}
    outcome = "error" if isinstance(exc, TransientUpstreamError) else None
    return ProxyError(
        exc.status, exc.message, code=exc.code, param=exc.param, retry_after=retry_after, outcome=outcome, extra=extra
    )


def internal_error(request_id: str) -> ProxyError:
    return ProxyError(
        500, f"Internal error in Steward (request {request_id}); it has been logged.", code="internal_error"
    )
