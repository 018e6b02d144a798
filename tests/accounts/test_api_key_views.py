from __future__ import annotations

import re

import pytest
from django.urls import reverse

from accounts.models import ApiKey
from accounts.selectors import api_key_authenticate
from audit.models import AuditEvent
from tests.helpers import login

pytestmark = pytest.mark.django_db


def _create(client, **data):
    payload = {"name": "billing service", **data}
    return client.post(reverse("accounts:api_key_create"), payload)


def test_admin_creates_a_key_and_sees_the_secret_once(client, admin):
    login(client, admin)
    team_response = client.post(reverse("accounts:team_list"), {"name": "Payments"})
    assert team_response.status_code == 302
    team = admin.organisation.teams.get(name="Payments")
    response = _create(
        client,
        team=team.id,
        expires_at="2099-01-01T00:00",
        allowed_models="dev-small, dev-large",
        allowed_prompts="greeting\nsummary",
        roles=["viewer"],
        rpm_limit="60",
        tpm_limit="10000",
        max_in_flight="4",
        cache_enabled="on",
        overridable_params="temperature max_tokens",
    )
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    secret = re.search(r'id="api-key-secret"[^>]*>(stw_[^<]+)<', response.content.decode()).group(1)
    key = ApiKey.objects.get(organisation=admin.organisation)
    assert key.team == team
    assert key.allowed_models == ["dev-large", "dev-small"]
    assert key.allowed_prompts == ["greeting", "summary"]
    assert key.roles == ["viewer"]
    assert (key.rpm_limit, key.tpm_limit, key.max_in_flight, key.cache_enabled) == (60, 10000, 4, True)
    assert key.overridable_params == ["max_tokens", "temperature"]
    assert key.expires_at.year == 2099
    assert key.created_by == admin.user
    assert api_key_authenticate(secret).id == key.id
    # Never again: the list, the revoke page and a reload of the form do not show it.
    for url in (
        reverse("accounts:api_key_list"),
        reverse("accounts:api_key_revoke", args=[key.id]),
        reverse("accounts:api_key_create"),
    ):
        page = client.get(url)
        assert page.status_code == 200
        assert secret not in page.content.decode()
    assert key.prefix in client.get(reverse("accounts:api_key_list")).content.decode()
    event = AuditEvent.objects.get(organisation=admin.organisation, action="api_key.created")
    assert event.actor_label == admin.user.username
    assert secret not in str(event.after)


def test_create_form_rejects_bad_input(client, admin, other_organisation):
    from accounts.services import team_create
    from core.actors import Actor

    foreign_team = team_create(organisation=other_organisation, name="Theirs", actor=Actor.system())
    login(client, admin)
    response = _create(client, name="", rpm_limit="-1", expires_at="2001-01-01T00:00", team=foreign_team.id)
    assert response.status_code == 200
    form = response.context["form"]
    assert set(form.errors) == {"name", "rpm_limit", "expires_at", "team"}
    assert not ApiKey.objects.exists()


def test_revoke_asks_for_confirmation_then_revokes(client, admin, api_key_factory):
    key, secret = api_key_factory()
    login(client, admin)
    confirm = client.get(reverse("accounts:api_key_revoke", args=[key.id]))
    assert confirm.status_code == 200
    assert b"cannot be undone" in confirm.content
    key.refresh_from_db()
    assert key.revoked_at is None
    response = client.post(reverse("accounts:api_key_revoke", args=[key.id]))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert api_key_authenticate(secret) is None
    assert b"revoked" in client.get(reverse("accounts:api_key_list")).content


def test_member_without_admin_role_gets_403(client, prompt_engineer, api_key_factory):
    key, _ = api_key_factory()
    login(client, prompt_engineer)
    assert client.get(reverse("accounts:api_key_list")).status_code == 403
    assert _create(client).status_code == 403
    assert client.post(reverse("accounts:api_key_revoke", args=[key.id])).status_code == 403
    assert not ApiKey.objects.filter(name="billing service").exists()


def test_outsider_gets_404_for_another_organisations_key(client, outsider, api_key_factory):
    key, secret = api_key_factory()
    login(client, outsider)
    assert client.get(reverse("accounts:api_key_revoke", args=[key.id])).status_code == 404
    assert client.post(reverse("accounts:api_key_revoke", args=[key.id])).status_code == 404
    assert key.prefix not in client.get(reverse("accounts:api_key_list")).content.decode()
    assert api_key_authenticate(secret) is not None


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("accounts:api_key_list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))
