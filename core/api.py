"""Shared pieces of the management API: one error shape and one pagination style."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ApplicationError, RateLimited
from core.logging import request_id_var


def _body(*, code: str, message: str, status: int, details=None) -> dict:
    body = {"error": {"code": code, "message": message, "status": status}}
    if details:
        body["error"]["details"] = details
    request_id = request_id_var.get()
    if request_id:
        body["error"]["request_id"] = request_id
    return body


def exception_handler(exc, context):
    """Every management API error is `{"error": {"code", "message", "status", "details"?, "request_id"}}`.

    Unexpected exceptions (None here) go on to Django, which logs them with their traceback and renders
    a 500; core.middleware.ApiErrorMiddleware then writes this envelope in its place."""
    if isinstance(exc, ApplicationError):
        details = dict(exc.extra) if exc.extra else None
        if exc.param:
            details = {**(details or {}), "param": exc.param}
        response = Response(_body(code=exc.code, message=exc.message, status=exc.status, details=details), exc.status)
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return response
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(exc, drf_exceptions.ValidationError):
        message = "Invalid input."
        details = data
        code = "invalid_request"
    else:
        detail = data.get("detail", "") if isinstance(data, dict) else data
        message = str(detail)
        details = None
        code = getattr(detail, "code", None) or exc.default_code
    response.data = _body(code=str(code), message=message, status=response.status_code, details=details)
    return response


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500
    page_query_description = "Page number, from 1 (a page past the end is a 404)."
    page_size_query_description = "Items per page: default 50, at most 500 (a larger number counts as 500)."
