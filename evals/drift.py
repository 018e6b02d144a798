"""Drift watch: a suite runs on a schedule against a label, and a run worse than the previous one alerts.

This catches a provider changing a model under an unchanged name: the prompt version does not move, the
answers do. Each scheduled run is compared with the previous completed scheduled run of the same suite,
prompt and label, item by item (evals.stats: McNemar / sign-flip tests, Holm across the metrics). A
metric whose verdict is "regressed" raises a DriftAlert (a banner until acknowledged), an audit event
and, when the organisation configured a webhook, a signed delivery (the budget alerts' signing).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import timedelta

from celery import shared_task
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import ApplicationError
from evals.models import Cell, CellStatus, DriftAlert, Run, RunKind, RunStatus, RunTrigger, Suite
from evals.stats import metric_comparison, run_verdicts
from registry.models import Label, Prompt

logger = logging.getLogger(__name__)

DRIFT_ACTOR = Actor.system("evals.drift")


def _scheduled(suite: Suite) -> bool:
    return bool(suite.schedule_minutes and suite.schedule_prompt_id and suite.schedule_label)


def drift_due_suites(now=None) -> list[Suite]:
    now = now or timezone.now()
    suites = Suite.objects.filter(schedule_minutes__gt=0, schedule_prompt_id__isnull=False).exclude(schedule_label="")
    return [
        s
        for s in suites
        if s.last_scheduled_at is None or s.last_scheduled_at + timedelta(minutes=s.schedule_minutes) <= now
    ]


def previous_scheduled_run(run: Run) -> Run | None:
    """The newest completed scheduled run of the same suite and prompt before `run`."""
    return (
        Run.objects.filter(
            suite_id=run.suite_id,
            prompt_id=run.prompt_id,
            trigger=RunTrigger.SCHEDULE,
            status=RunStatus.COMPLETED,
            id__lt=run.id,
        )
        .order_by("-id")
        .first()
    )


def drift_run_start(suite: Suite, *, now=None) -> Run | None:
    """Start `suite`'s scheduled run if it is due, at most once per period across processes (the
    schedule stamp is claimed with a conditional update). None when not due or not startable."""
    from evals.services import run_start

    now = now or timezone.now()
    if not _scheduled(suite):
        return None
    due_before = now - timedelta(minutes=suite.schedule_minutes)
    claimed = (
        Suite.objects.filter(pk=suite.pk)
        .filter(Q(last_scheduled_at__isnull=True) | Q(last_scheduled_at__lte=due_before))
        .update(last_scheduled_at=now)
    )
    if not claimed:
        return None
    prompt = Prompt.objects.filter(pk=suite.schedule_prompt_id, organisation_id=suite.organisation_id).first()
    label = Label.objects.filter(prompt=prompt, name=suite.schedule_label).select_related("version").first()
    if prompt is None or label is None:
        logger.warning("drift: suite %s schedules a prompt or label that no longer exists", suite.pk)
        return None
    try:
        run = run_start(
            suite=suite,
            prompt=prompt,
            actor=DRIFT_ACTOR,
            kind=RunKind.REGRESSION,
            candidate_version=label.version,
            baseline_label=suite.schedule_label,
            baseline_version=label.version,
            trigger=RunTrigger.SCHEDULE,
        )
    except ApplicationError as exc:
        logger.warning("drift: suite %s: the scheduled run did not start: %s", suite.pk, exc.message)
        return None
    previous = previous_scheduled_run(run)
    if previous is not None:
        Run.objects.filter(pk=run.pk).update(previous_run=previous)
        run.previous_run = previous
    return run


def _candidate_values(run: Run) -> tuple[dict, dict]:
    """Per item key: the candidate variant's pass results and scores over its repeats."""
    passes: dict[str, list[bool]] = defaultdict(list)
    scores: dict[str, list[float]] = defaultdict(list)
    cells = (
        Cell.objects.filter(run=run, variant__is_baseline=False, status__in=[CellStatus.DONE, CellStatus.ERROR])
        .select_related("item")
        .order_by("item__position", "repeat")
    )
    for cell in cells:
        passes[cell.item.key].append(bool(cell.passed))
        scores[cell.item.key].append(float(cell.score or 0.0))
    return passes, scores


def drift_compare(run: Run, previous: Run) -> dict:
    """This run against the previous one on the items both ran: a comparison per metric and the worst verdict."""
    prev_passes, prev_scores = _candidate_values(previous)
    passes, scores = _candidate_values(run)
    if not set(prev_passes) & set(passes):
        return {"previous_run": previous.id, "comparisons": [], "regressed": False, "n_items": 0}
    margin = run.suite.margin
    comparisons = run_verdicts(
        [
            metric_comparison("pass_rate", prev_passes, passes, kind="binary", margin=margin),
            metric_comparison("score", prev_scores, scores, kind="score", margin=margin),
        ]
    )
    rows = [
        {
            "metric": c.name,
            "previous": c.baseline.mean,
            "current": c.candidate.mean,
            "diff": c.diff,
            "low": c.diff_low,
            "high": c.diff_high,
            "p": c.p_value,
            "p_adjusted": c.p_adjusted,
            "verdict": c.verdict,
        }
        for c in comparisons
    ]
    return {
        "previous_run": previous.id,
        "comparisons": rows,
        "regressed": any(r["verdict"] == "regressed" for r in rows),
        "n_items": comparisons[0].n_items,
    }


def drift_run_finished(run: Run) -> DriftAlert | None:
    """A scheduled run ended: compare it with the previous one (once: the result is kept in the run's
    summary under "drift") and raise an alert when a metric regressed."""
    if run.trigger != RunTrigger.SCHEDULE or run.status != RunStatus.COMPLETED:
        return None
    with transaction.atomic():
        locked = Run.objects.select_for_update().select_related("suite").get(pk=run.pk)
        if "drift" in (locked.summary or {}):
            return None
        previous = locked.previous_run or previous_scheduled_run(locked)
        if previous is None:
            locked.summary = {**(locked.summary or {}), "drift": {"previous_run": None, "regressed": False}}
            locked.save(update_fields=["summary"])
            return None
        result = drift_compare(locked, previous)
        locked.summary = {**(locked.summary or {}), "drift": result}
        locked.previous_run = previous
        locked.save(update_fields=["summary", "previous_run"])
        if not result["regressed"]:
            return None
        worse = [r for r in result["comparisons"] if r["verdict"] == "regressed"]
        message = (
            f"Suite {locked.suite.name} on {locked.prompt_name}: run #{locked.id} is worse than run #{previous.id} ("
            + "; ".join(f"{r['metric'].replace('_', ' ')} {r['previous']:.2f} → {r['current']:.2f}" for r in worse)
            + "). The model may have changed under an unchanged name."
        )
        alert = DriftAlert.objects.create(
            organisation_id=locked.organisation_id,
            suite=locked.suite,
            run=locked,
            previous_run=previous,
            message=message,
        )
        audit_event_record(
            organisation_id=locked.organisation_id,
            actor=DRIFT_ACTOR,
            action=Action.EVAL_DRIFT_DETECTED,
            target_type="eval_run",
            target_id=locked.id,
            after={"suite": locked.suite.name, "previous_run": previous.id, "comparisons": worse},
        )
        alert_id = alert.id
        transaction.on_commit(lambda: drift_alert_webhook_deliver.delay(alert_id))
    return alert


@transaction.atomic
def drift_alert_acknowledge(*, alert: DriftAlert, actor: Actor) -> DriftAlert:
    """Hide the banner. Audited; acknowledging twice changes nothing."""
    changed = DriftAlert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by_id=int(actor.id) if actor.id.isdigit() else None
    )
    if changed:
        audit_event_record(
            organisation_id=alert.organisation_id,
            actor=actor,
            action=Action.EVAL_DRIFT_ACKNOWLEDGED,
            target_type="drift_alert",
            target_id=alert.id,
        )
    alert.refresh_from_db()
    return alert


def drift_alerts_open(organisation_id: int):
    return DriftAlert.objects.filter(organisation_id=organisation_id, acknowledged_at__isnull=True).select_related(
        "suite"
    )


def drift_alert_webhook_send(*, alert_id: int) -> str:
    """POST the alert to the organisation's webhook, signed like the budget alerts (HMAC-SHA256 over
    "<timestamp>.<body>"). Returns "sent", "failed" or "skipped" (no webhook configured)."""
    from billing.webhooks import organisation_webhook_post

    alert = DriftAlert.objects.select_related("suite", "run").filter(pk=alert_id).first()
    if alert is None:
        return "skipped"
    body = json.dumps(
        {
            "id": f"drift-alert-{alert.pk}",
            "type": "eval.drift_detected",
            "organisation_id": alert.organisation_id,
            "suite": {"id": alert.suite_id, "name": alert.suite.name},
            "run_id": alert.run_id,
            "previous_run_id": alert.previous_run_id,
            "message": alert.message,
            "comparisons": (alert.run.summary or {}).get("drift", {}).get("comparisons", []),
            "created_at": alert.created_at.isoformat(),
        },
        separators=(",", ":"),
    ).encode()
    outcome = organisation_webhook_post(
        organisation_id=alert.organisation_id, body=body, what=f"drift alert {alert.pk}"
    )
    return "skipped" if outcome == "none" else outcome


@shared_task(name="evals.drift_alert_webhook_deliver", bind=True, max_retries=6)
def drift_alert_webhook_deliver(self, alert_id: int) -> str:
    from billing.webhooks import webhook_deliver_retrying

    return webhook_deliver_retrying(self, lambda: drift_alert_webhook_send(alert_id=alert_id))


def drift_tick(now=None) -> dict:
    """Beat: start due scheduled runs, compare finished scheduled runs not compared yet, and settle
    promotion gates whose run has ended (a finish that no save hook saw)."""
    from evals.gate import gates_sweep

    started = [run.id for suite in drift_due_suites(now) if (run := drift_run_start(suite, now=now))]
    finished = Run.objects.filter(trigger=RunTrigger.SCHEDULE, status=RunStatus.COMPLETED).exclude(
        summary__has_key="drift"
    )
    alerts = [alert.id for run in finished[:50] if (alert := drift_run_finished(run))]
    return {"started": started, "alerts": alerts, "gates": gates_sweep()}


@shared_task(name="evals.drift_tick")
def drift_tick_task() -> dict:
    return drift_tick()
