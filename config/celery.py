"""The Celery app: queues, routing and the beat schedule, all in code."""

from __future__ import annotations

import enum
import os

from celery import Celery
from kombu import Queue as KombuQueue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class Queue(enum.StrEnum):
    DEFAULT = "default"
    PROXY_LOG = "proxy_log"
    EVALS = "evals"


app = Celery("steward")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value) for q in Queue]
app.conf.task_default_queue = Queue.DEFAULT.value
app.conf.worker_hijack_root_logger = False
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_transport_options = {"visibility_timeout": 3600}
app.conf.task_acks_late = False

# Periodic work. Each entry names a task that its app defines; beat only enqueues.
app.conf.beat_schedule = {
    "core-heartbeat": {"task": "core.heartbeat", "schedule": 30.0, "options": {"queue": Queue.DEFAULT.value}},
}


def beat_entry_add(name: str, *, task: str, schedule: float, queue: Queue = Queue.DEFAULT) -> None:
    """Apps register their periodic tasks here (from their AppConfig.ready) instead of editing this file."""
    app.conf.beat_schedule[name] = {"task": task, "schedule": schedule, "options": {"queue": queue.value}}


app.autodiscover_tasks()
