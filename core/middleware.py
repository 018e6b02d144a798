from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from core.logging import REQUEST_ID_HEADER, request_id_from_header, request_id_var


class RequestIdMiddleware:
    """Gives every request an id (or keeps a well-formed inbound one) for logs, audit and tasks."""

    async_capable = True
    sync_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def _start(self, request):
        request.request_id = request_id_from_header(request.headers.get(REQUEST_ID_HEADER))
        return request_id_var.set(request.request_id)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        token = self._start(request)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    async def __acall__(self, request):
        token = self._start(request)
        try:
            response = await self.get_response(request)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response


class ApiErrorMiddleware:
    """Under /api/, an error page that is not JSON becomes the management API's error envelope.

    DRF's exception handler (core.api) writes the envelope for the errors it knows; an unexpected
    exception (a bug, a database error) still reaches Django, which logs it, signals it and renders
    its 500 page: HTML, and with DEBUG on the debug page with settings and source code. Scripts and
    generated clients parse JSON, so the body is replaced here, after Django has done the rest; the
    same for plain Django views under /api/ and unknown URLs. Sits inside RequestIdMiddleware, so
    the request id is known."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith("/api/")
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return _error_envelope(request, response)
        return response


_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 403: "forbidden", 400: "invalid_request"}


def _error_envelope(request, response):
    from django.http import JsonResponse

    status = response.status_code
    if status >= 500:
        code, message = "internal_error", "Something went wrong on our side; quote the request_id if you report it."
    else:
        code, message = _ERROR_CODES.get(status, "error"), response.reason_phrase
    body = {"error": {"code": code, "message": message, "status": status}}
    request_id = getattr(request, "request_id", None)
    if request_id:
        body["error"]["request_id"] = request_id
    replacement = JsonResponse(body, status=status)
    for header in ("Allow", "Retry-After", "WWW-Authenticate"):
        if header in response:
            replacement[header] = response[header]
    return replacement
