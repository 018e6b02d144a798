"""The moderation queue's services: holds, leases, decisions, two approvals, bulk, false positives,
escalation and the signed webhook notices."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from billing.services import billing_settings_update
from core.errors import Conflict, Forbidden, ValidationFailed
from safety.models import ModerationItem, ModerationNotice, ModerationStatus
from safety.moderation import (
    ahold_decision_wait,
    finding_review_set,
    item_claim,
    item_decide,
    item_lease_take,
    item_release_lease,
    items_decide_bulk,
    moderation_client_view,
)
from safety.moderation_notify import items_escalate
from safety.moderation_selectors import false_positive_rates, queue_metrics
from safety.tasks import moderation_notice_deliver
from tests.helpers import ACTOR, SECRET, webhook_verify
from tests.safety.moderation_support import HELD_TEXT, held, policy_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_reviewer(organisation):
    from accounts.roles import Role
    from tests.factories import PersonaFactory

    return PersonaFactory(username="sam-reviewer", organisation=organisation, roles=[Role.REVIEWER])


def decide(item, persona, action="approve", **kw):
    return item_decide(
        organisation=item.organisation, public_id=item.public_id, reviewer=persona.user, action=action, **kw
    )


def test_a_hold_is_pending_and_its_client_view_never_shows_the_held_text(organisation):
    item = held(organisation)
    assert item.public_id.startswith("modr_") and len(item.public_id) == 5 + 24
    view = moderation_client_view(item)
    assert view == {
        "id": item.public_id,
        "object": "moderation.item",
        "status": "pending",
        "created": int(item.created_at.timestamp()),
        "decided": None,
        "output": None,
        "edited": False,
        "reason_code": None,
    }
    assert item.deadline - item.created_at == timedelta(seconds=3600)


def test_claim_then_approve_releases_the_held_text_and_audits(organisation, reviewer):
    item = held(organisation)
    claimed = item_claim(organisation=organisation, reviewer=reviewer.user)
    assert claimed.pk == item.pk and claimed.lease_owner == reviewer.user
    decided = decide(item, reviewer)
    assert decided.status == ModerationStatus.APPROVED and decided.released_text == HELD_TEXT
    assert decided.lease_owner is None and decided.decided_at is not None
    view = moderation_client_view(decided)
    assert view["status"] == "approved" and view["output"] == HELD_TEXT and view["edited"] is False
    event = AuditEvent.objects.get(organisation_id=organisation.pk, action="moderation.released")
    assert event.target_id == item.public_id and event.after["reviewers"] == ["rita-reviewer"]
    assert HELD_TEXT not in str(event.after)
    with pytest.raises(Conflict) as err:
        decide(item, reviewer)
    assert err.value.code == "already_decided"


def test_edit_releases_the_edited_text_and_keeps_the_diff(organisation, reviewer):
    item = held(organisation)
    item_lease_take(organisation=organisation, public_id=item.public_id, reviewer=reviewer.user)
    edited = HELD_TEXT.replace("jane.doe@example.com", "[email removed]")
    decided = decide(item, reviewer, "edit", edited_text=edited)
    assert decided.released_text == edited and decided.edited
    [decision] = decided.decisions.all()
    assert decision.action == "edit" and "-Call Jane" in decision.diff and "+Call Jane" in decision.diff
    assert "[email removed]" in decision.diff


def test_reject_needs_a_known_reason_and_releases_the_refusal(organisation, reviewer):
    item = held(organisation)
    item_claim(organisation=organisation, reviewer=reviewer.user)
    with pytest.raises(ValidationFailed):
        decide(item, reviewer, "reject", reason_code="nope")
    with pytest.raises(ValidationFailed) as err:
        decide(item, reviewer, "reject", reason_code="other")
    assert err.value.param == "comment"
    decided = decide(item, reviewer, "reject", reason_code="personal_data")
    assert decided.status == "rejected" and decided.released_text == "A reviewer withheld this answer."
    assert moderation_client_view(decided)["reason_code"] == "personal_data"
    assert AuditEvent.objects.filter(action="moderation.rejected", target_id=item.public_id).exists()


def test_deciding_needs_a_live_lease_and_an_expired_lease_returns_the_item(organisation, reviewer, second_reviewer):
    item = held(organisation)
    with pytest.raises(Conflict) as err:
        decide(item, reviewer)
    assert err.value.code == "lease_required"
    item_claim(organisation=organisation, reviewer=reviewer.user)
    assert item_claim(organisation=organisation, reviewer=second_reviewer.user) is None  # held by rita
    with pytest.raises(Conflict):
        item_lease_take(organisation=organisation, public_id=item.public_id, reviewer=second_reviewer.user)
    ModerationItem.objects.filter(pk=item.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Conflict):
        decide(item, reviewer)  # rita walked away
    assert item_claim(organisation=organisation, reviewer=second_reviewer.user).pk == item.pk
    item_release_lease(item=item, reviewer=second_reviewer.user)
    assert ModerationItem.objects.get(pk=item.pk).lease_owner is None


def test_only_reviewers_claim_or_decide(organisation, admin, outsider, reviewer):
    item = held(organisation)
    with pytest.raises(Forbidden):
        item_claim(organisation=organisation, reviewer=admin.user)  # an admin is not a reviewer
    with pytest.raises(Forbidden):
        item_claim(organisation=organisation, reviewer=outsider.user)
    item_claim(organisation=organisation, reviewer=reviewer.user)
    with pytest.raises(Forbidden):
        decide(item, admin, bulk=True)


def test_two_approvals_must_come_from_two_different_reviewers(organisation, reviewer, second_reviewer, owner):
    item = held(organisation, required_approvals=2)
    item_claim(organisation=organisation, reviewer=reviewer.user)
    first = decide(item, reviewer, "edit", edited_text="Call Jane.")
    assert first.status == "pending" and first.lease_owner is None
    assert moderation_client_view(first)["output"] is None
    assert AuditEvent.objects.filter(action="moderation.approval_recorded", target_id=item.public_id).exists()
    # Rita cannot approve again: the queue skips the item for her, and a forced decision is refused.
    assert item_claim(organisation=organisation, reviewer=reviewer.user) is None
    with pytest.raises(Conflict) as err:
        decide(item, reviewer, bulk=True)
    assert err.value.code == "same_reviewer"
    assert item_claim(organisation=organisation, reviewer=second_reviewer.user).pk == item.pk
    final = decide(item, second_reviewer)
    assert final.status == "approved" and final.released_text == "Call Jane." and final.edited
    event = AuditEvent.objects.get(action="moderation.released", target_id=item.public_id)
    assert event.after["reviewers"] == ["rita-reviewer", "sam-reviewer"]


def test_bulk_decides_what_nobody_else_holds(organisation, reviewer, second_reviewer):
    policy = policy_make(organisation)
    items = [held(organisation, policy) for _ in range(3)]
    item_lease_take(organisation=organisation, public_id=items[2].public_id, reviewer=second_reviewer.user)
    outcome = items_decide_bulk(
        organisation=organisation,
        public_ids=[i.public_id for i in items] + ["modr_missing"],
        reviewer=reviewer.user,
        action="reject",
        reason_code="harmful",
    )
    assert outcome.decided == [items[0].public_id, items[1].public_id]
    assert set(outcome.skipped) == {items[2].public_id, "modr_missing"}
    assert ModerationItem.objects.filter(status="rejected").count() == 2
    with pytest.raises(ValidationFailed):
        items_decide_bulk(organisation=organisation, public_ids=[], reviewer=reviewer.user, action="edit")


def test_claims_take_the_most_urgent_first_and_respect_filters(organisation, reviewer):
    from safety.moderation import QueueFilters

    low = held(organisation, priority=4)
    other_policy = policy_make(organisation, name="other")
    urgent = held(organisation, other_policy, priority=1, findings=[{"filter": "secrets", "kind": "aws_key"}])
    assert item_claim(organisation=organisation, reviewer=reviewer.user).pk == urgent.pk
    item_release_lease(item=urgent, reviewer=reviewer.user)
    assert item_claim(organisation=organisation, reviewer=reviewer.user, filters=QueueFilters(priority=4)).pk == low.pk
    item_release_lease(item=low, reviewer=reviewer.user)
    by_kind = item_claim(organisation=organisation, reviewer=reviewer.user, filters=QueueFilters(finding_kind="email"))
    assert by_kind.pk == low.pk


def test_false_positive_marks_give_per_filter_rates(organisation, reviewer):
    policy = policy_make(organisation)
    a = held(organisation, policy)
    b = held(organisation, policy)
    finding_review_set(item=a, reviewer=reviewer.user, finding_index=0, false_positive=True)
    finding_review_set(item=b, reviewer=reviewer.user, finding_index=0, false_positive=True)
    finding_review_set(item=b, reviewer=reviewer.user, finding_index=0, false_positive=False)  # changed mind
    assert false_positive_rates(policy) == {"pii": {"reviewed": 2, "false_positives": 1, "rate": 0.5}}
    with pytest.raises(ValidationFailed):
        finding_review_set(item=a, reviewer=reviewer.user, finding_index=5, false_positive=True)


def test_queue_metrics(organisation, reviewer):
    policy = policy_make(organisation)
    approved, rejected, _pending = (held(organisation, policy) for _ in range(3))
    for item, action in ((approved, "approve"), (rejected, "reject")):
        item_lease_take(organisation=organisation, public_id=item.public_id, reviewer=reviewer.user)
        decide(item, reviewer, action, reason_code="harmful")
    metrics = queue_metrics(organisation=organisation)
    assert metrics["depth"] == 1 and metrics["decided"] == 2 and metrics["oldest_age_seconds"] >= 0
    [row] = metrics["per_policy"]
    assert row["policy_name"] == "pii-hold" and row["approval_rate"] == 0.5
    [rev] = metrics["per_reviewer"]
    assert rev["reviewer_label"] == "rita-reviewer" and rev["decisions"] == 2 and rev["approval_rate"] == 0.5


def test_a_decision_is_posted_to_the_webhook_signed_without_any_text(
    organisation, reviewer, receiver, django_capture_on_commit_callbacks
):
    billing_settings_update(organisation=organisation, actor=ACTOR, webhook_url=receiver.url, webhook_secret=SECRET)
    item = held(organisation)
    item_claim(organisation=organisation, reviewer=reviewer.user)
    with django_capture_on_commit_callbacks():
        decide(item, reviewer, "edit", edited_text="Call Jane (redacted).")
    notice = ModerationNotice.objects.get(item=item)
    assert moderation_notice_deliver.run(notice.pk) == "sent"
    [delivered] = receiver.requests
    payload = webhook_verify(delivered, SECRET)
    assert payload["type"] == "moderation.decided" and payload["item"]["id"] == item.public_id
    assert payload["item"]["status"] == "approved" and payload["item"]["edited"] is True
    assert b"Jane" not in delivered["body"]
    assert moderation_notice_deliver.run(notice.pk) == "skipped"  # never twice
    assert len(receiver.requests) == 1


def test_items_past_their_deadline_escalate_once(organisation, reviewer, receiver):
    billing_settings_update(organisation=organisation, actor=ACTOR, webhook_url=receiver.url, webhook_secret=SECRET)
    late = held(organisation, priority=3, sla_seconds=60)
    on_time = held(organisation, priority=3, sla_seconds=3600)
    later = timezone.now() + timedelta(minutes=5)
    assert items_escalate(now=later) == 1
    assert items_escalate(now=later) == 0
    late.refresh_from_db()
    on_time.refresh_from_db()
    assert late.priority == 2 and late.escalated_at is not None and on_time.priority == 3
    event = AuditEvent.objects.get(action="moderation.escalated")
    assert event.target_id == late.public_id and event.before == {"priority": 3}
    notice = ModerationNotice.objects.get(item=late, kind="moderation.escalated")
    assert notice.payload["item"]["priority"] == 2 and HELD_TEXT not in str(notice.payload)


@pytest.mark.django_db(transaction=True)
def test_a_waiter_wakes_on_a_decision_from_another_thread(organisation, reviewer):
    item = held(organisation)
    item_claim(organisation=organisation, reviewer=reviewer.user)

    def decide_soon():
        time.sleep(0.3)
        decide(item, reviewer)

    thread = threading.Thread(target=decide_soon)
    started = time.monotonic()
    thread.start()
    # Two waiters: both wake, not only the first to pop the announcement.
    first, second = asyncio.run(_wait_twice(item.public_id))
    elapsed = time.monotonic() - started
    thread.join()
    assert first.status == second.status == "approved"
    assert elapsed < 2.0  # well before the 10 s timeout


async def _wait_twice(public_id):
    return await asyncio.gather(ahold_decision_wait(public_id, 10), ahold_decision_wait(public_id, 10))


@pytest.mark.django_db(transaction=True)
def test_a_waiter_gets_none_while_still_pending(organisation):
    item = held(organisation)
    started = time.monotonic()
    assert asyncio.run(ahold_decision_wait(item.public_id, 0.3)) is None
    assert time.monotonic() - started < 1.5
    assert asyncio.run(ahold_decision_wait("modr_unknown", 0)) is None


def test_escalation_emails_the_admins_when_mail_is_configured(
    organisation, admin, reviewer, settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.EMAIL_HOST = "smtp.example.com"
    admin.user.email = "alice@example.com"
    admin.user.save()
    reviewer.user.email = "rita@example.com"
    reviewer.user.save()
    late = held(organisation, sla_seconds=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert items_escalate(now=timezone.now() + timedelta(minutes=1)) == 1
    [mail] = mailoutbox
    assert mail.to == ["alice@example.com"] and late.public_id in mail.subject
    assert "jane" not in mail.body.lower()
