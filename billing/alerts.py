"""Soft thresholds: budget alerts (an audit event and a signed webhook after commit)."""

from __future__ import annotations

import logging
import time
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
from core.actors import Actor
from core.crypto import secret_decrypt

logger = logging.getLogger(__name__)


# A receiver gets this long to answer (a worker waits meanwhile); a slow one is retried with
# backoff by the task (billing.tasks.budget_alert_webhook_deliver), not waited for longer.
WEBHOOK_TIMEOUT_SECONDS = 5


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
        billing = m.BillingSettings.objects.filter(organisation_id=organisation_id).first()
        if billing and billing.webhook_url:
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="pending")
            from billing.tasks import budget_alert_webhook_deliver

            transaction.on_commit(lambda: budget_alert_webhook_deliver.delay(alert.pk))
    return True


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>", hex. Receivers reject old timestamps (replay)."""
    import hashlib
    import hmac

    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class WebhookTransientError(Exception):
    pass


def budget_alert_webhook_send(*, alert_id: int) -> str:
    """POST the alert to the organisation's webhook, signed. Idempotent: an alert already sent is
    not sent again (the receiver can also de-duplicate on the body's `id`). The attempt is counted
    and committed before the HTTP call, which runs outside any transaction. Raises
    WebhookTransientError for connection errors and 5xx/429 answers (the task retries those)."""
    import json

    import requests

    from core import egress

    with transaction.atomic():
        alert = m.BudgetAlert.objects.select_for_update().select_related("budget").filter(pk=alert_id).first()
        if alert is None or alert.webhook_status == "sent":
            return "skipped"
        billing = m.BillingSettings.objects.filter(organisation_id=alert.budget.organisation_id).first()
        if not billing or not billing.webhook_url:
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="none")
            return "skipped"
        secret = secret_decrypt(billing.webhook_secret_encrypted)
        if not secret:
            # Retrying cannot help: the key that encrypted the secret is gone until an admin sets it again.
            logger.error(
                "budget alert %s: the webhook secret cannot be decrypted (encryption key changed); set it again",
                alert.pk,
            )
            m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="failed")
            return "failed"
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
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Steward-Timestamp": str(timestamp),
        "X-Steward-Signature": "sha256=" + webhook_signature(secret=secret, timestamp=timestamp, body=body),
        "User-Agent": "Steward-Webhook/1",
    }
    # Through the egress policy (the URL is an admin's; the check is on the address connected to).
    # A refused address is not retried: it stays refused until the URL or the policy changes.
    try:
        with egress.requests_session() as session:
            response = session.post(
                billing.webhook_url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS, allow_redirects=False
            )
    except egress.EgressDenied as exc:
        logger.warning("budget alert %s: webhook not sent: %s", alert.pk, exc)
        m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="failed")
        return "failed"
    except requests.RequestException as exc:
        raise WebhookTransientError(str(exc)) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise WebhookTransientError(f"webhook answered {response.status_code}")
    outcome = "sent" if response.status_code < 300 else "failed"
    m.BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status=outcome)
    return outcome


def budget_alert_webhook_failed(*, alert_id: int) -> None:
    m.BudgetAlert.objects.filter(pk=alert_id).exclude(webhook_status="sent").update(webhook_status="failed")
