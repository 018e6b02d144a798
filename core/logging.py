"""JSON logs carrying the request id of the web request (or of the request that started a task)."""

from __future__ import annotations

import contextvars
import logging
import uuid

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("steward_request_id", default=None)

REQUEST_ID_HEADER = "x-request-id"
_MAX_INBOUND_ID = 128


def request_id_new() -> str:
    return uuid.uuid4().hex


def request_id_from_header(value: str | None) -> str:
    """Accept a caller's id only when it is short and printable, so it cannot forge log lines."""
    if (
        value
        and len(value) <= _MAX_INBOUND_ID
        and value.isascii()
        and value.replace("-", "").replace("_", "").isalnum()
    ):
        return value
    return request_id_new()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id is None:
            # django.request logs 4xx/5xx after the middleware has left the request's context.
            request_id = getattr(getattr(record, "request", None), "request_id", None)
        record.request_id = request_id
        return True


class JsonFormatter(_BaseJsonFormatter):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(message)s")
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        super().__init__(*args, **kwargs)
