"""Reviewer pages: who may see what, decisions through the forms, findings highlighted and escaped."""

from __future__ import annotations

import pytest
from django.urls import reverse

from safety.models import FindingReview, ModerationItem
from safety.moderation import item_claim
from tests.helpers import login
from tests.safety.moderation_support import HELD_TEXT, held, policy_make

pytestmark = pytest.mark.django_db


def test_queue_lists_items_without_their_text_for_admins_and_reviewers(client, organisation, admin, reviewer, viewer):
    item = held(organisation)
    for persona in (admin, reviewer):
        page = login(client, persona).get(reverse("safety:home"))
        assert page.status_code == 200
        body = page.content.decode()
        assert item.public_id in body and "pii-hold" in body and "email" in body
        assert "jane.doe" not in body and "Call Jane" not in body
    admin_page = login(client, admin).get(reverse("safety:home")).content.decode()
    assert reverse("safety:item_detail", args=[item.public_id]) not in admin_page  # no link to the text
    assert login(client, viewer).get(reverse("safety:home")).status_code == 403


def test_the_item_page_needs_the_reviewer_role(client, organisation, admin, outsider, reviewer):
    item = held(organisation)
    url = reverse("safety:item_detail", args=[item.public_id])
    assert login(client, admin).get(url).status_code == 403  # an admin is not a reviewer
    assert login(client, outsider).get(url).status_code == 404
    page = login(client, reviewer).get(url)
    assert page.status_code == 200
    assert ModerationItem.objects.get(pk=item.pk).lease_owner == reviewer.user  # opening claims it


def test_findings_are_highlighted_and_everything_is_escaped(client, organisation, reviewer):
    text = "<script>alert(1)</script> mail a@b.co now"
    at = text.index("a@b.co")
    item = held(organisation, text=text, findings=[
        {"filter": "pii", "kind": "email", "start": at, "end": at + 6},
        {"filter": "regex", "kind": "<b>odd</b>", "start": 0, "end": 8},
        {"filter": "pii", "kind": "bogus", "start": 500, "end": "x"},
    ])  # fmt: skip
    body = login(client, reviewer).get(reverse("safety:item_detail", args=[item.public_id])).content.decode()
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;" in body
    assert '<mark data-findings="0" title="email">a@b.co</mark>' in body
    assert "<b>odd</b>" not in body and "&lt;b&gt;odd&lt;/b&gt;" in body


def test_keyboard_flow_forms_decide_and_move_to_the_next_item(client, organisation, reviewer):
    policy = policy_make(organisation)
    first, second = held(organisation, policy, priority=1), held(organisation, policy, priority=2)
    login(client, reviewer)
    opened = client.post(reverse("safety:queue_next"))
    assert opened["Location"] == reverse("safety:item_detail", args=[first.public_id])
    page = client.get(opened["Location"]).content.decode()
    assert 'id="approve-form"' in page and "<kbd>a</kbd>" in page and "<kbd>?</kbd>" in page
    decided = client.post(reverse("safety:item_decide", args=[first.public_id]), {"action": "approve"})
    assert decided["Location"] == reverse("safety:item_detail", args=[second.public_id])
    rejected = client.post(
        reverse("safety:item_decide", args=[second.public_id]), {"action": "reject", "reason_code": "harmful"}
    )
    assert rejected["Location"] == reverse("safety:home")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.released_text, second.status) == ("approved", HELD_TEXT, "rejected")


def test_a_decision_without_the_lease_is_refused_with_a_message(client, organisation, reviewer):
    item = held(organisation)
    login(client, reviewer)
    answer = client.post(reverse("safety:item_decide", args=[item.public_id]), {"action": "approve"}, follow=True)
    assert "Claim the item first" in answer.content.decode()
    assert ModerationItem.objects.get(pk=item.pk).status == "pending"


def test_bulk_approve_and_reject_from_the_queue(client, organisation, reviewer):
    policy = policy_make(organisation)
    a, b, c = (held(organisation, policy) for _ in range(3))
    login(client, reviewer)
    client.post(reverse("safety:queue_bulk"), {"action": "approve", "items": [a.public_id, b.public_id]})
    client.post(reverse("safety:queue_bulk"), {"action": "reject", "items": [c.public_id], "reason_code": "harmful"})
    assert sorted(ModerationItem.objects.values_list("status", flat=True)) == ["approved", "approved", "rejected"]


def test_marking_a_finding_false_positive_with_htmx(client, organisation, reviewer):
    item = held(organisation)
    login(client, reviewer)
    url = reverse("safety:finding_review", args=[item.public_id, 0])
    answer = client.post(url, {"false_positive": "1"}, HTTP_HX_REQUEST="true")
    assert answer.status_code == 200 and "false positive" in answer.content.decode()
    assert FindingReview.objects.get(item=item).false_positive is True
    assert client.post(reverse("safety:finding_review", args=[item.public_id, 9]), {}).status_code == 400


def test_the_queue_filters_and_the_lease_holder(client, organisation, reviewer):
    other = policy_make(organisation, name="other")
    a = held(organisation)
    b = held(organisation, other, findings=[{"filter": "secrets", "kind": "aws_key", "start": 0, "end": 4}])
    item_claim(organisation=organisation, reviewer=reviewer.user)
    login(client, reviewer)
    body = client.get(reverse("safety:home"), {"policy": other.pk}).content.decode()
    assert b.public_id in body and a.public_id not in body
    body = client.get(reverse("safety:home"), {"kind": "email"}, HTTP_HX_REQUEST="true").content.decode()
    assert a.public_id in body and b.public_id not in body and "rita-reviewer" in body


def test_queue_metrics_are_served_at_metrics(client, organisation, reviewer):
    from safety.moderation import item_decide, item_lease_take

    policy = policy_make(organisation)
    held(organisation, policy)
    decided = held(organisation, policy)
    item_lease_take(organisation=organisation, public_id=decided.public_id, reviewer=reviewer.user)
    item_decide(organisation=organisation, public_id=decided.public_id, reviewer=reviewer.user, action="approve")
    body = client.get("/metrics").content.decode()
    labels = f'organisation_id="{organisation.pk}",policy_id="{policy.pk}"'
    assert f"steward_moderation_queue_depth{{{labels}}} 1.0" in body
    assert f"steward_moderation_oldest_pending_seconds{{{labels}}}" in body
    assert f'steward_moderation_decided_total{{{labels},status="approved"}} 1.0' in body
    assert f"steward_moderation_decision_seconds_total{{{labels}}}" in body
    reviewer_labels = f'action="approve",organisation_id="{organisation.pk}",reviewer_id="{reviewer.user.pk}"'
    assert f"steward_moderation_reviewer_decisions_total{{{reviewer_labels}}} 1.0" in body
    assert "pii-hold" not in body and "rita" not in body
