"""Notices about moderation items: signed webhooks (billing.webhooks) and escalation of items past
their deadline.

A notice is a row (`ModerationNotice`) written in the transaction of the change it reports, and
delivered by a Celery task after commit, so a decision is never announced without having
happened, and a delivery is retried and never sent twice. Payloads carry ids, status and reason,
never the held or released text: the receiver need not be a reviewer.
"""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Membership
from accounts.roles import Role
from audit.actions import Action
from audit.services import audit_event_record
from billing.webhooks import organisation_webhook_configured, organisation_webhook_post
from core.actors import Actor
from safety.models import ModerationItem, ModerationNotice, ModerationStatus, NoticeKind

logger = logging.getLogger(__name__)
ESCALATE_BATCH = 500


def _payload(item: ModerationItem, kind: str) -> dict:
    return {
        "type": kind,
        "organisation_id": item.organisation_id,
        "item": {
            "id": item.public_id,
            "request_id": item.request_id,
            "policy": item.policy_name,
            "status": item.status,
            "priority": item.priority,
            "edited": item.edited,
            "reason_code": item.reason_code or None,
            "created": item.created_at.isoformat(),
            "deadline": item.deadline.isoformat(),
            "decided": item.decided_at.isoformat() if item.decided_at else None,
        },
    }


def notice_queue(*, item: ModerationItem, kind: str) -> ModerationNotice | None:
    """Inside the caller's transaction: record the notice and deliver it after commit (only when the
    organisation has a webhook)."""
    if not organisation_webhook_configured(organisation_id=item.organisation_id):
        return None
    notice = ModerationNotice.objects.create(
        organisation_id=item.organisation_id, item=item, kind=kind, payload=_payload(item, kind)
    )
    from safety.tasks import moderation_notice_deliver

    transaction.on_commit(lambda: moderation_notice_deliver.delay(notice.pk))
    return notice


def notice_send(*, notice_id: int) -> str:
    """POST one notice, signed. Idempotent: a notice marked sent is skipped; the attempt is counted
    before the HTTP call (outside any transaction). Raises billing's WebhookTransientError to retry."""
    with transaction.atomic():
        notice = ModerationNotice.objects.select_for_update().filter(pk=notice_id).first()
        if notice is None or notice.webhook_status == "sent":
            return "skipped"
        ModerationNotice.objects.filter(pk=notice.pk).update(webhook_attempts=F("webhook_attempts") + 1)
    body = json.dumps({"id": f"moderation-notice-{notice.pk}", **notice.payload}, separators=(",", ":")).encode()
    outcome = organisation_webhook_post(
        organisation_id=notice.organisation_id, body=body, what=f"moderation notice {notice.pk}"
    )
    ModerationNotice.objects.filter(pk=notice.pk).update(webhook_status=outcome)
    return outcome


def notice_failed(*, notice_id: int) -> None:
    ModerationNotice.objects.filter(pk=notice_id).exclude(webhook_status="sent").update(webhook_status="failed")


def items_escalate(*, now=None) -> int:
    """Raise the priority of pending items past their deadline (one step, at most to 1) and notify
    the organisation's admins: an audit event, a webhook notice and, when mail is configured, an
    email. Once per item: the conditional update on `escalated_at` claims it, so overlapping runs
    escalate each item once. Returns how many items were escalated."""
    now = now or timezone.now()
    due = list(
        ModerationItem.objects.filter(status=ModerationStatus.PENDING, deadline__lt=now, escalated_at__isnull=True)
        .order_by("deadline")
        .values_list("pk", flat=True)[:ESCALATE_BATCH]
    )
    escalated = 0
    for pk in due:
        with transaction.atomic():
            claimed = ModerationItem.objects.filter(
                pk=pk, status=ModerationStatus.PENDING, escalated_at__isnull=True
            ).update(escalated_at=now)
            if not claimed:
                continue
            item = ModerationItem.objects.get(pk=pk)
            before = item.priority
            item.priority = max(1, before - 1)
            ModerationItem.objects.filter(pk=pk).update(priority=item.priority)
            audit_event_record(
                organisation_id=item.organisation_id,
                actor=Actor.system("moderation escalation"),
                action=Action.MODERATION_ESCALATED,
                target_type="moderation_item",
                target_id=item.public_id,
                before={"priority": before},
                after={"priority": item.priority, "deadline": item.deadline.isoformat(), "policy": item.policy_name},
            )
            notice_queue(item=item, kind=NoticeKind.ESCALATED)
            transaction.on_commit(lambda item=item: _admins_email(item))
        escalated += 1
    return escalated


def _admins_email(item: ModerationItem) -> None:
    if not settings.EMAIL_HOST:
        return
    emails = [
        m.user.email
        for m in Membership.objects.filter(organisation_id=item.organisation_id).select_related("user")
        if Role.ADMIN.value in m.roles and m.user.email
    ]
    if not emails:
        return
    try:
        send_mail(
            subject=f"Moderation item {item.public_id} is past its deadline",
            message=(
                f"The held item {item.public_id} (policy {item.policy_name}) passed its review deadline "
                f"{item.deadline:%Y-%m-%d %H:%M} UTC and now has priority {item.priority}.\n"
                f"{settings.STEWARD_PUBLIC_URL}/moderation/items/{item.public_id}/"
            ),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=emails,
        )
    except Exception:
        logger.exception("could not email the admins about %s", item.public_id)
