"""Moderation's background work on a real Celery worker: a decision's webhook is delivered after
commit, and the escalation task (as beat enqueues it) escalates and notifies."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from billing.services import billing_settings_update
from config.celery import beat_schedule
from safety.models import ModerationItem, ModerationNotice
from safety.moderation import item_claim, item_decide
from safety.tasks import moderation_escalate
from tests.helpers import ACTOR, SECRET, wait_until, webhook_verify
from tests.safety.moderation_support import held

pytestmark = pytest.mark.django_db(transaction=True)


def test_decision_and_escalation_webhooks_go_out_from_a_real_worker(
    organisation, reviewer, receiver, celery_worker_process
):
    assert beat_schedule()["safety-moderation-escalate"]["task"] == moderation_escalate.name
    billing_settings_update(organisation=organisation, actor=ACTOR, webhook_url=receiver.url, webhook_secret=SECRET)
    log = lambda: Path(celery_worker_process.log_path).read_text()[-3000:]  # noqa: E731

    decided = held(organisation)
    item_claim(organisation=organisation, reviewer=reviewer.user)
    item_decide(organisation=organisation, public_id=decided.public_id, reviewer=reviewer.user, action="approve")
    wait_until(lambda: receiver.requests, timeout=30, context=log)
    payload = webhook_verify(receiver.requests[0], SECRET)
    assert payload["type"] == "moderation.decided" and payload["item"]["id"] == decided.public_id
    wait_until(lambda: ModerationNotice.objects.filter(webhook_status="sent").count() == 1, timeout=10)

    late = held(organisation, sla_seconds=1, priority=3)
    ModerationItem.objects.filter(pk=late.pk).update(deadline=timezone.now() - timedelta(seconds=5))
    moderation_escalate.delay()
    wait_until(lambda: len(receiver.requests) == 2, timeout=30, context=log)
    payload = webhook_verify(receiver.requests[1], SECRET)
    assert payload["type"] == "moderation.escalated" and payload["item"]["priority"] == 2
    late.refresh_from_db()
    assert late.escalated_at is not None
