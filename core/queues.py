"""The Celery queues, in the kernel so that every app's tasks can name one without importing config/."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    DEFAULT = "default"
    PROXY_LOG = "proxy_log"
    EVALS = "evals"
