"""Online experiments: a label's live traffic split between prompt versions by weight.

Services (start, stop, end) are audited in the transaction that makes the change and invalidate
the registry's resolve cache in every process (core.invalidation, namespace "registry"), so the
proxy picks the split up, or drops it, within the invalidation poll bound (about 0.5 s, at most
1.5 s). The proxy never reads these tables per request: the split is loaded with the label's
resolution and cached beside it (registry.selectors).

Assignment is a pure function of the experiment id and the end user's key: `split_point` hashes
them (BLAKE2b) to a number in [0, 1) that falls into one variant's share of the cumulative
weights, so one user sees one version for the whole experiment, in every proxy process. The key is
the request's `user` field or its `x-steward-user` header (the experiment's `sticky_by` says which
is tried first; the other is the fallback). A request with neither is assigned at random and
recorded as unsticky (`sticky: false` in the request log): it still counts in its variant's
statistics, but the same caller may see another version next time.

Ending (a guard rail) or stopping (a person) puts all traffic back on the label's version, the
control. The label itself is never moved here; promoting a winner stays the registry's gated step.
While an experiment runs, moving its label away from the control suspends the split: the label's
new version is served to everyone (a promotion is an explicit decision and wins).
"""

from __future__ import annotations

import bisect
import hashlib
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import Organisation
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import Conflict, NotFound, ValidationFailed
from core.invalidation import invalidate
from registry.content import label_validate
from registry.models import (
    Experiment,
    ExperimentStatus,
    ExperimentVariant,
    Label,
    Prompt,
    PromptVersion,
    StickyBy,
)
from registry.services import REGISTRY_NAMESPACE, WRITER_ROLES, _require_role, _user_id

MAX_VARIANTS = 10
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
TOTAL_WEIGHT = 100
_HASH_SPACE = float(2**64)


# --- assignment (pure) -------------------------------------------------------------------------


def split_point(experiment_id: int, key: str) -> float:
    """Where `key` falls in [0, 1) for this experiment: stable across processes and restarts, and
    independent between experiments (the id is hashed in, so one user is not always in the first arm)."""
    digest = hashlib.blake2b(f"{experiment_id}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE


def thresholds_for(weights: Iterable[int]) -> tuple[float, ...]:
    """Cumulative upper bounds in (0, 1] of each arm's share; the last is exactly 1."""
    weights = list(weights)
    total = sum(weights)
    bounds, running = [], 0
    for weight in weights:
        running += weight
        bounds.append(running / total)
    bounds[-1] = 1.0
    return tuple(bounds)


def arm_index(thresholds: tuple[float, ...], point: float) -> int:
    return min(bisect.bisect_right(thresholds, point), len(thresholds) - 1)


@dataclass(frozen=True)
class Assignment:
    """Which experiment arm a request was served from; `sticky` is False for a random assignment."""

    experiment_id: int
    variant: str
    sticky: bool


def assignment_pick(
    *, experiment_id: int, thresholds: tuple[float, ...], sticky_by: str, user: str | None, user_header: str | None
) -> tuple[int, bool]:
    """(arm index, sticky) for one request."""
    first, second = (user, user_header) if sticky_by == StickyBy.USER else (user_header, user)
    key = first or second
    if key:
        return arm_index(thresholds, split_point(experiment_id, key)), True
    return arm_index(thresholds, random.random()), False


# --- validation --------------------------------------------------------------------------------


def _limit(value, *, param: str, low: float, high: float | None = None) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValidationFailed(f"{param} must be a number.", param=param)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"{param} must be a number.", param=param) from None
    if number != number or number < low or (high is not None and number > high):
        bound = f" and {high}" if high is not None else ""
        raise ValidationFailed(f"{param} must be between {low}{bound}.", param=param)
    return number


def _cost_limit(value) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValidationFailed("max_cost_per_request must be an amount in USD.", param="max_cost_per_request") from None
    if not amount.is_finite() or amount < 0 or amount > Decimal("1000000"):
        raise ValidationFailed("max_cost_per_request must be between 0 and 1000000.", param="max_cost_per_request")
    return amount.quantize(Decimal("1e-12"))


def _variants_clean(prompt: Prompt, variants, control: PromptVersion) -> list[dict]:
    if not isinstance(variants, list | tuple) or not 2 <= len(variants) <= MAX_VARIANTS:
        raise ValidationFailed(f"An experiment needs 2 to {MAX_VARIANTS} variants.", param="variants")
    clean, names, numbers = [], set(), set()
    for position, entry in enumerate(variants):
        if not isinstance(entry, dict):
            raise ValidationFailed("Each variant is {version, weight[, name]}.", param="variants")
        number, weight = entry.get("version"), entry.get("weight")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValidationFailed("A variant's version must be a version number.", param="variants")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= TOTAL_WEIGHT:
            raise ValidationFailed(
                f"A variant's weight must be a whole number from 1 to {TOTAL_WEIGHT}.", param="variants"
            )
        if number in numbers:
            raise ValidationFailed(f"Version {number} appears twice.", param="variants")
        numbers.add(number)
        version = PromptVersion.objects.filter(prompt=prompt, number=number).first()
        if version is None:
            raise NotFound(
                f"Prompt {prompt.name!r} has no version {number}.", code="version_not_found", param="variants"
            )
        is_control = version.id == control.id
        name = entry.get("name") or ("control" if is_control else f"v{number}")
        if not isinstance(name, str) or not VARIANT_NAME.match(name) or name in names:
            raise ValidationFailed(
                "Variant names must be distinct: lowercase letters, digits, - and _, at most 50.", param="variants"
            )
        names.add(name)
        clean.append(
            {"name": name, "version": version, "weight": weight, "is_control": is_control, "position": position}
        )
    if sum(v["weight"] for v in clean) != TOTAL_WEIGHT:
        raise ValidationFailed(f"The variants' weights must add up to {TOTAL_WEIGHT}.", param="variants")
    if not any(v["is_control"] for v in clean):
        raise ValidationFailed(
            f"Include the label's current version (v{control.number}) as the control.", param="variants"
        )
    return clean


# --- services ----------------------------------------------------------------------------------


def _public(experiment: Experiment) -> dict:
    return {
        "label": experiment.label,
        "name": experiment.name,
        "control_version": experiment.control_version.number,
        "sticky_by": experiment.sticky_by,
        "variants": [
            {"name": v.name, "version": v.version.number, "weight": v.weight}
            for v in experiment.variants.select_related("version").order_by("position")
        ],
        "max_error_rate": experiment.max_error_rate,
        "max_latency_p95_ms": experiment.max_latency_p95_ms,
        "max_cost_per_request": experiment.max_cost_per_request,
        "min_sample": experiment.min_sample,
    }


@transaction.atomic
def experiment_start(
    *,
    prompt: Prompt,
    label: str,
    variants: list[dict],
    actor: Actor,
    roles: Iterable[str] | None = None,
    name: str = "",
    sticky_by: str = StickyBy.USER,
    max_error_rate=None,
    max_latency_p95_ms=None,
    max_cost_per_request=None,
    min_sample: int = 100,
) -> Experiment:
    """Start splitting `label`'s traffic. `variants` = [{"version": number, "weight": 1..100, "name"?}],
    weights adding up to 100, one of them the label's current version (the control).

    Raises Forbidden (role), NotFound (label, version), ValidationFailed, Conflict (an experiment already
    runs on the label). Audited; the proxy serves the split within the invalidation bound (< 2 s).
    """
    _require_role(actor=actor, roles=roles, allowed=WRITER_ROLES, doing="Starting an experiment")
    label = label_validate(label)
    if not isinstance(name, str) or len(name) > 200:
        raise ValidationFailed("name must be text up to 200 characters.", param="name")
    if sticky_by not in StickyBy.values:
        raise ValidationFailed(f"sticky_by must be one of {', '.join(StickyBy.values)}.", param="sticky_by")
    if isinstance(min_sample, bool) or not isinstance(min_sample, int) or not 1 <= min_sample <= 1_000_000:
        raise ValidationFailed("min_sample must be a whole number from 1 to 1000000.", param="min_sample")
    locked = Prompt.objects.select_for_update().get(pk=prompt.pk)
    current = Label.objects.filter(prompt=locked, name=label).select_related("version").first()
    if current is None:
        raise NotFound(f"Prompt {locked.name!r} has no label {label!r}.", code="label_not_found", param="label")
    clean = _variants_clean(locked, variants, current.version)
    experiment = Experiment(
        prompt=locked,
        label=label,
        name=name.strip(),
        control_version=current.version,
        sticky_by=sticky_by,
        max_error_rate=_limit(max_error_rate, param="max_error_rate", low=0.0, high=1.0),
        max_latency_p95_ms=_limit(max_latency_p95_ms, param="max_latency_p95_ms", low=1.0, high=3_600_000.0),
        max_cost_per_request=_cost_limit(max_cost_per_request),
        min_sample=min_sample,
        started_at=timezone.now(),
        started_by_id=_user_id(actor),
        started_by_label=actor.label[:200],
    )
    try:
        with transaction.atomic():
            experiment.save()
    except IntegrityError as exc:
        raise Conflict(
            f"An experiment already runs on label {label!r}; stop it first.", code="experiment_running", param="label"
        ) from exc
    ExperimentVariant.objects.bulk_create([ExperimentVariant(experiment=experiment, **v) for v in clean])
    audit_event_record(
        organisation_id=locked.organisation_id,
        actor=actor,
        action=Action.EXPERIMENT_STARTED,
        target_type="experiment",
        target_id=experiment.id,
        after={"prompt": locked.name, **_public(experiment)},
    )
    invalidate(REGISTRY_NAMESPACE)
    return experiment


def _finish(*, experiment: Experiment, status: str, actor: Actor, reason: str, detail: dict, action: str) -> bool:
    """Running -> `status` by a conditional update (exactly one caller wins), audited; False if not running."""
    now = timezone.now()
    changed = Experiment.objects.filter(pk=experiment.pk, status=ExperimentStatus.RUNNING).update(
        status=status, ended_at=now, ended_by_label=actor.label[:200], end_reason=reason, end_detail=detail
    )
    if not changed:
        return False
    experiment.refresh_from_db()
    audit_event_record(
        organisation_id=experiment.prompt.organisation_id,
        actor=actor,
        action=action,
        target_type="experiment",
        target_id=experiment.id,
        before={"status": ExperimentStatus.RUNNING},
        after={
            "status": status,
            "prompt": experiment.prompt.name,
            "label": experiment.label,
            "control_version": experiment.control_version.number,
            "reason": reason,
            "detail": detail,
        },
    )
    invalidate(REGISTRY_NAMESPACE)
    return True


@transaction.atomic
def experiment_stop(
    *, experiment: Experiment, actor: Actor, roles: Iterable[str] | None = None, reason: str = ""
) -> Experiment:
    """A person stops a running experiment: all traffic back to the control. Raises Conflict if it is
    not running. Audited."""
    _require_role(actor=actor, roles=roles, allowed=WRITER_ROLES, doing="Stopping an experiment")
    if not isinstance(reason, str) or len(reason) > 2000:
        raise ValidationFailed("reason must be text up to 2000 characters.", param="reason")
    if not _finish(
        experiment=experiment,
        status=ExperimentStatus.STOPPED,
        actor=actor,
        reason=reason.strip(),
        detail={},
        action=Action.EXPERIMENT_STOPPED,
    ):
        raise Conflict("This experiment is not running.", code="experiment_not_running")
    return experiment


@transaction.atomic
def experiment_end(*, experiment: Experiment, reason: str, detail: dict, actor: Actor) -> bool:
    """A guard rail ends a running experiment (all traffic back to the control), audited with the
    reason. Idempotent: False, and nothing written, when it was no longer running."""
    return _finish(
        experiment=experiment,
        status=ExperimentStatus.ENDED,
        actor=actor,
        reason=reason,
        detail=detail,
        action=Action.EXPERIMENT_ENDED,
    )


# --- reads -------------------------------------------------------------------------------------


def experiments_list(
    *, organisation: Organisation, status: str | None = None, prompt: Prompt | None = None
) -> QuerySet[Experiment]:
    qs = Experiment.objects.filter(prompt__organisation=organisation).select_related("prompt", "control_version")
    if status:
        qs = qs.filter(status=status)
    if prompt is not None:
        qs = qs.filter(prompt=prompt)
    return qs.order_by("-started_at", "-id")


def experiment_get(*, organisation: Organisation, experiment_id: int) -> Experiment:
    found = experiments_list(organisation=organisation).filter(pk=experiment_id).first()
    if found is None:
        raise NotFound("No such experiment.", code="experiment_not_found")
    return found


def experiment_variants(*, experiment: Experiment) -> list[ExperimentVariant]:
    return list(experiment.variants.select_related("version").order_by("position"))


def experiments_running() -> QuerySet[Experiment]:
    """Every organisation's running experiments (the guard-rail task's work list)."""
    return Experiment.objects.filter(status=ExperimentStatus.RUNNING).select_related("prompt", "control_version")


def experiment_running_for(*, prompt_id: int, label: str, control_version_id: int) -> Experiment | None:
    """The experiment splitting `label` now, if any: one running whose control is still the label's version."""
    return (
        Experiment.objects.filter(
            prompt_id=prompt_id, label=label, status=ExperimentStatus.RUNNING, control_version_id=control_version_id
        )
        .prefetch_related("variants__version")
        .first()
    )
