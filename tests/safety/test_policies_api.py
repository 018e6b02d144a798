"""The policy management API: CRUD, attachments by id or name, the catalogue, false-positive rates,
settings; who may do what (admins write; prompt engineers and reviewers read; viewers nothing), API
keys with their roles, and another organisation's policies and targets answering 404 / 400."""

from __future__ import annotations

import pytest
from django.utils import timezone

from accounts.roles import Role
from audit.actions import Action
from audit.models import AuditEvent
from safety.models import FindingReview, ModerationItem, PolicyAttachment, SafetyPolicy
from tests.factories import PromptFactory, RouteFactory, SafetyPolicyFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db

BASE = "/api/v1/safety"
PII = {"filter": "pii", "settings": {}, "timeout_ms": 50}


def test_admin_creates_reads_updates_and_deletes_a_policy(client, admin):
    login(client, admin)
    body = {"name": "support", "filters": [PII], "actions": {"email": "redact", "*": "flag"}, "deadline_ms": 500}
    created = client.post(f"{BASE}/policies/create/", body, content_type="application/json")
    assert created.status_code == 201, created.content
    policy = created.json()
    assert policy["filters"] == [
        {"filter": "pii", "settings": {}, "directions": ["input", "output"], "timeout_ms": 50, "on_error": "block"}
    ]
    assert policy["attachments"] == [] and policy["stream_mode"] == "buffer"
    url = f"{BASE}/policies/{policy['id']}/"
    assert client.get(url).json()["actions"] == {"email": "redact", "*": "flag"}
    changed = client.patch(f"{url}update/", {"priority": 1}, content_type="application/json")
    assert changed.status_code == 200 and changed.json()["priority"] == 1
    listed = client.get(f"{BASE}/policies/").json()
    assert listed["count"] == 1 and listed["results"][0]["name"] == "support"
    assert client.delete(f"{url}delete/").status_code == 204
    assert client.get(url).status_code == 404


def test_validation_errors_name_the_field_and_the_filter_entry(client, admin):
    login(client, admin)
    body = {"name": "p", "filters": [PII, {"filter": "pii", "settings": {"kinds": ["martian"]}}]}
    response = client.post(f"{BASE}/policies/create/", body, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["details"]["param"] == "filters[1].settings.kinds"
    assert "filters[1].settings.kinds" in error["details"]["errors"]
    hold_in_window = {"name": "p", "filters": [PII], "actions": {"email": "hold"}, "stream_mode": "window"}
    response = client.post(f"{BASE}/policies/create/", hold_in_window, content_type="application/json")
    assert response.status_code == 400 and "buffer" in response.json()["error"]["message"]
    SafetyPolicyFactory(organisation=admin.organisation, name="taken")
    response = client.post(f"{BASE}/policies/create/", {"name": "taken"}, content_type="application/json")
    assert response.status_code == 409


def test_attach_by_id_and_by_name_then_detach(client, admin, api_key_factory):
    login(client, admin)
    policy = SafetyPolicyFactory(organisation=admin.organisation, name="p")
    key, _ = api_key_factory(name="svc")
    prompt = PromptFactory(organisation=admin.organisation, name="greeting")
    RouteFactory(organisation=admin.organisation, name="dev-small")
    url = f"{BASE}/attachments/create/"
    for body in (
        {"policy_id": policy.id, "scope": "organisation"},
        {"policy_id": policy.id, "scope": "api_key", "target_id": key.id},
        {"policy_id": policy.id, "scope": "prompt", "target_name": "greeting"},
        {"policy_id": policy.id, "scope": "route", "target_name": "dev-small"},
    ):
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 201, (body, response.content)
    prompt_row = response = client.get(f"{BASE}/attachments/", {"policy_id": policy.id}).json()["results"]
    assert [(a["scope"], a["target_name"]) for a in prompt_row] == [
        ("api_key", f"svc ({key.prefix}…)"),
        ("prompt", "greeting"),
        ("route", "dev-small"),
        ("organisation", "Acme"),
    ]
    assert prompt_row[1]["target_id"] == prompt.id
    detail = client.get(f"{BASE}/policies/{policy.id}/").json()
    assert len(detail["attachments"]) == 4
    response = client.delete(f"{BASE}/attachments/{prompt_row[1]['id']}/delete/")
    assert response.status_code == 204
    assert PolicyAttachment.objects.count() == 3
    assert AuditEvent.objects.filter(organisation=admin.organisation, action=Action.POLICY_DETACHED).count() == 1


def test_another_organisations_policies_and_targets_are_out_of_reach(client, admin, other_organisation):
    login(client, admin)
    mine = SafetyPolicyFactory(organisation=admin.organisation, name="mine")
    theirs = SafetyPolicyFactory(organisation=other_organisation, name="theirs")
    their_prompt = PromptFactory(organisation=other_organisation, name="their-prompt")
    for method, path in (
        ("get", f"/policies/{theirs.id}/"),
        ("patch", f"/policies/{theirs.id}/update/"),
        ("delete", f"/policies/{theirs.id}/delete/"),
        ("get", f"/policies/{theirs.id}/false-positives/"),
    ):
        assert getattr(client, method)(BASE + path, {}, content_type="application/json").status_code == 404
    assert client.get(f"{BASE}/attachments/", {"policy_id": theirs.id}).status_code == 404
    url = f"{BASE}/attachments/create/"
    response = client.post(url, {"policy_id": theirs.id, "scope": "organisation"}, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["details"]["param"] == "policy_id"
    for body in (
        {"policy_id": mine.id, "scope": "prompt", "target_id": their_prompt.id},
        {"policy_id": mine.id, "scope": "prompt", "target_name": "their-prompt"},
    ):
        assert client.post(url, body, content_type="application/json").status_code == 400
    their_attachment = PolicyAttachment.objects.create(
        organisation=other_organisation, policy=theirs, scope="organisation", target_id=0
    )
    assert client.delete(f"{BASE}/attachments/{their_attachment.id}/delete/").status_code == 404
    assert [p["name"] for p in client.get(f"{BASE}/policies/").json()["results"]] == ["mine"]
    assert client.get(f"{BASE}/attachments/").json()["count"] == 0
    SafetyPolicy.objects.get(pk=theirs.pk)  # untouched


@pytest.mark.parametrize("persona", ["prompt_engineer", "reviewer"])
def test_prompt_engineers_and_reviewers_read_but_do_not_write(client, persona, request):
    who = request.getfixturevalue(persona)
    login(client, who)
    policy = SafetyPolicyFactory(organisation=who.organisation, name="p")
    assert client.get(f"{BASE}/policies/").status_code == 200
    assert client.get(f"{BASE}/policies/{policy.id}/").status_code == 200
    assert client.get(f"{BASE}/filters/").status_code == 200
    assert client.post(f"{BASE}/policies/create/", {"name": "x"}, content_type="application/json").status_code == 403
    assert client.patch(f"{BASE}/policies/{policy.id}/update/", {}, content_type="application/json").status_code == 403
    assert client.delete(f"{BASE}/policies/{policy.id}/delete/").status_code == 403
    body = {"require_redacted_logging": True}
    assert client.put(f"{BASE}/settings/update/", body, content_type="application/json").status_code == 403


def test_viewers_and_anonymous_callers_get_nothing(client, viewer):
    assert client.get(f"{BASE}/policies/").status_code in (401, 403)
    login(client, viewer)
    assert client.get(f"{BASE}/policies/").status_code == 403
    assert client.get(f"{BASE}/filters/").status_code == 403


def test_api_keys_act_with_their_roles(client, api_key_factory):
    _, admin_secret = api_key_factory(roles=[Role.ADMIN])
    _, viewer_secret = api_key_factory(roles=[Role.VIEWER])
    _, bare_secret = api_key_factory()
    body = {"name": "from-a-key"}
    created = client.post(
        f"{BASE}/policies/create/", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {admin_secret}"
    )
    assert created.status_code == 201
    event = AuditEvent.objects.get(action=Action.POLICY_CREATED)
    assert event.actor_type == "api_key"
    for secret in (viewer_secret, bare_secret):
        response = client.get(f"{BASE}/policies/", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert response.status_code == 403


def test_catalogue_lists_every_filter_with_kinds_and_settings(client, reviewer):
    from safety.filters import FILTERS

    login(client, reviewer)
    catalogue = client.get(f"{BASE}/filters/").json()
    assert [f["name"] for f in catalogue] == sorted(FILTERS)
    pii = next(f for f in catalogue if f["name"] == "pii")
    assert "email" in pii["kinds"] and "kinds" in pii["settings"]


def test_false_positive_rates(client, reviewer):
    login(client, reviewer)
    policy = SafetyPolicyFactory(organisation=reviewer.organisation, name="p", filters=[PII])
    for n, false_positive in enumerate((True, False, False, False)):
        item = ModerationItem.objects.create(
            organisation=reviewer.organisation, policy=policy, policy_name="p", public_id=f"modr_api_{n}",
            request_id=f"r{n}", direction="output", held_text="x", deadline=timezone.now(),
            findings=[{"filter": "pii", "kind": "email"}],
        )  # fmt: skip
        FindingReview.objects.create(
            item=item, finding_index=0, filter_name="pii", kind="email", false_positive=false_positive
        )
    rates = client.get(f"{BASE}/policies/{policy.id}/false-positives/").json()
    assert rates == [{"filter": "pii", "reviews": 4, "false_positives": 1, "rate": 0.25}]


def test_settings_switch(client, admin):
    login(client, admin)
    lax = SafetyPolicyFactory(organisation=admin.organisation, name="lax", store_redacted_only=False)
    assert client.get(f"{BASE}/settings/").json() == {"require_redacted_logging": False}
    response = client.put(
        f"{BASE}/settings/update/", {"require_redacted_logging": True}, content_type="application/json"
    )
    assert response.json() == {"require_redacted_logging": True}
    lax.refresh_from_db()
    assert lax.store_redacted_only
    response = client.patch(
        f"{BASE}/policies/{lax.id}/update/", {"store_redacted_only": False}, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["param"] == "store_redacted_only"
