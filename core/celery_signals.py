"""Carry the request id from the code that enqueues a task into the worker that runs it."""

from __future__ import annotations

from celery import signals

from core.logging import request_id_var

_HEADER = "steward_request_id"
_tokens: dict[str, object] = {}


@signals.before_task_publish.connect
def _attach_request_id(headers: dict | None = None, **_: object) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id:
        headers[_HEADER] = request_id


@signals.task_prerun.connect
def _restore_request_id(task_id: str | None = None, task=None, **_: object) -> None:
    request_id = getattr(task.request, _HEADER, None) if task is not None else None
    if request_id is None and task is not None:
        request_id = (getattr(task.request, "headers", None) or {}).get(_HEADER)
    if task_id:
        _tokens[task_id] = request_id_var.set(request_id)


@signals.task_postrun.connect
def _clear_request_id(task_id: str | None = None, **_: object) -> None:
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        request_id_var.reset(token)
