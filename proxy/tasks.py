from __future__ import annotations

from celery import shared_task


@shared_task(name="proxy.request_log_drain", soft_time_limit=45, time_limit=55)
def request_log_drain() -> dict:
    """Move request records from the Redis stream into PostgreSQL (and billing's ledger).

    Idempotent: entries are acknowledged after their transaction commits; replays skip ids already
    written. If PostgreSQL is down the task fails and the entries wait for the next run.
    """
    from proxy.requestlog import circuit_events_audit
    from proxy.requestlog import request_log_drain as drain

    stats = drain()
    stats["circuit_events"] = circuit_events_audit()
    return stats


@shared_task(name="proxy.deployments_health_check", soft_time_limit=60, time_limit=75)
def deployments_health_check() -> dict:
    """Probe every enabled deployment and update the shared circuits (see proxy.health). Idempotent."""
    from proxy.health import deployments_check_all

    return {str(k): v for k, v in deployments_check_all().items()}


@shared_task(name="proxy.request_bodies_purge", soft_time_limit=600, time_limit=660)
def request_bodies_purge() -> int:
    """Delete stored request/response bodies past their organisation's retention. Idempotent."""
    from proxy.services import request_bodies_purge as purge

    return purge()
