"""Writes to the prompt registry. Every change is audited in its own transaction and invalidates the
in-process resolve caches of every process (core.invalidation, namespace "registry")."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import Organisation, Team
from accounts.roles import Role
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor, ActorType
from core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from core.invalidation import invalidate
from registry.content import label_validate, name_validate, version_content_validate
from registry.gates import gate_provider
from registry.models import (
    GateStatus,
    Label,
    LabelMove,
    PromotionRequest,
    PromotionStatus,
    Prompt,
    PromptVersion,
)
from registry.rendering import version_render_check

REGISTRY_NAMESPACE = "registry"
WRITER_ROLES = (Role.PROMPT_ENGINEER, Role.ADMIN)
MAX_TAGS = 20


def _is_system(actor: Actor) -> bool:
    return actor.type == ActorType.SYSTEM


def _require_role(*, actor: Actor, roles: Iterable[str] | None, allowed: Iterable[str], doing: str) -> None:
    if _is_system(actor):
        return
    if not set(roles or ()) & {str(r) for r in allowed}:
        needed = " or ".join(str(r) for r in allowed)
        raise Forbidden(f"{doing} needs the {needed} role.", code="role_required")


def _user_id(actor: Actor) -> int | None:
    return int(actor.id) if actor.type == ActorType.USER and actor.id.isdigit() else None


def _tags_clean(tags) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [t for t in (s.strip() for s in tags.split(",")) if t]
    if not isinstance(tags, list | tuple) or len(tags) > MAX_TAGS:
        raise ValidationFailed(f"tags must be a list of at most {MAX_TAGS} short words.", param="tags")
    clean = []
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > 50:
            raise ValidationFailed("Each tag must be text of 1-50 characters.", param="tags")
        if tag.strip().lower() not in clean:
            clean.append(tag.strip().lower())
    return clean


def _labels_clean(labels) -> list[str]:
    if not labels:
        return []
    if not isinstance(labels, list | tuple):
        raise ValidationFailed("protected_labels must be a list of label names.", param="protected_labels")
    return sorted({label_validate(label) for label in labels})


@transaction.atomic
def prompt_create(
    *,
    organisation: Organisation,
    name: str,
    actor: Actor,
    roles: Iterable[str] | None = None,
    description: str = "",
    tags: Iterable[str] | None = None,
    owner_team: Team | None = None,
    protected_labels: Iterable[str] | None = None,
) -> Prompt:
    """Create an empty prompt (no versions yet). Raises Conflict if the name is taken in the organisation."""
    _require_role(actor=actor, roles=roles, allowed=WRITER_ROLES, doing="Creating a prompt")
    name_validate(name)
    if owner_team is not None and owner_team.organisation_id != organisation.id:
        raise NotFound("No such team.", param="owner_team")
    if not isinstance(description, str) or len(description) > 5000:
        raise ValidationFailed("description must be text up to 5000 characters.", param="description")
    prompt = Prompt(
        organisation=organisation,
        name=name,
        description=description,
        tags=_tags_clean(list(tags) if tags is not None and not isinstance(tags, str) else tags),
        owner_team=owner_team,
        protected_labels=_labels_clean(list(protected_labels or [])),
    )
    try:
        with transaction.atomic():
            prompt.save()
    except IntegrityError as exc:
        raise Conflict(f"A prompt named {name!r} already exists.", code="prompt_exists", param="name") from exc
    audit_event_record(
        organisation_id=organisation.id,
        actor=actor,
        action=Action.PROMPT_CREATED,
        target_type="prompt",
        target_id=prompt.id,
        after={
            "name": prompt.name,
            "description": prompt.description,
            "tags": prompt.tags,
            "protected_labels": prompt.protected_labels,
        },
    )
    # A resolve that failed with prompt_not_found may be cached.
    invalidate(REGISTRY_NAMESPACE)
    return prompt


def _archived_set(*, prompt: Prompt, archived: bool, actor: Actor, roles: Iterable[str] | None) -> Prompt:
    _require_role(
        actor=actor,
        roles=roles,
        allowed=WRITER_ROLES,
        doing="Archiving a prompt" if archived else "Unarchiving a prompt",
    )
    locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
    if locked.is_archived == archived:
        # Idempotent (a retried request or a double click): nothing changes, nothing is audited.
        prompt.archived_at, prompt.archived_by_label = locked.archived_at, locked.archived_by_label
        return locked
    before = {"archived_at": locked.archived_at.isoformat() if locked.archived_at else None}
    locked.archived_at = timezone.now() if archived else None
    locked.archived_by_label = actor.label[:200] if archived else ""
    locked.save(update_fields=["archived_at", "archived_by_label", "updated_at"])
    audit_event_record(
        organisation_id=locked.organisation_id,
        actor=actor,
        action=Action.PROMPT_ARCHIVED if archived else Action.PROMPT_UNARCHIVED,
        target_type="prompt",
        target_id=locked.id,
        before=before,
        after={"name": locked.name, "archived_at": locked.archived_at.isoformat() if locked.archived_at else None},
    )
    # Resolution ignores the archive flag (pinned versions and labels keep working), but anything that
    # caches registry reads must not serve the prompt's old state.
    invalidate(REGISTRY_NAMESPACE)
    prompt.archived_at, prompt.archived_by_label = locked.archived_at, locked.archived_by_label
    return locked


@transaction.atomic
def prompt_archive(*, prompt: Prompt, actor: Actor, roles: Iterable[str] | None = None) -> Prompt:
    """Archive `prompt`: hidden from the prompt list, pickers and the API list (unless asked for), while the
    proxy keeps resolving it by version and by label, so production traffic does not break. Versions,
    labels and history stay. Admin or prompt engineer. Audited; archiving an archived prompt changes nothing."""
    return _archived_set(prompt=prompt, archived=True, actor=actor, roles=roles)


@transaction.atomic
def prompt_unarchive(*, prompt: Prompt, actor: Actor, roles: Iterable[str] | None = None) -> Prompt:
    """Bring an archived prompt back into lists and pickers. Admin or prompt engineer. Audited;
    unarchiving a prompt that is not archived changes nothing."""
    return _archived_set(prompt=prompt, archived=False, actor=actor, roles=roles)


@transaction.atomic
def prompt_version_create(
    *,
    prompt: Prompt,
    messages,
    model: str | None,
    params: dict | None,
    variables: list | None,
    commit_message: str,
    actor: Actor,
    roles: Iterable[str] | None = None,
    created_at: datetime | None = None,
    author_label: str | None = None,
) -> PromptVersion:
    """Validate and store the next immutable version of `prompt`.

    Numbers are consecutive per prompt: the prompt row is locked while the number is taken, so
    concurrent writers each get their own number. Refused (nothing stored) when the content is
    invalid or equal to the latest version's. Audited; invalidates resolve caches on commit.
    """
    _require_role(actor=actor, roles=roles, allowed=WRITER_ROLES, doing="Saving a version")
    content = version_content_validate(messages=messages, model=model, params=params, variables=variables)
    if not isinstance(commit_message, str) or len(commit_message) > 500:
        raise ValidationFailed("commit_message must be text up to 500 characters.", param="commit_message")
    # A version that cannot render within the bounds is refused now, not at its first request;
    # before the lock, since a test render may take up to STEWARD_RENDER_TIME_LIMIT_MS.
    version_render_check(messages=content.messages, variables=content.variables)
    locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
    content_hash = content.content_hash
    latest = PromptVersion.objects.filter(prompt=locked, number=locked.latest_number).first()
    if latest is not None and latest.content_hash == content_hash:
        raise Conflict(
            f"Nothing changed: this content equals the latest version (v{latest.number}).",
            code="version_unchanged",
        )
    version = PromptVersion.objects.create(
        prompt=locked,
        number=locked.latest_number + 1,
        messages=content.messages,
        model=content.model,
        params=content.params,
        variables=content.variables,
        content_hash=content_hash,
        commit_message=commit_message.strip(),
        author_id=_user_id(actor),
        author_label=(author_label if author_label is not None else actor.label)[:200],
        created_at=created_at or timezone.now(),
    )
    locked.latest_number = version.number
    locked.save(update_fields=["latest_number", "updated_at"])
    prompt.latest_number = version.number
    audit_event_record(
        organisation_id=locked.organisation_id,
        actor=actor,
        action=Action.PROMPT_VERSION_CREATED,
        target_type="prompt_version",
        target_id=version.id,
        after={"prompt": locked.name, "number": version.number, "hash": content_hash, "message": commit_message},
    )
    invalidate(REGISTRY_NAMESPACE)
    return version


def _label_set(
    *,
    prompt: Prompt,
    label: str,
    version: PromptVersion,
    actor: Actor,
    reason: str,
    promotion: PromotionRequest | None = None,
) -> LabelMove:
    """Point `label` at `version` (prompt row already locked by the caller), record history, audit, invalidate."""
    current = Label.objects.filter(prompt=prompt, name=label).first()
    from_version_id = current.version_id if current else None
    if current is not None and current.version_id == version.id:
        raise Conflict(f"Label {label!r} already points at v{version.number}.", code="label_unchanged")
    now = timezone.now()
    if current is None:
        Label.objects.create(prompt=prompt, name=label, version=version, updated_at=now)
    else:
        current.version = version
        current.updated_at = now
        current.save(update_fields=["version", "updated_at"])
    move = LabelMove.objects.create(
        prompt=prompt,
        label=label,
        from_version_id=from_version_id,
        to_version=version,
        actor_type=actor.type,
        actor_id=actor.id,
        actor_label=actor.label[:200],
        reason=reason,
        promotion_request=promotion,
        created_at=now,
    )
    from_number = PromptVersion.objects.filter(pk=from_version_id).values_list("number", flat=True).first()
    audit_event_record(
        organisation_id=prompt.organisation_id,
        actor=actor,
        action=Action.LABEL_MOVED,
        target_type="label",
        target_id=f"{prompt.name}:{label}",
        before={"version": from_number},
        after={"version": version.number, "reason": reason, "promotion_request": promotion.id if promotion else None},
    )
    invalidate(REGISTRY_NAMESPACE)
    return move


def _version_of(prompt: Prompt, version: PromptVersion | int) -> PromptVersion:
    if isinstance(version, PromptVersion):
        if version.prompt_id != prompt.id:
            raise NotFound("That version belongs to another prompt.", code="version_not_found", param="version")
        return version
    found = PromptVersion.objects.filter(prompt=prompt, number=version).first()
    if found is None:
        raise NotFound(f"Prompt {prompt.name!r} has no version {version}.", code="version_not_found", param="version")
    return found


def _reason_clean(reason) -> str:
    if not isinstance(reason, str) or len(reason) > 2000:
        raise ValidationFailed("reason must be text up to 2000 characters.", param="reason")
    return reason.strip()


@transaction.atomic
def label_move(
    *,
    prompt: Prompt,
    label: str,
    version: PromptVersion | int,
    reason: str,
    actor: Actor,
    roles: Iterable[str] | None = None,
) -> LabelMove:
    """Move (or create) an unprotected label. Rollback is moving it back. Protected labels are refused
    with code "label_protected": use `promotion_request_create`. Audited; visible to resolve everywhere < 2 s."""
    _require_role(actor=actor, roles=roles, allowed=WRITER_ROLES, doing="Moving a label")
    label = label_validate(label)
    reason = _reason_clean(reason)
    locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
    target = _version_of(locked, version)
    if locked.label_is_protected(label):
        raise Forbidden(
            f"Label {label!r} is protected: open a promotion request that another prompt engineer approves.",
            code="label_protected",
            param="label",
        )
    return _label_set(prompt=locked, label=label, version=target, actor=actor, reason=reason)


@transaction.atomic
def promotion_request_create(
    *,
    prompt: Prompt,
    label: str,
    version: PromptVersion | int,
    reason: str,
    actor: Actor,
    roles: Iterable[str] | None = None,
) -> PromotionRequest:
    """Ask for a protected label to move. Needs a signed-in prompt engineer (never an API key); one
    pending request per label (Conflict otherwise). Audited; the label does not move yet."""
    if actor.type == ActorType.API_KEY:
        raise Forbidden("API keys cannot move protected labels.", code="api_key_forbidden")
    _require_role(actor=actor, roles=roles, allowed=(Role.PROMPT_ENGINEER,), doing="Requesting a promotion")
    label = label_validate(label)
    reason = _reason_clean(reason)
    if not reason:
        raise ValidationFailed("Say why this label should move.", param="reason")
    locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
    target = _version_of(locked, version)
    if not locked.label_is_protected(label):
        raise ValidationFailed(f"Label {label!r} is not protected: move it directly.", param="label")
    current = Label.objects.filter(prompt=locked, name=label).select_related("version").first()
    if current is not None and current.version_id == target.id:
        raise Conflict(f"Label {label!r} already points at v{target.number}.", code="label_unchanged")
    if PromotionRequest.objects.filter(prompt=locked, label=label, status=PromotionStatus.PENDING).exists():
        raise Conflict(f"A promotion of {label!r} is already pending.", code="promotion_pending")
    provider = gate_provider()
    gated = provider is not None and provider.required(prompt=locked, label=label)
    promotion = PromotionRequest.objects.create(
        prompt=locked,
        label=label,
        from_version_id=current.version_id if current else None,
        to_version=target,
        reason=reason,
        requested_by_id=_user_id(actor),
        requested_by_label=actor.label[:200],
        gate_status=GateStatus.PENDING if gated else GateStatus.NOT_REQUIRED,
        gate_detail={"sentence": "Waiting for a regression run of the candidate."} if gated else {},
    )
    audit_event_record(
        organisation_id=locked.organisation_id,
        actor=actor,
        action=Action.PROMOTION_REQUESTED,
        target_type="promotion_request",
        target_id=promotion.id,
        after={
            "prompt": locked.name,
            "label": label,
            # None when the label pointed at no version yet (shown as "(none) → vN").
            "from_version": current.version.number if current else None,
            "version": target.number,
            "reason": reason,
            "gated": gated,
        },
    )
    if gated:
        # After commit: the provider starts a run (a Celery task) that must see the request.
        promotion_id = promotion.id
        transaction.on_commit(lambda: provider.requested(promotion_id=promotion_id, actor=actor))
    return promotion


def label_move_or_request(
    *,
    prompt: Prompt,
    label: str,
    version: PromptVersion | int,
    reason: str,
    actor: Actor,
    roles: Iterable[str] | None = None,
) -> LabelMove | PromotionRequest:
    """Move an unprotected label now, or open a promotion request for a protected one."""
    if label in prompt.protected_labels:
        return promotion_request_create(
            prompt=prompt, label=label, version=version, reason=reason, actor=actor, roles=roles
        )
    return label_move(prompt=prompt, label=label, version=version, reason=reason, actor=actor, roles=roles)


def _decider_check(*, promotion: PromotionRequest, actor: Actor, roles, doing: str) -> None:
    if actor.type == ActorType.API_KEY:
        raise Forbidden(f"API keys cannot {doing} promotion requests.", code="api_key_forbidden")
    _require_role(actor=actor, roles=roles, allowed=(Role.PROMPT_ENGINEER,), doing=f"To {doing} a promotion")


def _claim(promotion: PromotionRequest, status: str, actor: Actor, reason: str) -> PromotionRequest:
    now = timezone.now()
    changed = PromotionRequest.objects.filter(pk=promotion.pk, status=PromotionStatus.PENDING).update(
        status=status,
        decided_by_id=_user_id(actor),
        decided_by_label=actor.label[:200],
        decided_at=now,
        decision_reason=reason,
    )
    if changed != 1:
        raise Conflict("This promotion request was already decided.", code="promotion_decided")
    promotion.refresh_from_db()
    return promotion


@transaction.atomic
def promotion_request_approve(
    *, promotion: PromotionRequest, actor: Actor, roles: Iterable[str] | None = None, reason: str = ""
) -> LabelMove:
    """Approve and perform the move. The approver must be a prompt engineer other than the requester,
    never an API key; the regression gate must be not_required or passed. Exactly-once (conditional update)."""
    _decider_check(promotion=promotion, actor=actor, roles=roles, doing="approve")
    reason = _reason_clean(reason)
    if _user_id(actor) is not None and _user_id(actor) == promotion.requested_by_id:
        raise Forbidden("You cannot approve your own promotion request.", code="self_approval")
    locked = Prompt.objects.select_for_update().get(pk=promotion.prompt_id)
    if promotion.gate_status not in (GateStatus.NOT_REQUIRED, GateStatus.PASSED):
        raise Conflict(
            f"The regression gate has not passed (status {promotion.gate_status}).", code="promotion_gate_not_passed"
        )
    promotion = _claim(promotion, PromotionStatus.APPROVED, actor, reason)
    audit_event_record(
        organisation_id=locked.organisation_id,
        actor=actor,
        action=Action.PROMOTION_APPROVED,
        target_type="promotion_request",
        target_id=promotion.id,
        after={"prompt": locked.name, "label": promotion.label, "reason": reason},
    )
    return _label_set(
        prompt=locked,
        label=promotion.label,
        version=promotion.to_version,
        actor=actor,
        reason=promotion.reason + (f" (approved: {reason})" if reason else ""),
        promotion=promotion,
    )


@transaction.atomic
def promotion_request_reject(
    *, promotion: PromotionRequest, actor: Actor, roles: Iterable[str] | None = None, reason: str = ""
) -> PromotionRequest:
    """Reject (or, by the requester, withdraw) a pending request. The label stays. Audited."""
    _decider_check(promotion=promotion, actor=actor, roles=roles, doing="reject")
    reason = _reason_clean(reason)
    promotion = _claim(promotion, PromotionStatus.REJECTED, actor, reason)
    audit_event_record(
        organisation_id=promotion.prompt.organisation_id,
        actor=actor,
        action=Action.PROMOTION_REJECTED,
        target_type="promotion_request",
        target_id=promotion.id,
        after={"prompt": promotion.prompt.name, "label": promotion.label, "reason": reason},
    )
    return promotion


@transaction.atomic
def promotion_request_gate_set(
    *,
    promotion: PromotionRequest,
    status: str,
    actor: Actor,
    run_id: int | None = None,
    detail: dict | None = None,
) -> PromotionRequest:
    """Attach or update the regression gate of a pending request (the evaluations app calls this:
    pending when its run starts, passed/failed when it ends). Approval needs not_required or passed.
    Idempotent for the same values; refused once the request is decided. Audited."""
    if status not in GateStatus.values:
        raise ValidationFailed(f"Unknown gate status {status!r}.", param="gate_status")
    changed = PromotionRequest.objects.filter(pk=promotion.pk, status=PromotionStatus.PENDING).update(
        gate_status=status, gate_run_id=run_id, gate_detail=detail or {}
    )
    if changed != 1:
        raise Conflict("This promotion request was already decided.", code="promotion_decided")
    before = promotion.gate_status
    promotion.refresh_from_db()
    audit_event_record(
        organisation_id=promotion.prompt.organisation_id,
        actor=actor,
        action=Action.PROMOTION_GATE_CHANGED,
        target_type="promotion_request",
        target_id=promotion.id,
        before={"gate_status": before},
        after={"gate_status": status, "run_id": run_id},
    )
    return promotion


@transaction.atomic
def promotion_request_gate_override(
    *, promotion: PromotionRequest, reason: str, actor: Actor, roles: Iterable[str] | None = None
) -> PromotionRequest:
    """An admin lets a pending request past its regression gate, with a written reason (audited).
    The gate is then `passed`, its detail keeps what it said before and who overrode it and why.
    Never an API key; refused once the request is decided."""
    if actor.type == ActorType.API_KEY:
        raise Forbidden("API keys cannot override the regression gate.", code="api_key_forbidden")
    _require_role(actor=actor, roles=roles, allowed=(Role.ADMIN,), doing="Overriding the regression gate")
    reason = _reason_clean(reason)
    if not reason:
        raise ValidationFailed("Say why the regression gate is overridden.", param="reason")
    locked = PromotionRequest.objects.select_for_update().select_related("prompt").get(pk=promotion.pk)
    if locked.status != PromotionStatus.PENDING:
        raise Conflict("This promotion request was already decided.", code="promotion_decided")
    if locked.gate_status in (GateStatus.NOT_REQUIRED, GateStatus.PASSED):
        raise Conflict("The regression gate does not block this request.", code="gate_not_blocking")
    before = {"gate_status": locked.gate_status, "detail": locked.gate_detail}
    detail = {
        **(locked.gate_detail or {}),
        "overridden": True,
        "override_reason": reason,
        "override_by": actor.label[:200],
        "blocked_sentence": (locked.gate_detail or {}).get("sentence", ""),
        "sentence": f"Overridden by {actor.label[:200]}: {reason}",
    }
    locked.gate_status = GateStatus.PASSED
    locked.gate_detail = detail
    locked.save(update_fields=["gate_status", "gate_detail"])
    audit_event_record(
        organisation_id=locked.prompt.organisation_id,
        actor=actor,
        action=Action.PROMOTION_GATE_OVERRIDDEN,
        target_type="promotion_request",
        target_id=locked.id,
        before=before,
        after={"gate_status": GateStatus.PASSED, "reason": reason},
    )
    return locked


@transaction.atomic
def prompt_label_protection_set(
    *, prompt: Prompt, label: str, protected: bool, actor: Actor, roles: Iterable[str] | None = None
) -> Prompt:
    """Mark a label protected or not. Only signed-in admins: otherwise protection could be lifted to skip
    approval. Never an API key, whatever its roles: a leaked key must not be able to unprotect production."""
    if actor.type == ActorType.API_KEY:
        raise Forbidden("API keys cannot change label protection.", code="api_key_forbidden")
    _require_role(actor=actor, roles=roles, allowed=(Role.ADMIN,), doing="Changing label protection")
    label = label_validate(label)
    locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
    before = list(locked.protected_labels)
    wanted = set(before) | {label} if protected else set(before) - {label}
    if set(before) == wanted:
        return locked
    locked.protected_labels = sorted(wanted)
    locked.save(update_fields=["protected_labels", "updated_at"])
    audit_event_record(
        organisation_id=locked.organisation_id,
        actor=actor,
        action=Action.LABEL_PROTECTION_CHANGED,
        target_type="prompt",
        target_id=locked.id,
        before={"protected_labels": before},
        after={"protected_labels": locked.protected_labels},
    )
    return locked


@transaction.atomic
def organisation_prompts_purge(*, organisation: Organisation) -> int:
    """Delete every prompt of `organisation` including versions (the only way past the immutability
    trigger). For throwaway organisations (benchmarks); not exposed in the UI or API. Returns prompts deleted."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL steward.allow_version_delete = 'on'")
        else:
            cursor.execute("INSERT INTO registry_version_delete_allowed (x) VALUES (1)")
    prompts = Prompt.objects.filter(organisation=organisation)
    count = prompts.count()
    LabelMove.objects.filter(prompt__in=prompts).delete()
    Label.objects.filter(prompt__in=prompts).delete()
    PromotionRequest.objects.filter(prompt__in=prompts).delete()
    PromptVersion.objects.filter(prompt__in=prompts).delete()
    prompts.delete()
    with connection.cursor() as cursor:
        # Close the door again for whatever else the enclosing transaction does.
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL steward.allow_version_delete = 'off'")
        else:
            cursor.execute("DELETE FROM registry_version_delete_allowed")
    invalidate(REGISTRY_NAMESPACE)
    return count
