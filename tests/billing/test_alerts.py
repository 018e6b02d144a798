"""Soft thresholds: audit event, banner data and a signed webhook delivered by a Celery task."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from audit.models import AuditEvent
from billing.models import BudgetAlert
from billing.selectors import budget_alerts_current
from billing.services import (
    WebhookTransientError,
    billing_settings_update,
    budget_alert_webhook_send,
    usage_lines_record,
)
from billing.tasks import budget_alert_webhook_deliver
from tests.helpers import SECRET, cross_threshold, wait_until


def verify(request: dict, secret: str, *, max_age: int = 300) -> dict:
    """What a receiver does: check the timestamp is fresh and the HMAC matches, then trust the body."""
    timestamp = request["headers"]["X-Steward-Timestamp"]
    assert abs(time.time() - int(timestamp)) < max_age
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Steward-Signature"], "sha256=" + expected)
    return json.loads(request["body"])


def test_crossing_a_soft_threshold_audits_once_and_signs_a_webhook(
    organisation, record_factory, system_actor, receiver, django_capture_on_commit_callbacks
):
    billing_settings_update(
        organisation=organisation, actor=system_actor, webhook_url=receiver.url, webhook_secret=SECRET
    )
    with django_capture_on_commit_callbacks() as callbacks:
        budget = cross_threshold(organisation, record_factory, system_actor)
        usage_lines_record(records=[record_factory(model="dev-small")])  # still over: no second alert
    alert = BudgetAlert.objects.get()
    assert alert.budget == budget and alert.spent == Decimal("0.0000625") and alert.webhook_status == "pending"
    event = AuditEvent.objects.get(organisation_id=organisation.pk, action="budget.threshold_crossed")
    assert event.after["budget"] == "Team soft" and event.after["threshold_percent"] == 50
    deliveries = [c for c in callbacks if "budget_alert_raise" in c.__qualname__]
    assert len(deliveries) == 1  # one delivery enqueued after commit

    assert budget_alert_webhook_deliver.run(alert.pk) == "sent"
    [delivered] = receiver.requests
    payload = verify(delivered, SECRET)
    assert payload["type"] == "budget.threshold_crossed" and payload["budget"]["name"] == "Team soft"
    assert payload["spent"] == "0.000062500000" and payload["id"] == f"budget-alert-{alert.pk}"
    # A forged body fails verification.
    with pytest.raises(AssertionError):
        verify({**delivered, "body": delivered["body"].replace(b"Team soft", b"Team SOFT")}, SECRET)
    # Idempotent: a redelivered task does not send twice.
    assert budget_alert_webhook_send(alert_id=alert.pk) == "skipped"
    assert len(receiver.requests) == 1
    assert [s.budget.name for s in budget_alerts_current(organisation=organisation)] == ["Team soft"]


def test_webhook_server_errors_are_transient_and_retried(organisation, record_factory, system_actor, receiver):
    billing_settings_update(
        organisation=organisation, actor=system_actor, webhook_url=receiver.url, webhook_secret=SECRET
    )
    cross_threshold(organisation, record_factory, system_actor)
    alert = BudgetAlert.objects.get()
    receiver.statuses = [503]
    with pytest.raises(WebhookTransientError):
        budget_alert_webhook_send(alert_id=alert.pk)
    assert budget_alert_webhook_send(alert_id=alert.pk) == "sent"
    alert.refresh_from_db()
    assert alert.webhook_attempts == 2 and len(receiver.requests) == 2


def test_webhook_configuration_is_validated_and_audited_without_the_secret(organisation, system_actor):
    from core.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as err:
        billing_settings_update(
            organisation=organisation, actor=system_actor, webhook_url="ftp://x", webhook_secret=SECRET
        )
    assert err.value.param == "webhook_url"
    with pytest.raises(ValidationFailed):
        billing_settings_update(
            organisation=organisation, actor=system_actor, webhook_url="https://example.com/h", webhook_secret="short"
        )
    billing_settings_update(
        organisation=organisation, actor=system_actor, webhook_url="https://example.com/h", webhook_secret=SECRET
    )
    event = AuditEvent.objects.get(organisation_id=organisation.pk, action="webhook.configured")
    assert SECRET not in json.dumps(event.after) and event.after["secret_set"] is True


def test_without_a_webhook_the_alert_is_only_audited(organisation, record_factory, system_actor):
    cross_threshold(organisation, record_factory, system_actor)
    assert BudgetAlert.objects.get().webhook_status == "none"
    assert AuditEvent.objects.filter(action="budget.threshold_crossed").count() == 1


def test_webhook_is_delivered_by_a_real_worker(
    transactional_db, organisation, record_factory, system_actor, receiver, celery_worker_process
):
    billing_settings_update(
        organisation=organisation, actor=system_actor, webhook_url=receiver.url, webhook_secret=SECRET
    )
    cross_threshold(organisation, record_factory, system_actor)
    wait_until(
        lambda: receiver.requests, timeout=20, context=lambda: Path(celery_worker_process.log_path).read_text()[-3000:]
    )
    verify(receiver.requests[0], SECRET)
    wait_until(lambda: BudgetAlert.objects.get().webhook_status == "sent", timeout=5, interval=0.1)


def _stored_secret(organisation) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT webhook_secret_encrypted FROM billing_billingsettings WHERE organisation_id = %s",
            [organisation.pk],
        )
        return cursor.fetchone()[0]


def test_the_webhook_secret_is_stored_encrypted_and_kept_when_only_the_url_changes(
    organisation, record_factory, system_actor, receiver
):
    from core.crypto import secret_decrypt

    billing_settings_update(
        organisation=organisation, actor=system_actor, webhook_url="https://example.com/h", webhook_secret=SECRET
    )
    stored = _stored_secret(organisation)
    assert SECRET not in stored and secret_decrypt(stored) == SECRET
    # Setting the same secret again is no change (nothing audited); a new URL alone keeps the secret.
    billing_settings_update(organisation=organisation, actor=system_actor, webhook_secret=SECRET)
    assert AuditEvent.objects.filter(organisation_id=organisation.pk, action="webhook.configured").count() == 1
    billing_settings_update(organisation=organisation, actor=system_actor, webhook_url=receiver.url)
    changed = AuditEvent.objects.filter(organisation_id=organisation.pk, action="webhook.configured").latest("id")
    assert changed.after == {"webhook_url": receiver.url, "secret_set": True, "secret_changed": False}
    cross_threshold(organisation, record_factory, system_actor)
    assert budget_alert_webhook_send(alert_id=BudgetAlert.objects.get().pk) == "sent"
    verify(receiver.requests[0], SECRET)


def test_a_secret_encrypted_under_another_key_fails_the_alert_unsent_and_must_be_set_again(
    organisation, record_factory, system_actor, receiver, settings
):
    from core.errors import ValidationFailed

    # (A key of its own: secrets stored under the SECRET_KEY-derived default stay readable after a key is set.)
    settings.STEWARD_ENCRYPTION_KEY = "the key the secret was stored under"
    billing_settings_update(
        organisation=organisation, actor=system_actor, webhook_url=receiver.url, webhook_secret=SECRET
    )
    settings.STEWARD_ENCRYPTION_KEY = "a different key, as after a rotation without re-encrypting"
    cross_threshold(organisation, record_factory, system_actor)
    alert = BudgetAlert.objects.get()
    assert budget_alert_webhook_send(alert_id=alert.pk) == "failed"
    alert.refresh_from_db()
    assert alert.webhook_status == "failed" and receiver.requests == []
    with pytest.raises(ValidationFailed) as err:
        billing_settings_update(organisation=organisation, actor=system_actor, webhook_url=receiver.url + "/v2")
    assert err.value.param == "webhook_secret"
    billing_settings_update(organisation=organisation, actor=system_actor, webhook_secret=SECRET + "-new")
    assert budget_alert_webhook_send(alert_id=alert.pk) == "sent"  # a failed alert can be delivered again
    verify(receiver.requests[0], SECRET + "-new")
