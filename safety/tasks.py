"""Background work of the moderation queue: webhook notices and escalation (beat)."""

from __future__ import annotations

from celery import shared_task


@shared_task(
    name="safety.moderation_notice_deliver",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=6,
    soft_time_limit=30,
    time_limit=45,
)
def moderation_notice_deliver(self, notice_id: int) -> str:
    """Send one moderation notice's signed webhook. Idempotent (a notice marked sent is not sent
    again); transient failures retry with exponential backoff, then the notice is marked failed."""
    from billing.webhooks import webhook_deliver_retrying
    from safety.moderation_notify import notice_failed, notice_send

    return webhook_deliver_retrying(
        self, lambda: notice_send(notice_id=notice_id), lambda: notice_failed(notice_id=notice_id)
    )


@shared_task(name="safety.moderation_escalate", soft_time_limit=50, time_limit=60)
def moderation_escalate() -> int:
    """Escalate pending items past their deadline, once each (safe to overlap: each item is claimed
    with a conditional update)."""
    from safety.moderation_notify import items_escalate

    return items_escalate()
