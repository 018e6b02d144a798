from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.actions import Action
from audit.models import AuditChainHead, AuditEvent, AuditVerification, VerificationStatus
from core.actors import Actor
from core.logging import request_id_var

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64


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


def _derived_key(purpose: bytes) -> bytes:
    # One secret, two uses kept apart: the chain's links and the checkpoints' signatures.
    return hmac.new(settings.STEWARD_AUDIT_KEY.encode(), purpose, hashlib.sha256).digest()


def event_hash(event: AuditEvent) -> str:
    """HMAC-SHA256 of the event's canonical form under STEWARD_AUDIT_KEY.

    Keyed rather than a plain digest: with write access to the database (triggers dropped) one
    could otherwise edit an event and recompute every later link; without the key, which lives
    outside the database, the recomputed links do not verify.
    """
    return hmac.new(
        _derived_key(b"steward audit chain v2"), event_canonical(event).encode(), hashlib.sha256
    ).hexdigest()


def event_hash_sha256(event: AuditEvent) -> str:
    """The unkeyed digest chains were made of before the key (audit migration 0004 re-keys them)."""
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


# --- chain verification --------------------------------------------------------------------


@dataclass(frozen=True)
class ChainBreak:
    """The first event (in seq order) at which an organisation's chain stops being trustworthy."""

    organisation_id: int
    seq: int | None
    event_id: int | None
    problem: str

    def as_dict(self) -> dict:
        return {
            "organisation_id": self.organisation_id,
            "seq": self.seq,
            "event_id": self.event_id,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class ChainVerification:
    events_checked: int
    organisations_checked: int
    first_broken: ChainBreak | None = None
    broken: list[ChainBreak] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_broken is None


def _event_problem(event: AuditEvent, *, expected_seq: int, prev_hash: str) -> str | None:
    if event.seq != expected_seq:
        if event.seq > expected_seq:
            gap = f"seq {expected_seq}" if event.seq == expected_seq + 1 else f"seq {expected_seq}..{event.seq - 1}"
            return f"{gap} missing before this event (row removed?)"
        return f"seq {event.seq} found where {expected_seq} was expected"
    if event.prev_hash != prev_hash:
        return "prev_hash does not match the previous event's hash (row inserted or reordered?)"
    if event_hash(event) != event.hash:
        return "hash does not match the event's content (row altered?)"
    return None


def _organisation_chain_verify(
    organisation_id: int, checkpoints: list[Checkpoint] | None = None
) -> tuple[int, ChainBreak | None, AuditEvent | None]:
    """Walk one chain; returns (events checked, first break or None, last event).

    Each checkpoint's event must still be on the chain with the hash the checkpoint recorded, and
    the chain must reach the latest checkpoint (a chain cut short and re-headed verifies otherwise).
    """
    head = AuditChainHead.objects.filter(organisation_id=organisation_id).first()
    expected = {checkpoint.seq: checkpoint for checkpoint in checkpoints or ()}
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    last = None
    events = AuditEvent.objects.filter(organisation_id=organisation_id).order_by("seq").iterator(chunk_size=2000)
    for event in events:
        problem = _event_problem(event, expected_seq=expected_seq, prev_hash=prev_hash)
        checkpoint = expected.get(event.seq)
        if (
            problem is None
            and checkpoint is not None
            and (event.id, event.hash) != (checkpoint.event_id, checkpoint.hash)
        ):
            problem = (
                f"differs from the checkpoint taken {checkpoint.taken_at} (it recorded event id {checkpoint.event_id} "
                f"with hash {checkpoint.hash[:16]}…, the chain now has id {event.id} with {event.hash[:16]}…): "
                "the chain was rewritten after the checkpoint"
            )
        if problem:
            return checked, ChainBreak(organisation_id, event.seq, event.id, problem), last
        checked += 1
        expected_seq, prev_hash, last = event.seq + 1, event.hash, event
    last_seq = expected_seq - 1
    last_id = last.id if last else None
    beyond = [checkpoint for seq, checkpoint in expected.items() if seq > last_seq]
    if beyond:
        latest = max(beyond, key=lambda checkpoint: checkpoint.seq)
        problem = (
            f"the checkpoint taken {latest.taken_at} records event #{latest.seq} (id {latest.event_id}) "
            f"but the chain ends at #{last_seq} (events removed from the end?)"
        )
        return checked, ChainBreak(organisation_id, latest.seq, latest.event_id, problem), last
    if head is None:
        if last_seq:
            return (
                checked,
                ChainBreak(organisation_id, last_seq, last_id, "events exist but the chain head is missing"),
                last,
            )
        return checked, None, last
    if head.last_seq != last_seq or head.last_hash != prev_hash:
        problem = (
            f"chain head says #{head.last_seq} but the last event is #{last_seq}"
            if head.last_seq != last_seq
            else "chain head hash does not match the last event's hash"
        )
        if head.last_seq > last_seq:
            problem += " (rows removed from the end?)"
        return checked, ChainBreak(organisation_id, last_seq or None, last_id, problem), last
    return checked, None, last


@contextlib.contextmanager
def _consistent_snapshot():
    """A transaction whose reads all see one snapshot, so writers appending meanwhile cannot make
    the head and the events disagree. On PostgreSQL that needs REPEATABLE READ, set before any
    query; inside an outer transaction (tests) the outer snapshot rules, which is fine. On SQLite
    (the dev default) transactions are IMMEDIATE, so writers wait for the walk: fine at dev sizes."""
    outer = connection.in_atomic_block
    with transaction.atomic():
        if not outer and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _organisations_with_chains() -> list[int]:
    ids = set(AuditChainHead.objects.values_list("organisation_id", flat=True))
    ids |= set(AuditEvent.objects.order_by().values_list("organisation_id", flat=True).distinct())
    return sorted(ids)


def audit_chain_verify(
    *, organisation_ids: list[int] | None = None, checkpoints: list[Checkpoint] | None = None
) -> ChainVerification:
    """Walk the hash chains of `organisation_ids` (all organisations with events, a head or a
    checkpoint if None).

    Pure read: checks that seq runs 1..N without gaps, that each prev_hash is the previous event's
    hash, that each hash recomputes from the row under the audit key (audit.services.event_hash),
    that the chain head agrees with the last event, and that every checkpoint (exported earlier by
    `audit_checkpoints_take`, signatures already checked) still matches. Memory stays flat: events
    are streamed.
    """
    by_organisation: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints or ():
        by_organisation.setdefault(checkpoint.organisation_id, []).append(checkpoint)
    if organisation_ids is None:
        organisation_ids = sorted(set(_organisations_with_chains()) | set(by_organisation))
    total, breaks = 0, []
    for organisation_id in organisation_ids:
        with _consistent_snapshot():
            checked, chain_break, _last = _organisation_chain_verify(
                organisation_id, by_organisation.get(organisation_id)
            )
        total += checked
        if chain_break is not None:
            breaks.append(chain_break)
    return ChainVerification(
        events_checked=total,
        organisations_checked=len(organisation_ids),
        first_broken=breaks[0] if breaks else None,
        broken=breaks,
    )


# --- checkpoints -----------------------------------------------------------------------------

CHECKPOINT_VERSION = 1


class CheckpointInvalid(ValueError):
    """A checkpoint line that is not valid JSON, lacks a field, or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """The signed head of one organisation's chain at one moment: shipped to storage the database's
    administrators cannot write, it pins the chain up to `seq`. Signed with HMAC-SHA256 under a key
    derived from STEWARD_AUDIT_KEY (so verifying needs that key, as verifying the chain does)."""

    organisation_id: int
    organisation: str
    seq: int
    event_id: int
    hash: str
    count: int
    event_created_at: str
    taken_at: str

    def payload(self) -> dict:
        return {
            "v": CHECKPOINT_VERSION,
            "organisation_id": self.organisation_id,
            "organisation": self.organisation,
            "seq": self.seq,
            "event_id": self.event_id,
            "hash": self.hash,
            "count": self.count,
            "event_created_at": self.event_created_at,
            "taken_at": self.taken_at,
        }

    def signature(self) -> str:
        key = _derived_key(b"steward audit checkpoint v1")
        return hmac.new(key, _canonical_json(self.payload()).encode(), hashlib.sha256).hexdigest()

    def as_line(self) -> str:
        return _canonical_json({**self.payload(), "signature": self.signature()})


def checkpoint_parse(line: str) -> Checkpoint:
    """The checkpoint in one exported line; raises CheckpointInvalid unless its signature verifies."""
    try:
        data = json.loads(line)
        checkpoint = Checkpoint(
            organisation_id=int(data["organisation_id"]),
            organisation=str(data["organisation"]),
            seq=int(data["seq"]),
            event_id=int(data["event_id"]),
            hash=str(data["hash"]),
            count=int(data["count"]),
            event_created_at=str(data["event_created_at"]),
            taken_at=str(data["taken_at"]),
        )
        signature = str(data["signature"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointInvalid(f"not a checkpoint ({type(exc).__name__}: {exc})") from None
    if data.get("v") != CHECKPOINT_VERSION:
        raise CheckpointInvalid(f"unknown checkpoint version {data.get('v')!r}")
    if not hmac.compare_digest(signature, checkpoint.signature()):
        raise CheckpointInvalid(
            f"signature does not verify for organisation {checkpoint.organisation} (forged, altered, or "
            "signed with another STEWARD_AUDIT_KEY)"
        )
    return checkpoint


@dataclass(frozen=True)
class CheckpointRun:
    checkpoints: list[Checkpoint]
    broken: list[ChainBreak]


def audit_checkpoints_take(*, organisation_ids: list[int] | None = None) -> CheckpointRun:
    """Sign the head of each organisation's chain, after verifying that chain.

    Pure read. A chain that does not verify gets no checkpoint (signing it would vouch for the
    damage); it is returned in `broken` instead. Organisations without events are skipped.
    """
    if organisation_ids is None:
        organisation_ids = _organisations_with_chains()
    taken_at = timezone.now().isoformat()
    checkpoints, broken = [], []
    for organisation_id in organisation_ids:
        with _consistent_snapshot():
            checked, chain_break, last = _organisation_chain_verify(organisation_id)
            slug = last.organisation.slug if last is not None and chain_break is None else ""
        if chain_break is not None:
            broken.append(chain_break)
        elif last is not None:
            checkpoints.append(
                Checkpoint(
                    organisation_id=organisation_id,
                    organisation=slug,
                    seq=last.seq,
                    event_id=last.id,
                    hash=last.hash,
                    count=checked,
                    event_created_at=last.created_at.isoformat(),
                    taken_at=taken_at,
                )
            )
    return CheckpointRun(checkpoints=checkpoints, broken=broken)


def audit_verification_request(*, organisation, requested_by=None) -> AuditVerification:
    """Create a pending verification of `organisation`'s chain and enqueue `audit.chain_verify` once
    the current transaction commits. Side effect: one task message."""
    from audit.tasks import chain_verify

    with transaction.atomic():
        verification = AuditVerification.objects.create(organisation=organisation, requested_by=requested_by)
        transaction.on_commit(lambda: chain_verify.delay(verification.id))
    return verification


def audit_verification_run(*, verification_id: int) -> AuditVerification | None:
    """Run a pending verification and store its outcome on the row.

    Idempotent: the row is claimed with a conditional update (pending -> running); a second
    delivery of the same task finds nothing to claim and returns None. Unexpected errors mark the
    row failed rather than leaving it running.
    """
    claimed = AuditVerification.objects.filter(pk=verification_id, status=VerificationStatus.PENDING).update(
        status=VerificationStatus.RUNNING, started_at=timezone.now()
    )
    if claimed != 1:
        return None
    verification = AuditVerification.objects.get(pk=verification_id)
    try:
        result = audit_chain_verify(organisation_ids=[verification.organisation_id])
    except Exception as exc:
        logger.exception("audit chain verification %s failed", verification_id)
        verification.status = VerificationStatus.FAILED
        verification.error = f"{type(exc).__name__}: {exc}"[:2000]
    else:
        verification.status = VerificationStatus.OK if result.ok else VerificationStatus.BROKEN
        verification.events_checked = result.events_checked
        verification.first_broken = result.first_broken.as_dict() if result.first_broken else None
    verification.finished_at = timezone.now()
    verification.save(update_fields=["status", "events_checked", "first_broken", "error", "finished_at"])
    logger.info(
        "audit chain verification finished",
        extra={
            "verification_id": verification.id,
            "organisation_id": verification.organisation_id,
            "status": verification.status,
            "events_checked": verification.events_checked,
        },
    )
    return verification


def audit_verifications_recover(*, stuck_after_seconds: int = 900) -> int:
    """Re-enqueue verifications whose task was lost: RUNNING too long (the worker died) goes back to
    PENDING; PENDING too long (the message never arrived) is enqueued again.

    Safe to run at any time and repeatedly (beat calls it): each row is claimed by one task only.
    """
    from audit.tasks import chain_verify

    cutoff = timezone.now() - timedelta(seconds=stuck_after_seconds)
    AuditVerification.objects.filter(status=VerificationStatus.RUNNING, started_at__lt=cutoff).update(
        status=VerificationStatus.PENDING, started_at=None
    )
    stale = list(
        AuditVerification.objects.filter(status=VerificationStatus.PENDING, created_at__lt=cutoff).values_list(
            "id", flat=True
        )
    )
    for verification_id in stale:
        transaction.on_commit(lambda vid=verification_id: chain_verify.delay(vid))
    return len(stale)
