"""The policy pages through the Django test client: create and edit with filters added from the
catalogue, errors beside their fields and filter entries, attach by name, detach, the settings
switch, false-positive rates on the policy page, navigation, and other tenants' policies being 404."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.actions import Action
from audit.models import AuditEvent
from safety.models import FindingReview, ModerationItem, PolicyAttachment, SafetyPolicy, SafetySettings
from safety.policy_services import policy_attach
from tests.factories import PromptFactory, RouteFactory, SafetyPolicyFactory
from tests.helpers import ACTOR, login

pytestmark = pytest.mark.django_db

FORM = {
    "name": "support",
    "description": "Support bot",
    "deadline_ms": "800",
    "stream_mode": "buffer",
    "window_chars": "400",
    "hold_wait": "respond",
    "hold_wait_seconds": "30",
    "hold_placeholder": "Being reviewed.",
    "refusal_text": "Withheld.",
    "sla_seconds": "3600",
    "priority": "2",
    "required_approvals": "1",
    "store_redacted_only": "on",
    "is_active": "on",
}


def test_the_navigation_has_policies_for_admins_and_reviewers_not_viewers(client, admin, viewer):
    login(client, admin)
    assert b'href="/moderation/policies/"' in client.get("/moderation/policies/").content
    login(client, viewer)
    assert client.get("/moderation/policies/").status_code == 403
    assert b"/moderation/policies/" not in client.get("/prompts/").content


def test_create_a_policy_adding_a_filter_from_the_catalogue(client, admin):
    login(client, admin)
    page = client.get("/moderation/policies/new/")
    assert page.status_code == 200 and b'<option value="pii">' in page.content
    # Without JavaScript, "Add" re-renders the editor with the new entry and saves nothing.
    added = client.post("/moderation/policies/new/", {**FORM, "add": "1", "add_filter": "pii"})
    assert added.status_code == 200 and b'name="f0-filter" value="pii"' in added.content
    assert b'name="action:email"' in added.content
    assert not SafetyPolicy.objects.exists()
    # With htmx, the entry comes as a partial with its kinds' action rows, out of band.
    partial = client.get(
        "/moderation/policies/filter-entry/", {"add_filter": "pii", "next": "3"}, HTTP_HX_REQUEST="true"
    )
    assert (
        b'name="f3-filter" value="pii"' in partial.content
        and b'hx-swap-oob="afterbegin:#action-rows"' in partial.content
    )
    saved = client.post(
        "/moderation/policies/new/",
        {
            **FORM,
            "save": "1",
            "f0-filter": "pii",
            "f0-settings": '{"kinds": ["email"]}',
            "f0-directions": ["input", "output"],
            "f0-timeout_ms": "50",
            "f0-on_error": "allow",
            "action:email": "redact",
            "action:*": "flag",
            "action_lines": "",
        },
    )
    policy = SafetyPolicy.objects.get(name="support")
    assert saved.status_code == 302 and saved["Location"] == f"/moderation/policies/{policy.id}/"
    assert policy.filters == [
        {"filter": "pii", "settings": {"kinds": ["email"]}, "directions": ["input", "output"], "timeout_ms": 50,
         "on_error": "allow"}
    ]  # fmt: skip
    assert policy.actions == {"email": "redact", "*": "flag"} and policy.deadline_ms == 800
    event = AuditEvent.objects.get(action=Action.POLICY_CREATED)
    assert event.after["fail_open"] == [{"index": 0, "filter": "pii"}]
    page = client.get(saved["Location"])
    assert b"fail open" in page.content and b"no reviews yet" in page.content


def test_errors_show_beside_their_field_and_filter_entry(client, admin):
    login(client, admin)
    response = client.post(
        "/moderation/policies/new/",
        {
            **FORM,
            "save": "1",
            "stream_mode": "window",
            "f0-filter": "pii",
            "f0-settings": '{"kinds": ["martian"]}',
            "f0-on_error": "block",
            "f1-filter": "pii",
            "f1-settings": "{not json",
            "f1-on_error": "block",
        },
    )
    assert response.status_code == 200
    html = response.content.decode()
    entry0 = html[html.index('id="filter-entry-0"') : html.index('id="filter-entry-1"')]
    assert "filters[0] (pii), setting &#x27;kinds&#x27;" in entry0
    entry1 = html[html.index('id="filter-entry-1"') :]
    assert "not valid JSON" in entry1[: entry1.index("</fieldset>")]
    assert not SafetyPolicy.objects.exists()
    # a hold in window mode: the error sits beside stream_mode
    response = client.post(
        "/moderation/policies/new/",
        {**FORM, "save": "1", "stream_mode": "window", "f0-filter": "pii", "f0-on_error": "block",
         "action:email": "hold"},
    )  # fmt: skip
    html = response.content.decode()
    field = html[html.index('id="field-stream_mode"') : html.index('id="field-window_chars"')]
    assert "a hold action needs stream_mode" in field
    # a kind no filter reports: the error sits in the actions section
    response = client.post("/moderation/policies/new/", {**FORM, "save": "1", "action_lines": "email: block"})
    html = response.content.decode()
    assert 'id="action-errors"' in html and "no filter of this policy reports the kind" in html


def test_edit_a_policy(client, admin):
    login(client, admin)
    policy = SafetyPolicyFactory(
        organisation=admin.organisation, name="p", filters=[{"filter": "pii"}], actions={"email": "redact"}
    )
    page = client.get(f"/moderation/policies/{policy.id}/edit/")
    assert b'name="f0-filter" value="pii"' in page.content
    assert b'<option value="redact" selected>' in page.content
    response = client.post(
        f"/moderation/policies/{policy.id}/edit/",
        {**FORM, "name": "p", "save": "1", "f0-filter": "pii", "f0-settings": "{}", "f0-directions": ["input"],
         "f0-on_error": "block", "action:email": "block", "f1-filter": "injection", "f1-remove": "1"},
    )  # fmt: skip
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.actions == {"email": "block"} and policy.filters[0]["directions"] == ["input"]
    assert len(policy.filters) == 1
    assert AuditEvent.objects.filter(action=Action.POLICY_CHANGED).count() == 1


def test_attach_by_name_and_detach(client, admin, api_key_factory):
    login(client, admin)
    policy = SafetyPolicyFactory(organisation=admin.organisation, name="p")
    PromptFactory(organisation=admin.organisation, name="greeting")
    RouteFactory(organisation=admin.organisation, name="dev-small")
    key, _ = api_key_factory(name="svc")
    page = client.get(f"/moderation/policies/{policy.id}/attach/")
    html = page.content.decode()
    assert ">greeting</option>" in html and ">dev-small</option>" in html and f">svc ({key.prefix}…)</option>" in html
    prompt_value = html[: html.index(">greeting</option>")].rsplit('value="', 1)[1].split('"')[0]
    response = client.post(f"/moderation/policies/{policy.id}/attach/", {"target": prompt_value})
    assert response.status_code == 302
    response = client.post(f"/moderation/policies/{policy.id}/attach/", {"target": "organisation:0"})
    assert response.status_code == 302
    listing = client.get("/moderation/policies/").content.decode()
    assert "Prompt: <strong>greeting</strong>" in listing and "Organisation default: <strong>Acme</strong>" in listing
    attachment = PolicyAttachment.objects.get(scope="prompt")
    assert client.post(f"/moderation/policies/attachments/{attachment.id}/detach/").status_code == 302
    assert list(PolicyAttachment.objects.values_list("scope", flat=True)) == ["organisation"]


def test_attaching_to_another_organisations_target_is_refused(client, admin, other_organisation):
    login(client, admin)
    policy = SafetyPolicyFactory(organisation=admin.organisation, name="p")
    theirs = PromptFactory(organisation=other_organisation, name="theirs")
    response = client.post(f"/moderation/policies/{policy.id}/attach/", {"target": f"prompt:{theirs.id}"})
    assert response.status_code == 200 and not PolicyAttachment.objects.exists()
    assert b"theirs" not in client.get(f"/moderation/policies/{policy.id}/attach/").content


def test_another_organisations_policy_is_404_everywhere(client, admin, other_organisation):
    login(client, admin)
    theirs = SafetyPolicyFactory(organisation=other_organisation, name="theirs")
    attachment = policy_attach(
        organisation=other_organisation, policy=theirs, scope="organisation", target_id=0, actor=ACTOR
    )
    for url in (f"/moderation/policies/{theirs.id}/", f"/moderation/policies/{theirs.id}/edit/",
                f"/moderation/policies/{theirs.id}/attach/"):  # fmt: skip
        assert client.get(url).status_code == 404
    assert client.post(f"/moderation/policies/{theirs.id}/delete/").status_code == 404
    assert client.post(f"/moderation/policies/attachments/{attachment.id}/detach/").status_code == 404
    assert b"theirs" not in client.get("/moderation/policies/").content
    assert SafetyPolicy.objects.filter(pk=theirs.pk).exists()


def test_reviewers_read_but_cannot_change(client, reviewer):
    login(client, reviewer)
    policy = SafetyPolicyFactory(organisation=reviewer.organisation, name="p")
    assert client.get(f"/moderation/policies/{policy.id}/").status_code == 200
    assert client.get("/moderation/policies/new/").status_code == 403
    assert client.post(f"/moderation/policies/{policy.id}/delete/").status_code == 403


def test_policy_page_shows_false_positive_rates_and_holds_without_their_text(client, reviewer):
    login(client, reviewer)
    policy = SafetyPolicyFactory(organisation=reviewer.organisation, name="p", filters=[{"filter": "pii"}])
    for n, fp in enumerate((True, False, False, False)):
        item = ModerationItem.objects.create(
            organisation=reviewer.organisation, policy=policy, policy_name="p", public_id=f"modr_view_{n}",
            request_id=f"r{n}", direction="output", held_text="HELD-SECRET-TEXT", deadline=timezone.now(),
            findings=[{"filter": "pii", "kind": "email"}],
        )  # fmt: skip
        FindingReview.objects.create(item=item, finding_index=0, filter_name="pii", kind="email", false_positive=fp)
    html = client.get(f"/moderation/policies/{policy.id}/").content.decode()
    assert '25% <span class="muted">(1 of 4 reviewed)</span>' in html
    assert "modr_view_3" in html and "HELD-SECRET-TEXT" not in html


def test_delete_and_the_redacted_logging_switch(client, admin):
    login(client, admin)
    policy = SafetyPolicyFactory(organisation=admin.organisation, name="p", store_redacted_only=False)
    response = client.post("/moderation/policies/settings/", {"require_redacted_logging": "on"})
    assert response.status_code == 302
    assert SafetySettings.objects.get(organisation=admin.organisation).require_redacted_logging
    policy.refresh_from_db()
    assert policy.store_redacted_only
    assert client.post(f"/moderation/policies/{policy.id}/delete/").status_code == 302
    assert not SafetyPolicy.objects.exists()
