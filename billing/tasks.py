from __future__ import annotations

from celery import shared_task


@shared_task(name="billing.reservations_sweep", soft_time_limit=60, time_limit=90)
def reservations_sweep() -> int:
    """Periodic: give back budget reservations of processes that died (their TTL passed). Idempotent."""
    from billing.services import reservations_sweep as sweep

    return sweep()


@shared_task(
    name="billing.rollups_update",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=240,
    time_limit=300,
)
def rollups_update() -> int:
    """Periodic: rebuild the daily rollups of days that received ledger lines. Idempotent (each day is
    claimed and rebuilt from the ledger in one transaction)."""
    from billing.services import rollups_update as update

    return update()


@shared_task(
    name="billing.budget_alert_webhook_deliver",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=6,
    soft_time_limit=30,
    time_limit=45,
)
def budget_alert_webhook_deliver(self, alert_id: int) -> str:
    """Send one budget alert's signed webhook. Idempotent (an alert marked sent is not sent again);
    transient failures (network, 5xx, 429) retry with exponential backoff, then the alert is marked failed."""
    from billing.services import budget_alert_webhook_failed, budget_alert_webhook_send
    from billing.webhooks import webhook_deliver_retrying

    return webhook_deliver_retrying(
        self,
        lambda: budget_alert_webhook_send(alert_id=alert_id),
        lambda: budget_alert_webhook_failed(alert_id=alert_id),
    )
