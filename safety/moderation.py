"""The moderation queue: held outputs, reviewers' leases and decisions, and the client's wait.

A hold (`hold_create`, called by the proxy) stores an item; reviewers claim items under a lease
(`item_claim`: `SELECT ... FOR UPDATE SKIP LOCKED`, so two reviewers never get the same item; a
lease that runs out returns the item to the queue) and decide them (`item_decide`). A decision
commits, then wakes whoever waits on the item (`ahold_decision_wait`, from any process, via a
Redis list), and queues a signed webhook notice (safety.moderation_notify).

Who sees the held text: members with the reviewer role, and nobody else before a decision (an
admin is not a reviewer unless they also hold the role). `moderation_client_view` never shows it.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Membership, Organisation
from accounts.roles import Role
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from core.redis import aredis_client, bounded, redis_client
from safety.models import DecisionAction, FindingReview, ModerationDecision, ModerationItem, ModerationStatus
from safety.moderation_selectors import false_positive_rates  # noqa: F401 (part of this module's interface)

logger = logging.getLogger(__name__)

PUBLIC_ID_PREFIX = "modr_"
# A decision pushes one token here; each waiter that pops it pushes it back for the next one, so
# every waiter (the proxy holding a connection, clients long-polling) wakes, not only the first.
DECIDED_KEY = "stw:modr:decided:{}"
DECIDED_TTL_SECONDS = 120
# BLPOP in slices this long, each bounded a little past its own wait, so a stalled Redis is noticed.
WAIT_SLICE_SECONDS = 1.0

REASON_CODES: dict[str, str] = {
    "harmful": "Harmful or unsafe content",
    "personal_data": "Exposes personal data",
    "confidential": "Confidential or secret information",
    "off_policy": "Against the usage policy",
    "inaccurate": "Inaccurate or unsupported",
    "other": "Other (comment required)",
}
MAX_EDIT_CHARS = 200_000
MAX_COMMENT_CHARS = 2_000


_PUBLIC_ID = re.compile(r"modr_[A-Za-z0-9_-]{1,35}")


def public_id_valid(value: str) -> bool:
    """Shape check before any query: ids come from URLs (a NUL byte would be a database error)."""
    return bool(_PUBLIC_ID.fullmatch(value or ""))


def public_id_new() -> str:
    # 18 random bytes are 24 url-safe characters.
    return PUBLIC_ID_PREFIX + secrets.token_urlsafe(18)


def lease_seconds() -> int:
    return settings.STEWARD_MODERATION_LEASE_SECONDS


# --- creation and the client's view -----------------------------------------------------------


def hold_create(
    *,
    organisation_id: int,
    policy_id: int | None,
    policy_name: str,
    request_id: str,
    api_key_id: int | None,
    prompt_version_id: int | None,
    model: str,
    endpoint: str,
    direction: str,
    stream: bool,
    held_text: str,
    context_messages: list,
    response: dict | None,
    findings: list,
    priority: int,
    sla_seconds: int,
    required_approvals: int,
) -> ModerationItem:
    """Queue a held output (or input) for review. Sync: the proxy calls it through sync_to_async.
    The deadline is now + `sla_seconds`; priority 1 is the most urgent."""
    if direction not in ("input", "output"):
        raise ValueError(f"direction must be input or output, not {direction!r}")
    now = timezone.now()
    return ModerationItem.objects.create(
        organisation_id=organisation_id,
        policy_id=policy_id,
        policy_name=policy_name[:100],
        public_id=public_id_new(),
        request_id=request_id[:64],
        api_key_id=api_key_id,
        prompt_version_id=prompt_version_id,
        model=model[:200],
        endpoint=endpoint[:40],
        direction=direction,
        stream=stream,
        held_text=held_text,
        context_messages=context_messages or [],
        response=response,
        findings=findings or [],
        finding_kinds=kinds_field(findings or []),
        priority=min(4, max(1, int(priority))),
        deadline=now + timedelta(seconds=max(1, int(sla_seconds))),
        required_approvals=2 if required_approvals >= 2 else 1,
        created_at=now,
    )


def kinds_field(findings: list) -> str:
    kinds = sorted({str(f.get("kind", "")).strip() for f in findings if isinstance(f, dict)} - {""})
    joined = " ".join(k.replace(" ", "_") for k in kinds)
    return f" {joined} "[:1000] if kinds else ""


def _unix(value) -> int | None:
    return int(value.timestamp()) if value else None


def moderation_client_view(item: ModerationItem) -> dict:
    """What the client that made the request sees: never the held text; the released text once decided."""
    decided = item.status != ModerationStatus.PENDING
    return {
        "id": item.public_id,
        "object": "moderation.item",
        "status": item.status,
        "created": _unix(item.created_at),
        "decided": _unix(item.decided_at) if decided else None,
        "output": item.released_text if decided else None,
        "edited": bool(item.edited) if decided else False,
        "reason_code": (item.reason_code or None) if decided else None,
    }


# --- waiting for a decision -------------------------------------------------------------------


async def _adecided(public_id: str) -> ModerationItem | None:
    if not public_id_valid(public_id):
        return None
    item = await ModerationItem.objects.filter(public_id=public_id).afirst()
    if item is not None and item.status != ModerationStatus.PENDING:
        return item
    return None


async def ahold_decision_wait(public_id: str, timeout: float) -> ModerationItem | None:
    """The decided item, or None if it is still pending (or unknown) after `timeout` seconds.

    Wakes as soon as a decision is pushed (from any process); if Redis is unreachable it falls back
    to reading the item every half second, so a waiter never misses a decision."""
    deadline = time.monotonic() + max(0.0, timeout)
    decided = await _adecided(public_id)
    if decided is not None or timeout <= 0:
        return decided
    key = DECIDED_KEY.format(public_id)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        wait = max(0.01, min(WAIT_SLICE_SECONDS, remaining))  # BLPOP with 0 would block for ever
        try:
            client = aredis_client()
            popped = await bounded(client.blpop([key], timeout=wait), wait + 2)
            if popped:
                # Pass the token on to the next waiter (it expires with the key).
                await bounded(client.lpush(key, popped[1]))
        except Exception:
            logger.warning("moderation wait on %s: Redis unavailable, reading the database instead", public_id)
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        # Read the item after every slice, not only on a wake-up: a waiter cancelled between popping
        # the token and passing it on would otherwise leave the others asleep until their timeout.
        decided = await _adecided(public_id)
        if decided is not None:
            return decided


def _decision_announce(public_id: str) -> None:
    try:
        pipe = redis_client().pipeline()
        pipe.rpush(DECIDED_KEY.format(public_id), b"1")
        pipe.expire(DECIDED_KEY.format(public_id), DECIDED_TTL_SECONDS)
        pipe.execute()
    except Exception:
        # Waiters then see the decision on their next read of the item (at most a slice later).
        logger.exception("could not announce the decision on %s", public_id)


# --- the queue and leases ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueueFilters:
    policy_id: int | None = None
    priority: int | None = None
    finding_kind: str = ""
    min_age_seconds: int | None = None  # only items older than this


def queue_filter(qs: QuerySet, filters: QueueFilters | None) -> QuerySet:
    if filters is None:
        return qs
    if filters.policy_id:
        qs = qs.filter(policy_id=filters.policy_id)
    if filters.priority:
        qs = qs.filter(priority=filters.priority)
    if filters.finding_kind and "\x00" not in filters.finding_kind:
        qs = qs.filter(finding_kinds__contains=f" {filters.finding_kind.replace(' ', '_')} ")
    if filters.min_age_seconds:
        qs = qs.filter(created_at__lte=timezone.now() - timedelta(seconds=filters.min_age_seconds))
    return qs


def reviewer_check(*, organisation: Organisation, reviewer) -> None:
    """Deciding needs the reviewer role in the item's organisation (views check it too; this is the
    service's own guarantee)."""
    membership = Membership.objects.filter(organisation=organisation, user=reviewer).only("roles").first()
    if membership is None or Role.REVIEWER.value not in membership.roles:
        raise Forbidden("Only members with the reviewer role review held outputs.", code="not_a_reviewer")


def item_claim(*, organisation: Organisation, reviewer, filters: QueueFilters | None = None) -> ModerationItem | None:
    """Lease the most urgent pending item nobody else holds (the reviewer's own live lease first),
    or None. Atomic across processes: the candidate rows are locked with SKIP LOCKED, so parallel
    claims take different items. Items this reviewer already approved (awaiting a second, different
    reviewer) are skipped."""
    reviewer_check(organisation=organisation, reviewer=reviewer)
    now = timezone.now()
    with transaction.atomic():
        base = ModerationItem.objects.filter(organisation=organisation, status=ModerationStatus.PENDING)
        base = queue_filter(base, filters).exclude(
            decisions__reviewer=reviewer, decisions__action__in=[DecisionAction.APPROVE, DecisionAction.EDIT]
        )
        own = (
            base.select_for_update(skip_locked=True, of=("self",))
            .filter(lease_owner=reviewer, lease_expires_at__gt=now)
            .order_by("priority", "created_at")
            .first()
        )
        item = own or (
            base.select_for_update(skip_locked=True, of=("self",))
            .filter(Q(lease_owner__isnull=True) | Q(lease_expires_at__lte=now))
            .order_by("priority", "created_at")
            .first()
        )
        if item is None:
            return None
        _lease_set(item, reviewer, now)
    return item


def _lease_set(item: ModerationItem, reviewer, now) -> None:
    item.lease_owner = reviewer
    item.lease_expires_at = now + timedelta(seconds=lease_seconds())
    ModerationItem.objects.filter(pk=item.pk).update(lease_owner=reviewer, lease_expires_at=item.lease_expires_at)


def item_get(*, organisation: Organisation, public_id: str) -> ModerationItem:
    if not public_id_valid(public_id):
        raise NotFound("No such moderation item.")
    item = ModerationItem.objects.filter(organisation=organisation, public_id=public_id).first()
    if item is None:
        raise NotFound("No such moderation item.")
    return item


def item_lease_take(*, organisation: Organisation, public_id: str, reviewer) -> ModerationItem:
    """Lease one named item (the reviewer opened it); Conflict if another reviewer's lease is live
    or the item is decided. Renews the reviewer's own lease."""
    reviewer_check(organisation=organisation, reviewer=reviewer)
    if not public_id_valid(public_id):
        raise NotFound("No such moderation item.")
    now = timezone.now()
    with transaction.atomic():
        item = (
            ModerationItem.objects.select_for_update(of=("self",))
            .filter(organisation=organisation, public_id=public_id)
            .first()
        )
        if item is None:
            raise NotFound("No such moderation item.")
        if item.status != ModerationStatus.PENDING:
            raise Conflict("This item has been decided.", code="already_decided")
        if item.lease_owner_id not in (None, reviewer.pk) and item.lease_expires_at and item.lease_expires_at > now:
            raise Conflict("Another reviewer holds this item.", code="leased")
        _lease_set(item, reviewer, now)
    return item


def item_release_lease(*, item: ModerationItem, reviewer) -> None:
    """Give an item back to the queue (only the lease holder's own lease)."""
    ModerationItem.objects.filter(pk=item.pk, lease_owner=reviewer).update(lease_owner=None, lease_expires_at=None)


def lease_live(item: ModerationItem, now=None) -> bool:
    now = now or timezone.now()
    return bool(item.lease_owner_id and item.lease_expires_at and item.lease_expires_at > now)


# --- decisions --------------------------------------------------------------------------------


def _diff(before: str, after: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), fromfile="held", tofile="released"
        )
    )


def decision_validate(*, action: str, edited_text: str, reason_code: str, comment: str) -> None:
    if action not in DecisionAction.values:
        raise ValidationFailed(f"action must be one of {', '.join(DecisionAction.values)}.", param="action")
    if len(comment) > MAX_COMMENT_CHARS:
        raise ValidationFailed(f"The comment is longer than {MAX_COMMENT_CHARS} characters.", param="comment")
    if action == DecisionAction.EDIT:
        if not edited_text.strip():
            raise ValidationFailed("An edit needs the text to release.", param="edited_text")
        if len(edited_text) > MAX_EDIT_CHARS:
            raise ValidationFailed(f"The edited text is longer than {MAX_EDIT_CHARS} characters.", param="edited_text")
    if action == DecisionAction.REJECT:
        if reason_code not in REASON_CODES:
            raise ValidationFailed(f"reason_code must be one of {', '.join(REASON_CODES)}.", param="reason_code")
        if reason_code == "other" and not comment.strip():
            raise ValidationFailed("Reason 'other' needs a comment.", param="comment")


def item_decide(
    *,
    organisation: Organisation,
    public_id: str,
    reviewer,
    action: str,
    edited_text: str = "",
    reason_code: str = "",
    comment: str = "",
    bulk: bool = False,
) -> ModerationItem:
    """Record one reviewer's decision on a pending item.

    Needs the reviewer's live lease on the item; a bulk decision instead needs that no other
    reviewer holds a live lease. A policy requiring two approvals keeps the item pending after the
    first (recorded and audited, the lease given back) and refuses a second approval by the same
    reviewer. A rejection decides at once. On the deciding commit: audit event, webhook notice,
    and every waiter woken. Raises Conflict (decided, lease lost, same reviewer) or ValidationFailed."""
    reviewer_check(organisation=organisation, reviewer=reviewer)
    decision_validate(action=action, edited_text=edited_text, reason_code=reason_code, comment=comment)
    if not public_id_valid(public_id):
        raise NotFound("No such moderation item.")
    from safety.moderation_notify import notice_queue

    now = timezone.now()
    actor = Actor.for_user(reviewer)
    with transaction.atomic():
        item = (
            ModerationItem.objects.select_for_update(of=("self",))
            .select_related("policy")
            .filter(organisation=organisation, public_id=public_id)
            .first()
        )
        if item is None:
            raise NotFound("No such moderation item.")
        if item.status != ModerationStatus.PENDING:
            raise Conflict("This item has already been decided.", code="already_decided")
        mine = item.lease_owner_id == reviewer.pk and lease_live(item, now)
        if bulk:
            if lease_live(item, now) and not mine:
                raise Conflict("Another reviewer holds this item.", code="leased")
        elif not mine:
            raise Conflict("Claim the item first: your lease is missing or has expired.", code="lease_required")
        approvals = list(
            item.decisions.filter(action__in=[DecisionAction.APPROVE, DecisionAction.EDIT]).order_by("created_at")
        )
        if action != DecisionAction.REJECT and any(d.reviewer_id == reviewer.pk for d in approvals):
            raise Conflict("A second approval must come from a different reviewer.", code="same_reviewer")
        if action == DecisionAction.EDIT and edited_text == _proposed_text(item, approvals):
            action = DecisionAction.APPROVE  # an edit that changes nothing is an approval
        decision = ModerationDecision.objects.create(
            item=item,
            reviewer=reviewer,
            reviewer_label=reviewer.get_username()[:200],
            action=action,
            reason_code=reason_code if action == DecisionAction.REJECT else "",
            comment=comment,
            edited_text=edited_text if action == DecisionAction.EDIT else "",
            diff=_diff(_proposed_text(item, approvals), edited_text) if action == DecisionAction.EDIT else "",
            created_at=now,
        )
        summary = {
            "item": item.public_id,
            "request_id": item.request_id,
            "policy": item.policy_name,
            "action": action,
            "bulk": bulk,
        }
        if action != DecisionAction.REJECT and len(approvals) + 1 < item.required_approvals:
            ModerationItem.objects.filter(pk=item.pk).update(lease_owner=None, lease_expires_at=None)
            audit_event_record(
                organisation_id=organisation.id,
                actor=actor,
                action=Action.MODERATION_APPROVAL_RECORDED,
                target_type="moderation_item",
                target_id=item.public_id,
                after={**summary, "approvals": len(approvals) + 1, "required": item.required_approvals},
            )
            item.refresh_from_db()
            return item
        if action == DecisionAction.REJECT:
            item.status = ModerationStatus.REJECTED
            item.released_text = item.policy.refusal_text if item.policy else _default_refusal()
            item.reason_code = reason_code
            item.edited = False
        else:
            edits = [d for d in [*approvals, decision] if d.action == DecisionAction.EDIT]
            item.status = ModerationStatus.APPROVED
            item.released_text = edits[-1].edited_text if edits else item.held_text
            item.edited = bool(edits)
            item.reason_code = ""
        item.decided_at = now
        item.lease_owner = None
        item.lease_expires_at = None
        item.save(
            update_fields=[
                "status",
                "released_text",
                "reason_code",
                "edited",
                "decided_at",
                "lease_owner",
                "lease_expires_at",
            ]
        )
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.MODERATION_REJECTED if action == DecisionAction.REJECT else Action.MODERATION_RELEASED,
            target_type="moderation_item",
            target_id=item.public_id,
            after={
                **summary,
                "status": item.status,
                "edited": item.edited,
                "reason_code": item.reason_code or None,
                "reviewers": [d.reviewer_label for d in [*approvals, decision]],
            },
        )
        notice_queue(item=item, kind="moderation.decided")
        public = item.public_id
        transaction.on_commit(lambda: _decision_announce(public))
    return item


def _default_refusal() -> str:
    from safety.models import SafetyPolicy

    return SafetyPolicy._meta.get_field("refusal_text").default


def _proposed_text(item: ModerationItem, approvals: list[ModerationDecision]) -> str:
    """The text an approval would release: the last edit so far, else the held text."""
    edits = [d for d in approvals if d.action == DecisionAction.EDIT]
    return edits[-1].edited_text if edits else item.held_text


def item_proposed_text(item: ModerationItem) -> str:
    return _proposed_text(item, list(item.decisions.filter(action__in=[DecisionAction.APPROVE, DecisionAction.EDIT])))


@dataclass(frozen=True)
class BulkOutcome:
    decided: list[str]
    skipped: dict[str, str]  # public id -> why


def items_decide_bulk(
    *,
    organisation: Organisation,
    public_ids: list[str],
    reviewer,
    action: str,
    reason_code: str = "",
    comment: str = "",
) -> BulkOutcome:
    """Approve or reject a selection; each item in its own transaction, so one that another reviewer
    holds (or that needs a different reviewer) is skipped with its reason, not a failure of all."""
    if action not in (DecisionAction.APPROVE, DecisionAction.REJECT):
        raise ValidationFailed("Bulk decisions approve or reject.", param="action")
    decision_validate(action=action, edited_text="", reason_code=reason_code, comment=comment)
    if len(public_ids) > 200:
        raise ValidationFailed("At most 200 items at a time.", param="items")
    decided, skipped = [], {}
    for public_id in dict.fromkeys(public_ids):
        try:
            item = item_decide(
                organisation=organisation,
                public_id=public_id,
                reviewer=reviewer,
                action=action,
                reason_code=reason_code,
                comment=comment,
                bulk=True,
            )
        except (Conflict, NotFound) as exc:
            skipped[public_id] = exc.message
        else:
            if item.status == ModerationStatus.PENDING:
                skipped[public_id] = "approval recorded; a second reviewer must approve"
            else:
                decided.append(public_id)
    return BulkOutcome(decided=decided, skipped=skipped)


# --- findings ---------------------------------------------------------------------------------


def finding_review_set(*, item: ModerationItem, reviewer, finding_index: int, false_positive: bool) -> FindingReview:
    """Mark one finding of an item as a false positive (or confirmed); a later mark replaces it."""
    reviewer_check(organisation=item.organisation, reviewer=reviewer)
    if not 0 <= finding_index < len(item.findings or []):
        raise ValidationFailed("No such finding on this item.", param="finding")
    finding = item.findings[finding_index]
    review, _ = FindingReview.objects.update_or_create(
        item=item,
        finding_index=finding_index,
        defaults={
            "filter_name": str(finding.get("filter", ""))[:40],
            "kind": str(finding.get("kind", ""))[:60],
            "false_positive": false_positive,
            "reviewer": reviewer,
            "created_at": timezone.now(),
        },
    )
    return review
