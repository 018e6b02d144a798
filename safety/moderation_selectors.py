"""Reads of the moderation queue: the reviewers' list, queue metrics and false-positive rates.

Nothing here returns the held text; the item page reads it from the item itself, behind the
reviewer role.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Avg, Count, F, Min, Q
from django.utils import timezone

from accounts.models import Organisation
from safety.models import DecisionAction, FindingReview, ModerationDecision, ModerationItem, ModerationStatus


def queue_items(*, organisation: Organisation, filters=None, status: str = ModerationStatus.PENDING):
    """Pending items of the organisation, most urgent first, without the held text loaded."""
    from safety.moderation import queue_filter

    qs = (
        ModerationItem.objects.filter(organisation=organisation, status=status)
        .select_related("lease_owner")
        .defer("held_text", "response", "context_messages", "released_text")
        .order_by("priority", "created_at")
    )
    return queue_filter(qs, filters)


def finding_kinds(*, organisation: Organisation) -> list[str]:
    """The finding kinds present in pending items (the queue's filter choices)."""
    kinds: set[str] = set()
    rows = ModerationItem.objects.filter(organisation=organisation, status=ModerationStatus.PENDING).values_list(
        "findings", flat=True
    )[:2000]
    for findings in rows:
        for finding in findings or []:
            if isinstance(finding, dict) and finding.get("kind"):
                kinds.add(str(finding["kind"]))
    return sorted(kinds)


def false_positive_rates(policy) -> dict[str, dict]:
    """Per filter of `policy`: findings reviewers marked, how many as false positives, the rate."""
    rows = (
        FindingReview.objects.filter(item__policy=policy)
        .values("filter_name")
        .annotate(reviewed=Count("id"), false_positives=Count("id", filter=Q(false_positive=True)))
        .order_by("filter_name")
    )
    return {
        row["filter_name"]: {
            "reviewed": row["reviewed"],
            "false_positives": row["false_positives"],
            "rate": row["false_positives"] / row["reviewed"] if row["reviewed"] else 0.0,
        }
        for row in rows
    }


def queue_summary(*, organisation: Organisation, now: datetime | None = None) -> dict:
    """The pending queue's depth, how many are past their deadline and the oldest one's age in
    seconds (None when empty): one aggregate over the (organisation, status, ...) index."""
    now = now or timezone.now()
    head = ModerationItem.objects.filter(organisation=organisation, status=ModerationStatus.PENDING).aggregate(
        depth=Count("id"), oldest=Min("created_at"), overdue=Count("id", filter=Q(deadline__lt=now))
    )
    return {
        "depth": head["depth"],
        "overdue": head["overdue"],
        "oldest_age_seconds": (now - head["oldest"]).total_seconds() if head["oldest"] else None,
    }


def queue_metrics(*, organisation: Organisation, days: int = 7) -> dict:
    """Depth, oldest pending age, mean time to decision and approval rates per policy and reviewer
    over the last `days` days (the queue page's numbers)."""
    now = timezone.now()
    head = queue_summary(organisation=organisation, now=now)
    since = now - timedelta(days=days)
    decided = ModerationItem.objects.filter(
        organisation=organisation,
        decided_at__gte=since,
        status__in=[ModerationStatus.APPROVED, ModerationStatus.REJECTED],
    )
    overall = decided.aggregate(n=Count("id"), mean=Avg(F("decided_at") - F("created_at")))
    per_policy = list(
        decided.values("policy_name")
        .annotate(
            decided=Count("id"),
            approved=Count("id", filter=Q(status=ModerationStatus.APPROVED)),
            mean=Avg(F("decided_at") - F("created_at")),
        )
        .order_by("policy_name")
    )
    per_reviewer = list(
        ModerationDecision.objects.filter(item__organisation=organisation, created_at__gte=since)
        .values("reviewer_label")
        .annotate(
            decisions=Count("id"),
            approvals=Count("id", filter=Q(action__in=[DecisionAction.APPROVE, DecisionAction.EDIT])),
        )
        .order_by("reviewer_label")
    )
    for row in per_policy:
        row["approval_rate"] = row["approved"] / row["decided"] if row["decided"] else None
        row["mean_seconds"] = row.pop("mean").total_seconds() if row.get("mean") is not None else None
    for row in per_reviewer:
        row["approval_rate"] = row["approvals"] / row["decisions"] if row["decisions"] else None
    return {
        **head,
        "decided": overall["n"],
        "mean_decision_seconds": overall["mean"].total_seconds() if overall["mean"] is not None else None,
        "per_policy": per_policy,
        "per_reviewer": per_reviewer,
        "days": days,
    }
