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
