"""The promotion gate: a prompt can require a suite before a protected label moves.

A promotion request to a gated label needs a completed regression run of the candidate (the
request's version) against the label's current version, over the gate's suite, in which every gating
metric's verdict is `improved` or `non_inferior` and no item marked critical newly fails. The registry
knows nothing of evaluations: `gate_provider_install` registers `gate_required` and
`gate_promotion_requested` as its gate provider (registry.gates), and the gate is written back
through `registry.services.promotion_request_gate_set`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

from accounts.roles import Role
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor, ActorType
from core.errors import ApplicationError, Conflict, Forbidden, ValidationFailed
from evals.models import PromptGate, Run, RunKind, RunStatus, RunTrigger, Suite
from registry.gates import gate_provider_register
from registry.models import GateStatus, Label, PromotionRequest, PromotionStatus, Prompt

logger = logging.getLogger(__name__)

PASSING_VERDICTS = frozenset({"improved", "non_inferior"})
DEFAULT_GATING_METRICS = ("pass_rate", "score")
GATE_ACTOR = Actor.system("evals.gate")


def gate_for(*, prompt_id: int, label: str) -> PromptGate | None:
    return PromptGate.objects.select_related("suite").filter(prompt_id=prompt_id, label=label).first()


def gate_required(*, prompt: Prompt, label: str) -> bool:
    """The registry's question when a promotion request is opened (inside its transaction)."""
    return PromptGate.objects.filter(prompt_id=prompt.id, label=label).exists()


@transaction.atomic
def prompt_gate_set(
    *,
    prompt: Prompt,
    label: str,
    suite: Suite | None,
    actor: Actor,
    roles: Iterable[str] | None = None,
) -> PromptGate | None:
    """Require `suite` before `label` of `prompt` moves (suite None: remove the requirement). Only a
    signed-in admin: a gate that anyone could lift would gate nothing. The label becomes protected
    too, since only protected labels go through promotion requests. Audited."""
    from registry.services import prompt_label_protection_set

    if actor.type == ActorType.API_KEY:
        raise Forbidden("API keys cannot change promotion gates.", code="api_key_forbidden")
    if actor.type != ActorType.SYSTEM and Role.ADMIN not in set(roles or ()):
        raise Forbidden("Changing a promotion gate needs the admin role.", code="role_required")
    if suite is not None and suite.organisation_id != prompt.organisation_id:
        raise ValidationFailed("No such suite.", param="suite")
    existing = PromptGate.objects.select_for_update().filter(prompt_id=prompt.id, label=label).first()
    before = {"suite": existing.suite.name} if existing else None
    if suite is None:
        if existing is None:
            return None
        existing.delete()
        gate = None
    else:
        if existing is not None and existing.suite_id == suite.id:
            return existing
        gate, _ = PromptGate.objects.update_or_create(
            prompt_id=prompt.id,
            label=label,
            defaults={"organisation_id": prompt.organisation_id, "suite": suite},
        )
        if label not in prompt.protected_labels:
            prompt_label_protection_set(prompt=prompt, label=label, protected=True, actor=actor, roles=roles)
    audit_event_record(
        organisation_id=prompt.organisation_id,
        actor=actor,
        action=Action.EVAL_GATE_CHANGED,
        target_type="prompt",
        target_id=prompt.id,
        before=before,
        after={"prompt": prompt.name, "label": label, "suite": suite.name if suite else None},
    )
    return gate


def _variants(run: Run) -> tuple:
    variants = list(run.variants.all())
    baseline = next((v for v in variants if v.is_baseline), None)
    candidate = next((v for v in variants if not v.is_baseline), None)
    return baseline, candidate


def _matching_run(promotion: PromotionRequest, suite: Suite) -> Run | None:
    """The newest completed regression run of this candidate against this baseline over the suite."""
    runs = Run.objects.filter(
        suite=suite,
        prompt_id=promotion.prompt_id,
        kind=RunKind.REGRESSION,
        status=RunStatus.COMPLETED,
        variants__is_baseline=False,
        variants__prompt_version_id=promotion.to_version_id,
        variants__model_override="",
    ).order_by("-finished_at", "-id")
    for run in runs[:20]:
        baseline, _ = _variants(run)
        if baseline is not None and baseline.prompt_version_id == promotion.from_version_id:
            return run
    return None


def gate_evaluate(promotion: PromotionRequest) -> tuple[str, dict]:
    """(gate status, detail) for a promotion request, from its gate run (or the newest matching one).
    The detail's `sentence` says in one sentence why it passed or is blocked; `run_id` links the run."""
    gate = gate_for(prompt_id=promotion.prompt_id, label=promotion.label)
    if gate is None:
        return GateStatus.NOT_REQUIRED, {}
    suite = gate.suite
    if promotion.from_version_id is None:
        return GateStatus.PASSED, {
            "sentence": f"Label {promotion.label!r} has no current version, so there is nothing to regress against.",
            "suite": suite.name,
        }
    run = None
    if promotion.gate_run_id:
        run = Run.objects.filter(pk=promotion.gate_run_id, organisation_id=suite.organisation_id).first()
    # A completed run that compares exactly this candidate and baseline decides, whoever started it.
    matching = _matching_run(promotion, suite)
    if matching is not None and (run is None or run.status != RunStatus.COMPLETED or matching.id > run.id):
        run = matching
    detail: dict = {"suite": suite.name, "run_id": run.id if run else None}
    if run is None:
        detail["sentence"] = f"No regression run of the candidate over suite {suite.name!r} yet."
        return GateStatus.PENDING, detail
    if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
        detail["sentence"] = (
            f"Regression run #{run.id} is still {run.status} ({run.cells_done}/{run.cells_total} cells)."
        )
        return GateStatus.PENDING, detail
    if run.status != RunStatus.COMPLETED:
        detail["sentence"] = f"Regression run #{run.id} ended {run.status}: start a new run to evaluate the gate."
        return GateStatus.FAILED, detail
    baseline, candidate = _variants(run)
    if (
        run.suite_id != suite.id
        or baseline is None
        or candidate is None
        or candidate.prompt_version_id != promotion.to_version_id
        or baseline.prompt_version_id != promotion.from_version_id
    ):
        detail["sentence"] = (
            f"Run #{run.id} does not compare v{promotion.to_version.number} with the label's current version "
            f"over suite {suite.name!r}."
        )
        return GateStatus.FAILED, detail
    summary = run.summary or {}
    metrics = list(suite.gating_metrics or DEFAULT_GATING_METRICS)
    comparisons = {
        c.get("metric"): c for c in summary.get("comparisons", []) if c.get("variant") in (candidate.name, None)
    }
    failing = []
    for metric in metrics:
        comparison = comparisons.get(metric)
        if comparison is None:
            failing.append((metric, "not measured"))
        elif comparison.get("verdict") not in PASSING_VERDICTS:
            failing.append((metric, str(comparison.get("verdict") or "no verdict").replace("_", " ")))
    critical = list(summary.get("newly_failing_critical") or [])
    detail.update({"metrics": metrics, "failing_metrics": [m for m, _ in failing], "newly_failing_critical": critical})
    if not failing and not critical:
        detail["sentence"] = (
            f"Run #{run.id} shows v{candidate.prompt_version_number} non-inferior to v{baseline.prompt_version_number} "
            f"on {', '.join(m.replace('_', ' ') for m in metrics)} with no newly failing critical case."
        )
        return GateStatus.PASSED, detail
    reasons = []
    if failing:
        reasons.append(
            "; ".join(f"{metric.replace('_', ' ')} is {verdict}" for metric, verdict in failing)
            + f" (margin {suite.margin:g})"
        )
    if critical:
        shown = ", ".join(critical[:5]) + (f" and {len(critical) - 5} more" if len(critical) > 5 else "")
        plural = len(critical) != 1
        reasons.append(f"critical case{'s' if plural else ''} {shown} newly fail{'' if plural else 's'}")
    detail["sentence"] = (
        f"Blocked: in run #{run.id}, v{candidate.prompt_version_number} against v{baseline.prompt_version_number}, "
        + " and ".join(reasons)
        + "."
    )
    return GateStatus.FAILED, detail


def gate_refresh(promotion: PromotionRequest, *, actor: Actor = GATE_ACTOR) -> PromotionRequest:
    """Evaluate the gate of a pending request and store the result when it changed (idempotent)."""
    from registry.services import promotion_request_gate_set

    if promotion.status != PromotionStatus.PENDING or (promotion.gate_detail or {}).get("overridden"):
        return promotion
    status, detail = gate_evaluate(promotion)
    if status == promotion.gate_status and detail == promotion.gate_detail:
        return promotion
    try:
        return promotion_request_gate_set(
            promotion=promotion, status=status, actor=actor, run_id=detail.get("run_id"), detail=detail
        )
    except Conflict:  # decided meanwhile
        return promotion


def gate_promotion_requested(*, promotion_id: int, actor: Actor) -> None:
    """After a request to a gated label is committed: reuse a completed matching run, or start one
    (trigger "gate") when STEWARD_EVAL_GATE_AUTORUN is on (default). Never raises into the registry."""
    from registry.services import promotion_request_gate_set

    promotion = PromotionRequest.objects.select_related("prompt", "to_version").filter(pk=promotion_id).first()
    if promotion is None or promotion.status != PromotionStatus.PENDING:
        return
    gate = gate_for(prompt_id=promotion.prompt_id, label=promotion.label)
    if gate is None:
        return
    if promotion.from_version_id is None or _matching_run(promotion, gate.suite) is not None:
        gate_refresh(promotion)
        return
    if not getattr(settings, "STEWARD_EVAL_GATE_AUTORUN", True):
        gate_refresh(promotion)
        return
    try:
        run = gate_run_start(promotion=promotion, actor=actor)
    except ApplicationError as exc:
        promotion_request_gate_set(
            promotion=promotion,
            status=GateStatus.PENDING,
            actor=GATE_ACTOR,
            detail={"suite": gate.suite.name, "sentence": f"The regression run could not start: {exc.message}"},
        )
        return
    except Exception:  # the request exists either way; the run can be started by hand
        logger.exception("promotion %s: the gate run did not start", promotion_id)
        return
    promotion_request_gate_set(
        promotion=promotion,
        status=GateStatus.PENDING,
        actor=GATE_ACTOR,
        run_id=run.id,
        detail={"suite": gate.suite.name, "run_id": run.id, "sentence": f"Regression run #{run.id} is under way."},
    )


def gate_run_start(*, promotion: PromotionRequest, actor: Actor) -> Run:
    """Start the regression run a gated request needs: its version against the label, over the gate's suite."""
    from evals.services import run_start

    gate = gate_for(prompt_id=promotion.prompt_id, label=promotion.label)
    if gate is None:
        raise ValidationFailed("This label has no promotion gate.", param="label")
    baseline = Label.objects.filter(prompt_id=promotion.prompt_id, name=promotion.label).first()
    run = run_start(
        suite=gate.suite,
        prompt=promotion.prompt,
        actor=actor,
        kind=RunKind.REGRESSION,
        candidate_version=promotion.to_version,
        baseline_label=promotion.label,
        baseline_version=baseline.version if baseline else None,
        trigger=RunTrigger.GATE,
    )
    Run.objects.filter(pk=run.pk).update(promotion_request_id=promotion.id)
    run.promotion_request_id = promotion.id
    return run


def gate_run_finished(run: Run) -> None:
    """A run ended: re-evaluate every pending gated request it can decide (its own, and any request
    whose candidate and baseline it compares)."""
    candidates = PromotionRequest.objects.filter(
        prompt_id=run.prompt_id, status=PromotionStatus.PENDING, gate_status__in=[GateStatus.PENDING, GateStatus.FAILED]
    ).select_related("prompt", "to_version")
    for promotion in candidates:
        gate_refresh(promotion)


def gates_sweep() -> int:
    """Beat: re-evaluate pending gates whose run has ended (covers a finish no hook saw). Returns how many."""
    pending = PromotionRequest.objects.filter(
        status=PromotionStatus.PENDING, gate_status=GateStatus.PENDING
    ).select_related("prompt", "to_version")
    changed = 0
    for promotion in pending:
        after = gate_refresh(promotion)
        changed += after.gate_status != GateStatus.PENDING
    return changed


def gate_provider_install() -> None:
    gate_provider_register(required=gate_required, requested=gate_promotion_requested)
