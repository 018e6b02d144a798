"""The project's own errors. Services raise these; views, APIs and the proxy map them to responses."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A failure the caller can act on. `code` is stable and machine-readable; `message` is for people."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None, extra: Any = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.param = param
        self.extra = extra or {}


class ValidationFailed(ApplicationError):
    status = 400
    code = "invalid_request"


class NotFound(ApplicationError):
    status = 404
    code = "not_found"


class Forbidden(ApplicationError):
    status = 403
    code = "forbidden"


class Conflict(ApplicationError):
    status = 409
    code = "conflict"


class RateLimited(ApplicationError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TransientUpstreamError(ApplicationError):
    """Worth retrying elsewhere: connect errors, timeouts, 429 and 5xx from a provider."""

    status = 502
    code = "upstream_error"


class UpstreamRateLimited(TransientUpstreamError):
    """A provider's 429: worth another deployment; if it is the last word, the client gets a 429
    too, with the provider's `Retry-After` (in seconds) when it sent one, so it backs off as it
    would have against the provider."""

    status = 429
    code = "upstream_rate_limited"

    def __init__(self, *, deployment: str, message: str, retry_after: str | None):
        super().__init__(f"Upstream {deployment} is rate limited: {message}")
        try:
            seconds = float(retry_after) if retry_after else None
        except ValueError:
            seconds = None  # an HTTP date: rare from providers, and the default wait is short anyway
        self.retry_after = seconds if seconds is not None and 0 <= seconds <= 3600 else None


class DeploymentMisconfigured(TransientUpstreamError):
    """The provider refused Steward's credentials (401, 403): the deployment is at fault, not the
    request. Another deployment may serve it, and the failure counts towards this one's circuit
    (it fails every request alike). The client gets 502: its own key was accepted; passing the
    upstream's 401 on would blame it.

    A 404 is not one of these: it may be about the request (a chat model asked for a text
    completion), and a circuit opened by it would refuse the deployment's other traffic too."""

    status = 502
    code = "upstream_misconfigured"

    STATUSES = frozenset({401, 403})

    def __init__(self, *, status: int, deployment: str, message: str):
        super().__init__(f"Upstream {deployment} refused the deployment's credentials (HTTP {status}): {message}")


class PermanentUpstreamError(ApplicationError):
    """Retrying will not help: the provider rejected the request itself."""

    status = 502
    code = "upstream_rejected"
