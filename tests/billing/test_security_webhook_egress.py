"""Budget webhooks under the egress policy: a private address is refused when the URL is saved (a
literal) or when the alert is sent (a name resolving to one), and nothing reaches it."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from billing.models import BudgetAlert
from billing.services import billing_settings_update, budget_alert_webhook_send
from core.errors import ValidationFailed
from tests.helpers import SECRET, cross_threshold, login


@pytest.fixture
def deny_private(settings):
    settings.STEWARD_EGRESS_ALLOW_PRIVATE = False
    settings.STEWARD_EGRESS_ALLOWED_HOSTS = ()
    return settings


def test_a_webhook_to_a_name_that_resolves_to_loopback_is_not_sent_and_marked_failed(
    organisation, record_factory, system_actor, receiver, settings
):
    # Saved while private addresses were allowed (or with a name that resolved elsewhere then):
    # `localhost` stands in for a DNS name an attacker points at 127.0.0.1 after the save.
    url = receiver.url.replace("127.0.0.1", "localhost")
    billing_settings_update(organisation=organisation, actor=system_actor, webhook_url=url, webhook_secret=SECRET)
    cross_threshold(organisation, record_factory, system_actor)
    alert = BudgetAlert.objects.get()
    settings.STEWARD_EGRESS_ALLOW_PRIVATE = False

    assert budget_alert_webhook_send(alert_id=alert.pk) == "failed"  # not retried: it would be refused again
    alert.refresh_from_db()
    assert alert.webhook_status == "failed"
    assert receiver.requests == []

    # The same webhook is sent once the operator allows the host.
    settings.STEWARD_EGRESS_ALLOWED_HOSTS = ("localhost",)
    BudgetAlert.objects.filter(pk=alert.pk).update(webhook_status="pending")
    assert budget_alert_webhook_send(alert_id=alert.pk) == "sent"
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://[::1]:8080/hook",
        "http://localhost:8080/hook",
    ],
)
def test_a_literal_private_webhook_url_is_refused_when_saved(organisation, system_actor, deny_private, url):
    with pytest.raises(ValidationFailed) as refused:
        billing_settings_update(organisation=organisation, actor=system_actor, webhook_url=url, webhook_secret=SECRET)
    assert refused.value.param == "webhook_url" and "egress policy" in refused.value.message


def test_the_settings_api_answers_400_naming_the_field(client, admin, deny_private):
    login(client, admin)
    response = client.put(
        reverse("api-billing-settings"),
        data=json.dumps({"webhook_url": "http://169.254.169.254/hook", "webhook_secret": SECRET}),
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert "webhook_url" in response.content.decode()
    # A listed network may be used.
    deny_private.STEWARD_EGRESS_ALLOWED_HOSTS = ("169.254.0.0/16",)
    response = client.put(
        reverse("api-billing-settings"),
        data=json.dumps({"webhook_url": "http://169.254.169.254/hook", "webhook_secret": SECRET}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
