from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db.models import CharField, Exists, OuterRef, Q, QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit.models import AuditEvent, AuditVerification


@dataclass(frozen=True)
class AuditEventFilters:
    """Filters shared by the audit page, its JSON Lines export and the API. Empty values do not filter."""

    actor: str = ""
    action: str = ""
    target_type: str = ""
    target_id: str = ""
    # A target's id, or part of the name its events record (see `target_name_expression`).
    target: str = ""
    date_from: date | None = None
    date_to: date | None = None


# Where events record the name of what they changed, most specific first. Events carry plain values
# (the trail outlives its targets), so a target is found by the name it had when it was audited.
TARGET_NAME_KEYS = ("name", "username", "email", "prompt", "model", "budget", "title")


def target_name_expression():
    """An event's target name as its before/after JSON records it (after first), or NULL."""
    parts = [KT(f"{side}__{key}") for key in TARGET_NAME_KEYS for side in ("after", "before")]
    return Coalesce(*parts, output_field=CharField())


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
    if filters.target:
        # Every event of a target one of whose events names it so, or whose id it is.
        named = (
            AuditEvent.objects.filter(
                organisation=organisation, target_type=OuterRef("target_type"), target_id=OuterRef("target_id")
            )
            .annotate(target_name=target_name_expression())
            .filter(target_name__icontains=filters.target)
        )
        qs = qs.filter(Q(target_id=filters.target) | Exists(named))
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


def audit_target_names(*, organisation, target_type: str = "", limit: int = 500) -> list[str]:
    """The names the organisation's events record for their targets (of one type, if given), sorted:
    what the audit page's target search suggests."""
    qs = AuditEvent.objects.filter(organisation=organisation)
    if target_type:
        qs = qs.filter(target_type=target_type)
    names = (
        qs.annotate(target_name=target_name_expression())
        .filter(target_name__isnull=False)
        .exclude(target_name="")
        .order_by("target_name")
        .values_list("target_name", flat=True)
        .distinct()
    )
    return list(names[:limit])


_ABSENT = object()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON object as dotted paths to its leaves (lists are leaves: compared whole)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def json_text(value: Any, *, indent: int | None = None) -> str:
    """A stored value written as JSON (true, null, "text"), never as a Python literal."""
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True, default=str)


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: str | None  # JSON text; None when the field was absent
    after: str | None


@dataclass(frozen=True)
class AuditChange:
    """How the audit page shows an event's before/after: the fields that differ when both sides are
    objects (`changed`, else None), and each side in full as indented JSON."""

    changed: list[FieldChange] | None
    before: str | None
    after: str | None


def audit_event_change(event: AuditEvent) -> AuditChange:
    before, after = event.before, event.after
    changed = None
    if isinstance(before, dict) and isinstance(after, dict):
        old, new = _flatten(before), _flatten(after)
        changed = [
            FieldChange(
                field=key or "(value)",
                before=None if old.get(key, _ABSENT) is _ABSENT else json_text(old[key]),
                after=None if new.get(key, _ABSENT) is _ABSENT else json_text(new[key]),
            )
            for key in sorted(old.keys() | new.keys())
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)
        ]
    return AuditChange(
        changed=changed,
        before=None if before is None else json_text(before, indent=2),
        after=None if after is None else json_text(after, indent=2),
    )


def audit_verifications_list(*, organisation, limit: int = 5) -> list[AuditVerification]:
    return list(AuditVerification.objects.select_related("requested_by").filter(organisation=organisation)[:limit])


def audit_verification_get(*, organisation, verification_id: int) -> AuditVerification:
    return AuditVerification.objects.select_related("requested_by").get(organisation=organisation, pk=verification_id)
