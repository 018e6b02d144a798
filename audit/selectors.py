from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from audit.models import AuditEvent, AuditVerification


@dataclass(frozen=True)
class AuditEventFilters:
    """Filters shared by the audit page, its JSON Lines export and the API. Empty values do not filter."""

    actor: str = ""
    action: str = ""
    target_type: str = ""
    target_id: str = ""
    date_from: date | None = None
    date_to: date | None = None


def _day_start(day: date, tz) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), tz)


def audit_events_list(*, organisation, filters: AuditEventFilters | None = None) -> QuerySet[AuditEvent]:
    """The organisation's events, newest first. `actor` matches the actor's id exactly or its label
    (user name, key prefix, system label) case-insensitively; dates are whole days, both inclusive,
    in the organisation's time zone."""
    filters = filters or AuditEventFilters()
    qs = AuditEvent.objects.filter(organisation=organisation)
    if filters.actor:
        qs = qs.filter(Q(actor_id=filters.actor) | Q(actor_label__iexact=filters.actor))
    if filters.action:
        qs = qs.filter(action=filters.action)
    if filters.target_type:
        qs = qs.filter(target_type=filters.target_type)
    if filters.target_id:
        qs = qs.filter(target_id=filters.target_id)
    tz = _organisation_tz(organisation)
    if filters.date_from:
        qs = qs.filter(created_at__gte=_day_start(filters.date_from, tz))
    if filters.date_to:
        qs = qs.filter(created_at__lt=_day_start(filters.date_to + timedelta(days=1), tz))
    return qs.order_by("-seq")


def _organisation_tz(organisation):
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(organisation.time_zone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def audit_event_public(event: AuditEvent) -> dict:
    """One event as exported (JSON Lines) and served by the API, hashes included for offline checks."""
    return {
        "id": event.id,
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def audit_target_types(*, organisation) -> list[str]:
    return list(
        AuditEvent.objects.filter(organisation=organisation)
        .order_by("target_type")
        .values_list("target_type", flat=True)
        .distinct()
    )


def audit_verifications_list(*, organisation, limit: int = 5) -> list[AuditVerification]:
    return list(AuditVerification.objects.select_related("requested_by").filter(organisation=organisation)[:limit])


def audit_verification_get(*, organisation, verification_id: int) -> AuditVerification:
    return AuditVerification.objects.select_related("requested_by").get(organisation=organisation, pk=verification_id)
