"""Writes for stored safety policies, their attachments and the organisation's safety settings.

Every service validates (`policy_validate`), writes its audit event in the same transaction, and
schedules `invalidate("safety_policies")` on commit, so the engine's resolution cache in every
process drops the old policy within the invalidation bound (< 2 s). A filter entry that fails open
(`on_error: "allow"`) is named in the audit event's `fail_open` list, so that choice is on record.

Attachment targets (API keys, prompts, model routes) must exist in the policy's own organisation;
prompts and routes are looked up through providers the proxy registers (`safety.policy_targets`).
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import Organisation
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import Conflict, NotFound, ValidationFailed
from core.invalidation import invalidate
from safety.models import AttachmentScope, PolicyAttachment, SafetyPolicy, SafetySettings
from safety.policy_targets import target_names, target_provider
from safety.policy_validation import (
    FIELDS,
    PolicyInvalid,
    fail_open_entries,
    policy_validate,
)

POLICIES_NAMESPACE = "safety_policies"

__all__ = [
    "POLICIES_NAMESPACE",
    "PolicyInvalid",
    "policy_attach",
    "policy_create",
    "policy_delete",
    "policy_detach",
    "policy_public",
    "policy_update",
    "policy_validate",
    "safety_settings_update",
]


def policy_public(policy: SafetyPolicy) -> dict[str, Any]:
    """The policy as the API and the audit trail show it."""
    return {"id": policy.id, **{field: getattr(policy, field) for field in FIELDS}}


def _require_redacted(organisation_id: int) -> bool:
    return SafetySettings.objects.filter(organisation_id=organisation_id, require_redacted_logging=True).exists()


def _audit_after(policy: SafetyPolicy) -> dict[str, Any]:
    # Fail-open is the one choice that lets unchecked text through; it is spelled out, not left to a diff.
    return {**policy_public(policy), "fail_open": fail_open_entries(policy.filters)}


def policy_create(*, organisation: Organisation, actor: Actor, **fields: Any) -> SafetyPolicy:
    """Create a policy. Raises PolicyInvalid (every broken rule, by field) or Conflict (name taken)."""
    if "name" not in fields:
        raise PolicyInvalid({"name": ["name is required"]})
    with transaction.atomic():
        cleaned = policy_validate(fields, require_redacted_logging=_require_redacted(organisation.id))
        if SafetyPolicy.objects.filter(organisation=organisation, name=cleaned["name"]).exists():
            raise Conflict(f"A policy named {cleaned['name']!r} already exists", param="name")
        policy = SafetyPolicy(organisation=organisation, **cleaned)
        try:
            with transaction.atomic():
                policy.save()
        except IntegrityError as exc:
            raise Conflict(f"A policy named {cleaned['name']!r} already exists", param="name") from exc
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.POLICY_CREATED,
            target_type="safety_policy",
            target_id=policy.id,
            after=_audit_after(policy),
        )
        invalidate(POLICIES_NAMESPACE)
    return policy


def policy_update(*, policy: SafetyPolicy, actor: Actor, **fields: Any) -> SafetyPolicy:
    """Change the given fields (omitted ones stay); the whole result is validated again."""
    with transaction.atomic():
        policy = SafetyPolicy.objects.select_for_update().get(pk=policy.pk)
        before = policy_public(policy)
        current = {field: before[field] for field in FIELDS}
        cleaned = policy_validate(
            {**current, **fields}, require_redacted_logging=_require_redacted(policy.organisation_id)
        )
        renamed = cleaned["name"] != policy.name
        if (
            renamed
            and SafetyPolicy.objects.filter(organisation_id=policy.organisation_id, name=cleaned["name"]).exists()
        ):
            raise Conflict(f"A policy named {cleaned['name']!r} already exists", param="name")
        for field, value in cleaned.items():
            setattr(policy, field, value)
        if policy_public(policy) == before:
            return policy
        policy.save()
        after = _audit_after(policy)
        after["fail_open_changed"] = fail_open_entries(before["filters"]) != after["fail_open"]
        audit_event_record(
            organisation_id=policy.organisation_id,
            actor=actor,
            action=Action.POLICY_CHANGED,
            target_type="safety_policy",
            target_id=policy.id,
            before=before,
            after=after,
        )
        invalidate(POLICIES_NAMESPACE)
    return policy


def policy_delete(*, policy: SafetyPolicy, actor: Actor) -> None:
    """Delete a policy and its attachments (targets fall back to the next most specific policy).
    Moderation items it held keep their `policy_name`."""
    with transaction.atomic():
        policy = SafetyPolicy.objects.select_for_update().get(pk=policy.pk)
        before = {
            **policy_public(policy),
            "attachments": [
                {"scope": a.scope, "target_id": a.target_id} for a in policy.attachments.order_by("scope", "target_id")
            ],
        }
        policy_id, organisation_id = policy.id, policy.organisation_id
        policy.delete()
        audit_event_record(
            organisation_id=organisation_id,
            actor=actor,
            action=Action.POLICY_DELETED,
            target_type="safety_policy",
            target_id=policy_id,
            before=before,
        )
        invalidate(POLICIES_NAMESPACE)


def _target_check(*, organisation: Organisation, scope: str, target_id: Any) -> tuple[int, str]:
    """(target_id, name) of an existing target in this organisation; ValidationFailed otherwise."""
    if scope not in AttachmentScope.values:
        raise ValidationFailed(f"scope must be one of {', '.join(AttachmentScope.values)}", param="scope")
    if scope == AttachmentScope.ORGANISATION:
        if target_id not in (None, 0):
            raise ValidationFailed("an organisation attachment has no target (target_id 0)", param="target_id")
        return 0, organisation.name
    if isinstance(target_id, bool) or not isinstance(target_id, int):
        raise ValidationFailed(f"target_id must name a {scope.replace('_', ' ')}", param="target_id")
    if target_provider(scope) is None:
        raise ValidationFailed(f"policies cannot attach to a {scope} in this installation", param="scope")
    names = target_names(organisation_id=organisation.id, scope=scope, ids=[target_id])
    if target_id not in names:
        # Another organisation's key, prompt or route is reported exactly like a missing one.
        raise ValidationFailed(f"no {scope.replace('_', ' ')} {target_id} in this organisation", param="target_id")
    return target_id, names[target_id]


def policy_attach(
    *, organisation: Organisation, policy: SafetyPolicy, scope: str, target_id: int | None, actor: Actor
) -> PolicyAttachment:
    """Make `policy` the one that applies to the target (replacing the policy attached there before).

    The target must exist in `organisation`, and so must the policy (NotFound otherwise)."""
    if policy.organisation_id != organisation.id:
        raise NotFound("No such policy")
    target_id, target_name = _target_check(organisation=organisation, scope=scope, target_id=target_id)
    with transaction.atomic():
        existing = (
            PolicyAttachment.objects.select_for_update()
            .select_related("policy")
            .filter(organisation=organisation, scope=scope, target_id=target_id)
            .first()
        )
        before = None
        if existing is not None:
            if existing.policy_id == policy.id:
                return existing
            before = {"policy_id": existing.policy_id, "policy": existing.policy.name}
            existing.policy = policy
            existing.save(update_fields=["policy", "updated_at"])
            attachment = existing
        else:
            attachment = PolicyAttachment.objects.create(
                organisation=organisation, policy=policy, scope=scope, target_id=target_id
            )
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.POLICY_ATTACHED,
            target_type="safety_policy",
            target_id=policy.id,
            before=before,
            after={
                "policy": policy.name,
                "scope": scope,
                "target_id": target_id,
                "target": target_name,
                "fail_open": fail_open_entries(policy.filters),
            },
        )
        invalidate(POLICIES_NAMESPACE)
    return attachment


def policy_detach(*, attachment: PolicyAttachment, actor: Actor) -> None:
    """Remove one attachment; its target falls back to the next most specific policy (or none)."""
    with transaction.atomic():
        attachment = PolicyAttachment.objects.select_related("policy").select_for_update().get(pk=attachment.pk)
        audit_event_record(
            organisation_id=attachment.organisation_id,
            actor=actor,
            action=Action.POLICY_DETACHED,
            target_type="safety_policy",
            target_id=attachment.policy_id,
            before={"policy": attachment.policy.name, "scope": attachment.scope, "target_id": attachment.target_id},
        )
        attachment.delete()
        invalidate(POLICIES_NAMESPACE)


def safety_settings_update(
    *, organisation: Organisation, actor: Actor, require_redacted_logging: bool
) -> SafetySettings:
    """Switch the organisation's requirement of redacted logging. Turning it on also turns
    `store_redacted_only` on in every policy that had it off (listed in the audit event)."""
    if not isinstance(require_redacted_logging, bool):
        raise ValidationFailed("require_redacted_logging must be true or false", param="require_redacted_logging")
    with transaction.atomic():
        settings, _ = SafetySettings.objects.select_for_update().get_or_create(organisation=organisation)
        if settings.require_redacted_logging == require_redacted_logging:
            return settings
        changed: list[str] = []
        if require_redacted_logging:
            policies = SafetyPolicy.objects.select_for_update().filter(
                organisation=organisation, store_redacted_only=False
            )
            changed = sorted(policies.values_list("name", flat=True))
            policies.update(store_redacted_only=True)
        settings.require_redacted_logging = require_redacted_logging
        settings.save()
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.SAFETY_SETTINGS_CHANGED,
            target_type="safety_settings",
            target_id=organisation.id,
            before={"require_redacted_logging": not require_redacted_logging},
            after={"require_redacted_logging": require_redacted_logging, "policies_now_redacted": changed},
        )
        invalidate(POLICIES_NAMESPACE)
    return settings
