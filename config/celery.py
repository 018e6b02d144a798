"""The Celery app: queues, routing and the beat schedule, all in code."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue as KombuQueue

from core.queues import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


app = Celery("steward")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value) for q in Queue]
app.conf.task_default_queue = Queue.DEFAULT.value
# Routing by task name here, not a `queue=` attribute on each task (deprecated, gone in Celery 6).
# Every task not named goes to the default queue.
app.conf.task_routes = {
    "proxy.request_log_drain": {"queue": Queue.PROXY_LOG.value},
    "evals.run_execute": {"queue": Queue.EVALS.value},
}
app.conf.worker_hijack_root_logger = False
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_transport_options = {"visibility_timeout": 3600}
app.conf.task_acks_late = False


def beat_schedule() -> dict[str, dict]:
    """Every periodic task, in this one place; each names a task its app defines, beat only enqueues.

    A function of settings, since two intervals are configurable and this module is imported
    before Django's settings are."""
    from django.conf import settings

    def entry(task: str, seconds: float, queue: Queue = Queue.DEFAULT) -> dict:
        return {"task": task, "schedule": seconds, "options": {"queue": queue.value}}

    return {
        # Proves beat and a worker are alive (the key it writes lives 120 s: four beats).
        "core-heartbeat": entry("core.heartbeat", 30.0),
        # Re-queues verifications left RUNNING by a worker that died.
        "audit-verifications-recover": entry("audit.verifications_recover", 300.0),
        # Releases budget reservations whose request never settled (crashed worker, lost client).
        "billing-reservations-sweep": entry("billing.reservations_sweep", 30.0),
        "billing-rollups-update": entry("billing.rollups_update", 30.0),
        "proxy-request-log-drain": entry(
            "proxy.request_log_drain", settings.STEWARD_PROXY_LOG_DRAIN_SECONDS, Queue.PROXY_LOG
        ),
        "proxy-deployments-health-check": entry(
            "proxy.deployments_health_check", settings.STEWARD_PROXY_HEALTH_CHECK_SECONDS
        ),
        "proxy-request-bodies-purge": entry("proxy.request_bodies_purge", 3600.0),
        # Re-queues evaluation cells whose worker died, and re-kicks runs nobody is executing.
        "evals-sweep-stuck-cells": entry("evals.sweep_stuck_cells", settings.STEWARD_EVALS_SWEEP_SECONDS),
        # Starts due scheduled evaluation runs (drift watch), compares finished ones, settles promotion gates.
        "evals-drift-tick": entry("evals.drift_tick", 60.0),
        # Ends online experiments whose variant crossed an error-rate, latency or cost limit.
        "evals-experiments-guard": entry("evals.experiments_guard", 30.0),
        # Raises the priority of held items past their review deadline and notifies the admins, once each.
        "safety-moderation-escalate": entry("safety.moderation_escalate", 60.0),
    }


@app.on_after_configure.connect
def _beat_schedule_set(sender, **kwargs) -> None:
    sender.conf.beat_schedule = beat_schedule()


app.autodiscover_tasks()
# Modules of tasks not named tasks.py (one per concern).
app.autodiscover_tasks(lambda: ["evals"], related_name="experiment_tasks")
