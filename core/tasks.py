from __future__ import annotations

from celery import shared_task


@shared_task(name="core.heartbeat", soft_time_limit=10, time_limit=15)
def heartbeat() -> None:
    """Proves beat and a worker are alive: the time lands in Redis for operators to read."""
    from django.utils import timezone

    from core.redis import redis_client

    redis_client().set("steward:heartbeat", timezone.now().isoformat(), ex=120)
