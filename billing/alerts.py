"""Soft thresholds: budget alerts (an audit event and a signed webhook after commit)."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from audit.actions import Action
from audit.services import audit_event_record
from billing import models as m
from billing.budgets import BillingConfig, BudgetRule
from billing.contract import BudgetScope
from billing.enforcement import budget_spent_from_ledger
from billing.money import ZERO, money, period_bounds
from billing.webhooks import (  # noqa: F401 (WebhookTransientError, webhook_signature: re-exported)
    WebhookTransientError,
    organisation_webhook_configured,
    organisation_webhook_post,
    webhook_signature,
)
from core.actors import Actor

logger = logging.getLogger(__name__)


def _thresholds_check(*, config: BillingConfig, lines: list[m.UsageLine]) -> None:
    now = timezone.now()
    for rule in config.rules:
        if rule.soft_threshold_percent is None:
            continue
        scopes = [BudgetScope(config.organisation_id, ln.api_key_id, ln.team_id, ln.prompt_id) for ln in lines]
        if not any(rule.applies(s) for s in scopes):
            continue
        start, end = period_bounds(rule.period, at=now, time_zone=config.time_zone)
        if m.BudgetAlert.objects.filter(budget_id=rule.id, period_start=start).exists():
            continue  # already alerted this period: skip the SUM over the period's ledger
        threshold = money(rule.amount * rule.soft_threshold_percent / 100)
        spent = budget_spent_from_ledger(rule=rule, organisation_id=config.organisation_id, start=start, end=end)
        if spent < threshold or spent == ZERO:
            continue
        budget_alert_raise(rule=rule, organisation_id=config.organisation_id, period_start=start, spent=spent)


def budget_alert_raise(*, rule: BudgetRule, organisation_id: int, period_start: datetime, spent: Decimal) -> bool:
    """Record that a budget crossed its soft threshold in this period, once: audit event and, if
    the organisation configured a webhook, a signed delivery after commit. Returns False if the
    alert already existed."""
    with transaction.atomic():
        alert, created = m.BudgetAlert.objects.get_or_create(
            budget_id=rule.id, period_start=period_start, defaults={"spent": spent}
        )
        if not created:
            return False
        audit_event_record(
            organisation_id=organisation_id,
            actor=Actor.system("billing"),
            action=Action.BUDGET_THRESHOLD_CROSSED,
            target_type="budget",
            target_id=rule.id,
            after={
                "budget": rule.name,
                "spent": str(spent),
                "amount": str(rule.amount),
                "threshold_percent": rule.soft_threshold_percent,
                "period_start": period_start.isoformat(),
            },
        )
        if organisation_webhook_configured(organisation_id=organisation_id):
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="pending")
            from billing.tasks import budget_alert_webhook_deliver

            transaction.on_commit(lambda: budget_alert_webhook_deliver.delay(alert.pk))
    return True


def budget_alert_webhook_send(*, alert_id: int) -> str:
    """POST the alert to the organisation's webhook, signed (billing.webhooks). Idempotent: an alert
    already sent is not sent again (the receiver can also de-duplicate on the body's `id`). The
    attempt is counted and committed before the HTTP call, which runs outside any transaction.
    Raises WebhookTransientError for connection errors and 5xx/429 answers (the task retries those)."""
    import json

    with transaction.atomic():
        alert = m.BudgetAlert.objects.select_for_update().select_related("budget").filter(pk=alert_id).first()
        if alert is None or alert.webhook_status == "sent":
            return "skipped"
        if not organisation_webhook_configured(organisation_id=alert.budget.organisation_id):
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="none")
            return "skipped"
        m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_attempts=alert.webhook_attempts + 1)
    budget = alert.budget
    body = json.dumps(
        {
            "id": f"budget-alert-{alert.pk}",
            "type": "budget.threshold_crossed",
            "organisation_id": budget.organisation_id,
            "budget": {"id": budget.pk, "name": budget.name, "amount": str(budget.amount), "period": budget.period},
            "threshold_percent": budget.soft_threshold_percent,
            "spent": str(alert.spent),
            "period_start": alert.period_start.isoformat(),
            "created_at": alert.created_at.isoformat(),
        },
        separators=(",", ":"),
    ).encode()
    outcome = organisation_webhook_post(
        organisation_id=budget.organisation_id, body=body, what=f"budget alert {alert.pk}"
    )
    if outcome == "none":
        outcome = "failed"  # the webhook was removed between the check and the post
    m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status=outcome)
    return outcome


def budget_alert_webhook_failed(*, alert_id: int) -> None:
    m.BudgetAlert.objects.filter(pk=alert_id).exclude(webhook_status="sent").update(webhook_status="failed")
