"""Management API of the moderation queue: list without texts, claim, decide, bulk, and who may."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.roles import Role
from accounts.services import api_key_create
from safety.models import ModerationItem
from tests.helpers import ACTOR, login
from tests.safety.moderation_support import HELD_TEXT, held, policy_make

pytestmark = pytest.mark.django_db


def test_the_list_has_no_texts_and_the_detail_is_for_reviewers(client, organisation, admin, reviewer, outsider):
    item = held(organisation)
    listing = login(client, admin).get(reverse("api-moderation-items"))
    assert listing.status_code == 200
    [row] = listing.json()["results"]
    assert row["id"] == item.public_id and row["findings"][0]["kind"] == "email" and "held_text" not in row
    assert "jane" not in listing.content.decode().lower()
    assert client.get(reverse("api-moderation-item", args=[item.public_id])).status_code == 403
    detail = login(client, reviewer).get(reverse("api-moderation-item", args=[item.public_id]))
    assert detail.json()["held_text"] == HELD_TEXT and detail.json()["released_text"] is None
    assert login(client, outsider).get(reverse("api-moderation-item", args=[item.public_id])).status_code == 404
    assert client.get(reverse("api-moderation-items")).json()["results"] == []  # the outsider's own queue
    bad = login(client, admin).get(reverse("api-moderation-items"), {"priority": 9})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_claim_decide_and_an_empty_queue(client, organisation, reviewer):
    item = held(organisation)
    login(client, reviewer)
    claimed = client.post(reverse("api-moderation-claim"), {}, content_type="application/json")
    assert claimed.status_code == 200 and claimed.json()["id"] == item.public_id
    assert claimed.json()["claimed_by"] == "rita-reviewer"
    url = reverse("api-moderation-decide", args=[item.public_id])
    invalid = client.post(url, {"action": "reject", "reason_code": "boring"}, content_type="application/json")
    assert invalid.status_code == 400 and "reason_code" in invalid.json()["error"]["details"]
    needs_comment = client.post(url, {"action": "reject", "reason_code": "other"}, content_type="application/json")
    assert needs_comment.status_code == 400 and needs_comment.json()["error"]["details"]["param"] == "comment"
    edited = client.post(url, {"action": "edit", "edited_text": "Call Jane."}, content_type="application/json")
    assert edited.status_code == 200
    assert edited.json()["status"] == "approved" and edited.json()["released_text"] == "Call Jane."
    again = client.post(url, {"action": "approve"}, content_type="application/json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_decided"
    assert client.post(reverse("api-moderation-claim"), {}, content_type="application/json").status_code == 204


def test_claim_a_named_item_release_it_and_bulk(client, organisation, reviewer):
    policy = policy_make(organisation)
    a, b = held(organisation, policy), held(organisation, policy)
    login(client, reviewer)
    named = client.post(reverse("api-moderation-claim"), {"id": b.public_id}, content_type="application/json")
    assert named.json()["id"] == b.public_id
    assert client.post(reverse("api-moderation-release", args=[b.public_id])).status_code == 204
    assert ModerationItem.objects.get(pk=b.pk).lease_owner is None
    bulk = client.post(
        reverse("api-moderation-bulk"),
        {"items": [a.public_id, b.public_id], "action": "reject", "reason_code": "harmful"},
        content_type="application/json",
    )
    assert bulk.status_code == 200 and sorted(bulk.json()["decided"]) == sorted([a.public_id, b.public_id])
    assert set(ModerationItem.objects.values_list("released_text", flat=True)) == {"A reviewer withheld this answer."}


def test_api_keys_do_not_claim_or_decide_even_with_the_reviewer_role(client, organisation):
    item = held(organisation)
    key = api_key_create(organisation=organisation, name="bot", roles=[Role.REVIEWER], actor=ACTOR)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key.secret}"}
    assert client.get(reverse("api-moderation-item", args=[item.public_id]), **auth).status_code == 200
    claim = client.post(reverse("api-moderation-claim"), {}, content_type="application/json", **auth)
    assert claim.status_code == 403
    decide = client.post(
        reverse("api-moderation-decide", args=[item.public_id]),
        {"action": "approve"},
        content_type="application/json",
        **auth,
    )
    assert decide.status_code == 403
    assert ModerationItem.objects.get(pk=item.pk).status == "pending"
