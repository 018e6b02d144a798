from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from audit.actions import Action
from audit.models import ActorType, AuditChainHead, AuditEvent
from core.logging import request_id_var

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who did it: a user, an API key or the system (a task, a sweeper)."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(ActorType.SYSTEM, "", label)

    @classmethod
    def for_user(cls, user) -> Actor:
        return cls(ActorType.USER, str(user.pk), user.get_username())

    @classmethod
    def for_api_key(cls, *, key_id: int, prefix: str) -> Actor:
        return cls(ActorType.API_KEY, str(key_id), prefix)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def json_normalise(value: Any) -> Any:
    """What the JSON column will give back; hashing this keeps stored and hashed data identical."""
    if value is None:
        return None
    return json.loads(_canonical_json(value))


def event_canonical(event: AuditEvent) -> str:
    return _canonical_json(
        {
            "organisation_id": event.organisation_id,
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
        }
    )


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(event_canonical(event).encode()).hexdigest()


def audit_event_record(
    *,
    organisation_id: int,
    actor: Actor,
    action: Action | str,
    target_type: str,
    target_id: Any,
    before: Any = None,
    after: Any = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Append one event to the organisation's chain.

    Call it inside the transaction that makes the change, so the event exists exactly when the
    change does. It locks the organisation's chain head until that transaction ends.
    """
    if action not in Action.values:
        raise ValueError(f"unknown audit action {action!r}; add it to audit.actions.Action")
    with transaction.atomic():
        AuditChainHead.objects.get_or_create(organisation_id=organisation_id)
        head = AuditChainHead.objects.select_for_update().get(organisation_id=organisation_id)
        event = AuditEvent(
            organisation_id=organisation_id,
            seq=head.last_seq + 1,
            created_at=timezone.now(),
            actor_type=actor.type,
            actor_id=actor.id,
            actor_label=actor.label[:200],
            action=str(action),
            target_type=target_type,
            target_id=str(target_id),
            before=json_normalise(before),
            after=json_normalise(after),
            request_id=request_id or request_id_var.get() or "",
            prev_hash=head.last_hash,
        )
        event.hash = event_hash(event)
        event.save(force_insert=True)
        head.last_seq = event.seq
        head.last_hash = event.hash
        head.save(update_fields=["last_seq", "last_hash"])
    return event
