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


class RoutineTaskFilter(logging.Filter):
    """Drops Celery's per-run INFO lines (beat's "Sending due task", the worker's "received" and
    "succeeded") for the tasks beat runs more often than every `max_interval` seconds, unless the
    log level is DEBUG. The request log drain alone runs every second: three lines a second, most of
    a day's log, burying what matters. Their failures are logged at ERROR and still pass."""

    _CELERY_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")

    def __init__(self, max_interval: float = 60.0):
        super().__init__()
        self.max_interval = max_interval
        self._routine: frozenset[str] | None = None

    def _routine_tasks(self) -> frozenset[str]:
        if self._routine is None:
            from celery import current_app

            schedule = current_app.conf.beat_schedule or {}
            self._routine = frozenset(
                entry["task"]
                for entry in schedule.values()
                if isinstance(entry.get("schedule"), int | float) and entry["schedule"] < self.max_interval
            )
        return self._routine

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or record.name not in self._CELERY_LOGGERS:
            return True
        if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
            return True
        args = record.args
        if isinstance(args, dict):
            task = args.get("name")
        elif isinstance(args, tuple) and len(args) == 2:
            task = args[1]  # beat: (entry name, task name)
        else:
            return True
        return task not in self._routine_tasks()
