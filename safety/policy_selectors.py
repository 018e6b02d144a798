"""Reads for policy management: every query scoped by organisation (another tenant's rows are never found)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet

from accounts.models import Organisation
from safety.filters import filter_catalogue
from safety.models import AttachmentScope, FindingReview, ModerationItem, PolicyAttachment, SafetyPolicy, SafetySettings
from safety.policy_targets import target_choices, target_names

SCOPE_LABELS = {
    AttachmentScope.ORGANISATION: "Organisation default",
    AttachmentScope.API_KEY: "API key",
    AttachmentScope.PROMPT: "Prompt",
    AttachmentScope.ROUTE: "Model route",
}
# Most specific first, as the engine resolves them.
SCOPE_ORDER = (AttachmentScope.API_KEY, AttachmentScope.PROMPT, AttachmentScope.ROUTE, AttachmentScope.ORGANISATION)


def policies_list(*, organisation: Organisation) -> QuerySet[SafetyPolicy]:
    return SafetyPolicy.objects.filter(organisation=organisation).order_by("name")


def policy_get(*, organisation: Organisation, policy_id: int) -> SafetyPolicy:
    """Raises SafetyPolicy.DoesNotExist for an id of another organisation, like a missing one."""
    return SafetyPolicy.objects.get(organisation=organisation, pk=policy_id)


@dataclass(frozen=True)
class AttachmentView:
    id: int
    policy_id: int
    policy_name: str
    scope: str
    scope_label: str
    target_id: int
    # The key's, prompt's or route's name; "" when the target was deleted since (the attachment then never applies).
    target_name: str
    created_at: Any


def attachments_list(*, organisation: Organisation, policy: SafetyPolicy | None = None) -> list[AttachmentView]:
    """The organisation's attachments (of one policy if given), most specific scope first, with target names."""
    qs = PolicyAttachment.objects.filter(organisation=organisation).select_related("policy")
    if policy is not None:
        qs = qs.filter(policy=policy)
    rows = list(qs)
    names: dict[str, dict[int, str]] = {}
    for scope in SCOPE_ORDER:
        ids = [a.target_id for a in rows if a.scope == scope]
        if scope == AttachmentScope.ORGANISATION:
            names[scope] = {0: organisation.name}
        elif ids:
            names[scope] = target_names(organisation_id=organisation.id, scope=scope, ids=ids)
    views = [
        AttachmentView(
            id=a.id,
            policy_id=a.policy_id,
            policy_name=a.policy.name,
            scope=a.scope,
            scope_label=SCOPE_LABELS.get(a.scope, a.scope),
            target_id=a.target_id,
            target_name=names.get(a.scope, {}).get(a.target_id, ""),
            created_at=a.created_at,
        )
        for a in rows
    ]
    order = {scope: i for i, scope in enumerate(SCOPE_ORDER)}
    return sorted(views, key=lambda v: (order.get(v.scope, 9), v.target_name, v.id))


def attachment_get(*, organisation: Organisation, attachment_id: int) -> PolicyAttachment:
    return PolicyAttachment.objects.select_related("policy").get(organisation=organisation, pk=attachment_id)


def attachment_targets(*, organisation: Organisation) -> dict[str, list[tuple[int, str]]]:
    """Per scope, the targets a policy can be attached to now (id, name): the attach form's pickers."""
    return {
        scope: target_choices(organisation_id=organisation.id, scope=scope)
        for scope in SCOPE_ORDER
        if scope != AttachmentScope.ORGANISATION
    }


def target_id_by_name(*, organisation: Organisation, scope: str, name: str) -> int | None:
    for target_id, target_name in target_choices(organisation_id=organisation.id, scope=scope):
        if target_name == name:
            return target_id
    return None


def filter_catalogue_public() -> list[dict[str, Any]]:
    """Every built-in filter with what the policy editor shows (h-filters' `filter_catalogue`), by name."""
    return sorted(filter_catalogue(), key=lambda entry: entry["name"])


def policy_false_positive_rates(*, policy: SafetyPolicy) -> list[dict[str, Any]]:
    """Per filter: findings reviewers judged on this policy's held items, how many were false
    positives, and their share (None before any review)."""
    rows = (
        FindingReview.objects.filter(item__policy=policy, item__organisation_id=policy.organisation_id)
        .values("filter_name")
        .annotate(reviews=Count("id"), false_positives=Count("id", filter=Q(false_positive=True)))
        .order_by("filter_name")
    )
    by_filter = {r["filter_name"]: r for r in rows}
    names = [entry.get("filter") for entry in policy.filters if isinstance(entry, dict)]
    # Filters the policy runs come first (reviewed or not), then filters it no longer runs.
    ordered = list(dict.fromkeys([*names, *sorted(by_filter)]))
    result = []
    for name in ordered:
        row = by_filter.get(name, {"reviews": 0, "false_positives": 0})
        reviews, fps = row["reviews"], row["false_positives"]
        result.append(
            {
                "filter": name,
                "reviews": reviews,
                "false_positives": fps,
                "rate": round(fps / reviews, 4) if reviews else None,
            }
        )
    return result


def policy_recent_holds(*, policy: SafetyPolicy, limit: int = 20) -> list[dict[str, Any]]:
    """The policy's most recent moderation items, without their held text (admins and prompt
    engineers see this page; only reviewers may read a held output)."""
    items = ModerationItem.objects.filter(policy=policy, organisation_id=policy.organisation_id).order_by(
        "-created_at"
    )[:limit]
    return [
        {
            "public_id": item.public_id,
            "status": item.status,
            "direction": item.direction,
            "model": item.model,
            "created_at": item.created_at,
            "kinds": sorted({str(f.get("kind", "")) for f in item.findings if isinstance(f, dict)}),
        }
        for item in items
    ]


def safety_settings_get(*, organisation: Organisation) -> SafetySettings:
    """The organisation's settings; an unsaved row with the defaults when none was stored."""
    found = SafetySettings.objects.filter(organisation=organisation).first()
    return found or SafetySettings(organisation=organisation)
