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
    key = ApiKey.objects.get(organisation=admin.organisation)
    # POST-redirect-GET: the POST answers with a redirect, the page it leads to shows the secret.
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:api_key_created", args=[key.id])
    shown = client.get(response["Location"])
    assert shown.status_code == 200
    assert "no-store" in shown["Cache-Control"]
    html = shown.content.decode()
    secret = re.search(r'id="api-key-secret"[^>]*>(stw_[^<]+)<', html).group(1)
    assert '<button type="button" class="copy" data-copy-target="#api-key-secret">' in html
    # A reload shows it no more, says so, and creates no other key.
    reloaded = client.get(response["Location"])
    assert reloaded.status_code == 200
    assert secret not in reloaded.content.decode() and b"already shown" in reloaded.content
    assert ApiKey.objects.filter(organisation=admin.organisation).count() == 1
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
        reverse("accounts:api_key_edit", args=[key.id]),
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


def test_another_admin_never_sees_the_secret_of_a_key_just_made(client, admin, owner):
    login(client, admin)
    location = _create(client)["Location"]
    client.logout()
    login(client, owner)
    page = client.get(location)
    assert page.status_code == 200 and b"already shown" in page.content and b"stw_" + b"x" not in page.content
    assert not re.search(r'id="api-key-secret"', page.content.decode())


def test_the_form_renders_checkboxes_inline_through_the_shared_partial(client, admin):
    login(client, admin)
    html = client.get(reverse("accounts:api_key_create")).content.decode()
    assert (
        '<div class="field field-check">\n  \n    <label for="id_cache_enabled"><input type="checkbox" '
        'name="cache_enabled" id="id_cache_enabled"> <span>Response cache enabled</span></label>'
    ) in html
    assert '<fieldset class="field-choices"><legend>Management API roles</legend>' in html
    errors = _create(client, name="", rpm_limit="0").content.decode()
    assert 'id="id_name_error"' in errors and 'id="id_rpm_limit_error"' in errors


def test_admin_edits_a_key_without_reissuing_its_secret(
    client, admin, api_key_factory, django_capture_on_commit_callbacks
):
    from core.invalidation import GENERATIONS_KEY
    from core.redis import redis_client

    key, secret = api_key_factory(name="search", allowed_models=["dev-small"], rpm_limit=10)
    login(client, admin)
    client.post(reverse("accounts:team_list"), {"name": "Payments"})
    team = admin.organisation.teams.get(name="Payments")
    # The proxy has the key in memory, with its old limit.
    assert api_key_authenticate(secret).rpm_limit == 10
    generation = int(redis_client().hget(GENERATIONS_KEY, "api_keys") or 0)
    url = reverse("accounts:api_key_edit", args=[key.id])
    form = client.get(url)
    assert form.status_code == 200
    assert form.context["form"]["name"].value() == "search"
    assert url in client.get(reverse("accounts:api_key_list")).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            url,
            {
                "name": "search (prod)",
                "team": team.id,
                "allowed_models": "dev-small dev-large",
                "rpm_limit": "20",
                "cache_enabled": "on",
            },
        )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.team, key.allowed_models, key.rpm_limit, key.cache_enabled) == (
        "search (prod)",
        team,
        ["dev-large", "dev-small"],
        20,
        True,
    )
    # Same secret, new limits: the cached copy was dropped here and in every other process.
    principal = api_key_authenticate(secret)
    assert principal.id == key.id and principal.rpm_limit == 20 and principal.team_id == team.id
    assert int(redis_client().hget(GENERATIONS_KEY, "api_keys")) > generation
    event = AuditEvent.objects.get(action="api_key.updated", target_id=str(key.id))
    assert event.before == {
        "name": "search",
        "team_id": None,
        "allowed_models": ["dev-small"],
        "rpm_limit": 10,
        "cache_enabled": False,
    }
    assert event.after == {
        "name": "search (prod)",
        "team_id": team.id,
        "allowed_models": ["dev-large", "dev-small"],
        "rpm_limit": 20,
        "cache_enabled": True,
    }
    # Saving it unchanged audits nothing.
    client.post(
        url,
        {
            "name": "search (prod)",
            "team": team.id,
            "allowed_models": "dev-small dev-large",
            "rpm_limit": "20",
            "cache_enabled": "on",
        },
    )
    assert AuditEvent.objects.filter(action="api_key.updated").count() == 1


def test_edit_errors_sit_beside_their_field_and_change_nothing(client, admin, api_key_factory):
    key, _ = api_key_factory(name="search")
    login(client, admin)
    response = client.post(
        reverse("accounts:api_key_edit", args=[key.id]), {"name": " ", "expires_at": "2001-01-01T00:00"}
    )
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"name", "expires_at"}
    assert 'id="id_expires_at_error"' in response.content.decode()
    key.refresh_from_db()
    assert key.name == "search" and key.expires_at is None


def test_a_revoked_key_cannot_be_edited(client, admin, api_key_factory):
    key, _ = api_key_factory(name="search")
    login(client, admin)
    client.post(reverse("accounts:api_key_revoke", args=[key.id]))
    url = reverse("accounts:api_key_edit", args=[key.id])
    page = client.get(url)
    assert page.status_code == 409 and b"cannot be edited" in page.content
    assert client.post(url, {"name": "renamed"}).status_code == 409
    key.refresh_from_db()
    assert key.name == "search"
    assert url not in client.get(reverse("accounts:api_key_list")).content.decode()


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
    assert client.get(reverse("accounts:api_key_created", args=[key.id])).status_code == 403
    assert client.post(reverse("accounts:api_key_edit", args=[key.id]), {"name": "mine"}).status_code == 403
    assert not ApiKey.objects.filter(name="billing service").exists()


def test_outsider_gets_404_for_another_organisations_key(client, outsider, api_key_factory):
    key, secret = api_key_factory()
    login(client, outsider)
    assert client.get(reverse("accounts:api_key_revoke", args=[key.id])).status_code == 404
    assert client.post(reverse("accounts:api_key_revoke", args=[key.id])).status_code == 404
    assert client.get(reverse("accounts:api_key_edit", args=[key.id])).status_code == 404
    assert client.post(reverse("accounts:api_key_edit", args=[key.id]), {"name": "mine"}).status_code == 404
    assert client.get(reverse("accounts:api_key_created", args=[key.id])).status_code == 404
    key.refresh_from_db()
    assert key.name == "test key"
    assert key.prefix not in client.get(reverse("accounts:api_key_list")).content.decode()
    assert api_key_authenticate(secret) is not None


def test_anonymous_is_sent_to_login(client):
    response = client.get(reverse("accounts:api_key_list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))
