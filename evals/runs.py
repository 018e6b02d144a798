"""Starting, cancelling and finishing runs (the cells themselves are executed by evals.executor).

Lifecycle: queued -> running -> completed | failed | cancelled. A run gets its own API key at the start
(scoped to the prompts it calls, with the run's cost budget as a hard `total` budget on that key), so the
proxy applies routing, filters, budgets and audit to it and attributes its costs; the key is revoked when
the run ends, whichever way.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.crypto import secret_encrypt
from core.errors import Conflict, NotFound, ValidationFailed
from evals.models import Cell, CellStatus, DatasetVersion, Run, RunKind, RunStatus, RunTrigger, Suite, Variant

logger = logging.getLogger(__name__)

TERMINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
MAX_VARIANTS = 10
MAX_CELLS = 200_000
CANCEL_KEY = "evals:cancel:{run_id}"


def _user(actor: Actor):
    from django.contrib.auth import get_user_model

    if actor.type == "user" and actor.id:
        return get_user_model().objects.filter(pk=actor.id).first()
    return None


def _version(prompt, number):
    from registry.models import PromptVersion

    if isinstance(number, PromptVersion):
        if number.prompt_id != prompt.id:
            raise ValidationFailed("The version belongs to another prompt.", param="version")
        return number
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValidationFailed("A version is given by its number.", param="version")
    version = prompt.versions.filter(number=number).first()
    if version is None:
        raise NotFound(f"Prompt {prompt.name!r} has no version {number}.", code="version_not_found", param="version")
    return version


def _label_version(prompt, label: str):
    found = prompt.labels.select_related("version").filter(name=label).first()
    if found is None:
        raise NotFound(f"Prompt {prompt.name!r} has no label {label!r}.", code="label_not_found", param="baseline")
    return found.version


def _model_override_check(organisation_id: int, model: str) -> str:
    from proxy.models import ModelRoute

    model = (model or "").strip()
    if model and not ModelRoute.objects.filter(organisation_id=organisation_id, name=model).exists():
        raise ValidationFailed(f"The model {model!r} does not exist.", param="model_override")
    return model


def _variants_resolve(
    *, prompt, kind, candidate_version, baseline_label, baseline_version, variants, model_override
) -> list[dict]:
    if kind == RunKind.REGRESSION:
        if candidate_version is None:
            raise ValidationFailed("A regression run needs a candidate version.", param="candidate_version")
        candidate = _version(prompt, candidate_version)
        if baseline_version is not None:
            baseline, label = _version(prompt, baseline_version), ""
        else:
            baseline, label = _label_version(prompt, baseline_label or "production"), baseline_label or "production"
        override = _model_override_check(prompt.organisation_id, model_override)
        return [
            {"name": "baseline", "version": baseline, "label": label, "model_override": "", "is_baseline": True},
            {"name": "candidate", "version": candidate, "label": "", "model_override": override, "is_baseline": False},
        ]
    if kind != RunKind.AB:
        raise ValidationFailed("kind must be regression or ab", param="kind")
    if not isinstance(variants, list) or not 2 <= len(variants) <= MAX_VARIANTS:
        raise ValidationFailed(f"An A/B run needs 2 to {MAX_VARIANTS} variants.", param="variants")
    out, names = [], set()
    for i, spec in enumerate(variants):
        if not isinstance(spec, dict):
            raise ValidationFailed(f"variants[{i}] must be an object", param=f"variants[{i}]")
        name = str(spec.get("name") or chr(ord("A") + i))[:60]
        if name in names:
            raise ValidationFailed(f"variants[{i}]: duplicate name {name!r}", param=f"variants[{i}].name")
        names.add(name)
        if spec.get("label"):
            version, label = _label_version(prompt, spec["label"]), spec["label"]
        else:
            version, label = _version(prompt, spec.get("version")), ""
        out.append(
            {
                "name": name,
                "version": version,
                "label": label,
                "model_override": _model_override_check(prompt.organisation_id, spec.get("model_override") or ""),
                "is_baseline": i == 0,
            }
        )
    return out


def _judge_prompt_names(organisation_id: int, specs: list[dict]) -> list[str]:
    from registry.models import PromptVersion

    ids = [s["judge_prompt_version_id"] for s in specs if s.get("type") == "llm-judge"]
    if not ids:
        return []
    found = dict(
        PromptVersion.objects.filter(pk__in=ids, prompt__organisation_id=organisation_id).values_list(
            "pk", "prompt__name"
        )
    )
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValidationFailed(
            f"The judge prompt version {missing[0]} does not exist in this organisation.",
            param="assertions.judge_prompt_version_id",
        )
    return sorted(set(found.values()))


def run_start(
    *,
    suite: Suite,
    prompt,
    actor: Actor,
    kind: str = RunKind.REGRESSION,
    candidate_version=None,
    baseline_label: str = "production",
    baseline_version=None,
    variants: list[dict] | None = None,
    model_override: str = "",
    trigger: str = RunTrigger.UI,
    repeats: int | None = None,
) -> Run:
    """Create a run, its variants and every cell (variant × item × repeat) in one transaction, with the run's
    own API key (and cost budget), then enqueue its execution once committed.

    Regression: baseline = `baseline_version` (a number) or the current version of `baseline_label`; candidate =
    `candidate_version` (a number or a PromptVersion), optionally with `model_override` (a route name).
    A/B: `variants` = [{"name", "version" | "label", "model_override"}] (2..10, the first is the reference).
    The suite's pinned dataset version is used, else the dataset's latest (pinned on the run).
    """
    if suite.organisation_id != prompt.organisation_id:
        raise NotFound("No such prompt.", code="prompt_not_found", param="prompt")
    if trigger not in RunTrigger.values:
        raise ValidationFailed(f"trigger must be one of {', '.join(RunTrigger.values)}", param="trigger")
    resolved = _variants_resolve(
        prompt=prompt,
        kind=kind,
        candidate_version=candidate_version,
        baseline_label=baseline_label,
        baseline_version=baseline_version,
        variants=variants,
        model_override=model_override,
    )
    repeats = suite.repeats if repeats is None else repeats
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 20:
        raise ValidationFailed("repeats must be between 1 and 20", param="repeats")
    dataset_version = (
        suite.dataset_version or DatasetVersion.objects.filter(dataset=suite.dataset).order_by("-number").first()
    )
    if dataset_version is None:
        raise ValidationFailed(f"The dataset {suite.dataset.name!r} has no version yet.", param="suite")
    items = list(dataset_version.items.order_by("position").values_list("pk", flat=True))
    if not items:
        raise ValidationFailed("The dataset version has no items.", param="suite")
    total = len(items) * len(resolved) * repeats
    if total > MAX_CELLS:
        raise ValidationFailed(f"A run has at most {MAX_CELLS} cells ({total} asked).", param="repeats")
    judge_prompts = _judge_prompt_names(suite.organisation_id, suite.assertions)
    organisation = suite.organisation
    now = timezone.now()
    with transaction.atomic():
        run = Run.objects.create(
            organisation=organisation,
            suite=suite,
            kind=kind,
            prompt_id=prompt.id,
            prompt_name=prompt.name,
            dataset_version=dataset_version,
            trigger=trigger,
            repeats=repeats,
            concurrency=suite.concurrency,
            deadline=now + timezone.timedelta(seconds=suite.deadline_seconds),
            cost_budget_usd=suite.cost_budget_usd,
            cells_total=total,
            created_by=_user(actor),
            created_by_label=actor.label[:200],
            created_at=now,
        )
        made = [
            Variant(
                run=run,
                position=i,
                name=v["name"],
                is_baseline=v["is_baseline"],
                prompt_version_id=v["version"].id,
                prompt_version_number=v["version"].number,
                label=v["label"],
                model_override=v["model_override"],
            )
            for i, v in enumerate(resolved)
        ]
        Variant.objects.bulk_create(made)
        Cell.objects.bulk_create(
            [
                Cell(run=run, variant=variant, item_id=item_id, repeat=repeat)
                for variant in made
                for item_id in items
                for repeat in range(repeats)
            ],
            batch_size=2000,
        )
        created = api_key_create(
            organisation=organisation,
            name=f"eval run {run.id}",
            actor=actor,
            allowed_prompts=[prompt.name, *judge_prompts],
            # The run sends `model` for a model override and temperature/seed for the judge.
            overridable_params=["model", "seed", "temperature"],
            expires_at=run.deadline + timezone.timedelta(hours=1),
        )
        run.api_key_id = created.api_key.id
        run.api_key_secret_encrypted = secret_encrypt(created.secret)
        run.save(update_fields=["api_key_id", "api_key_secret_encrypted"])
        if run.cost_budget_usd is not None:
            from billing.budgets import budget_create

            budget_create(
                organisation=organisation,
                actor=actor,
                name=f"eval run {run.id}",
                scope="api_key",
                amount=Decimal(run.cost_budget_usd),
                period="total",
                api_key_id=created.api_key.id,
                hard_limit=True,
            )
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.EVAL_RUN_STARTED,
            target_type="eval_run",
            target_id=run.id,
            after={
                "suite": suite.name,
                "prompt": prompt.name,
                "kind": kind,
                "variants": [{"name": v.name, "version": v.prompt_version_number} for v in made],
                "dataset_version": dataset_version.number,
                "cells": total,
                "api_key_id": created.api_key.id,
            },
        )
        transaction.on_commit(lambda: run_enqueue(run.id))
    return run


def run_enqueue(run_id: int) -> None:
    from evals.tasks import run_execute

    run_execute.delay(run_id)


def cancel_flag_set(run_id: int) -> None:
    from core.redis import redis_client

    redis_client().set(CANCEL_KEY.format(run_id=run_id), "1", ex=86400)


def run_cancel(*, run: Run, actor: Actor) -> Run:
    """Ask a run to stop: pending cells are cancelled at once, workers see the request (a Redis flag, and the
    row between cells) and stop their cells within seconds; the run then ends as cancelled. Idempotent;
    Conflict for a run that already ended. Audited."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        if locked.status in TERMINAL:
            raise Conflict(f"The run already ended ({locked.status}).", param="run")
        if locked.cancel_requested_at is None:
            locked.cancel_requested_at = timezone.now()
            locked.save(update_fields=["cancel_requested_at"])
            audit_event_record(
                organisation_id=locked.organisation_id,
                actor=actor,
                action=Action.EVAL_RUN_CANCEL_REQUESTED,
                target_type="eval_run",
                target_id=locked.id,
            )
        Cell.objects.filter(run=locked, status=CellStatus.PENDING).update(
            status=CellStatus.CANCELLED, finished_at=timezone.now()
        )
        transaction.on_commit(lambda: cancel_flag_set(locked.pk))
    run_finish_if_done(run_id=locked.pk)
    locked.refresh_from_db()
    return locked


def run_counters_refresh(run_id: int) -> None:
    """Recount cells_done / cells_failed / cost_usd from the cells (the sweeper's correction)."""
    agg = Cell.objects.filter(run_id=run_id).aggregate(
        done=Count("id", filter=Q(status__in=[CellStatus.DONE, CellStatus.ERROR])),
        failed=Count("id", filter=Q(status=CellStatus.ERROR)),
        cost=Sum("cost_usd"),
    )
    Run.objects.filter(pk=run_id).update(
        cells_done=agg["done"], cells_failed=agg["failed"], cost_usd=agg["cost"] or Decimal(0)
    )


def run_finish_if_done(*, run_id: int, error: str = "") -> Run | None:
    """End the run when no cell is pending or running (else None): status cancelled if cancellation was asked,
    failed if `error` (or every cell errored), else completed; the summary computed, the key revoked, audited.
    Exactly one caller ends a run (a conditional update of its status)."""
    if Cell.objects.filter(run_id=run_id, status__in=[CellStatus.PENDING, CellStatus.RUNNING]).exists():
        return None
    run_counters_refresh(run_id)
    run = Run.objects.get(pk=run_id)
    if run.status in TERMINAL:
        return None
    if run.cancel_requested_at is not None:
        status = RunStatus.CANCELLED
    elif error or (run.cells_total and run.cells_failed == run.cells_total):
        status = RunStatus.FAILED
        error = error or "every cell failed"
    else:
        status = RunStatus.COMPLETED
    summary, verdict = {}, ""
    if status == RunStatus.COMPLETED:
        from evals.summary import run_summary_compute

        try:
            summary = run_summary_compute(run, save=False)
            verdict = summary.get("verdict", "")
        except Exception as exc:  # a summary bug must not leave the run running forever
            logger.exception("summary of run %s failed", run_id)
            status, error = RunStatus.FAILED, f"summary failed: {exc}"
    with transaction.atomic():
        changed = Run.objects.filter(pk=run_id, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
            status=status,
            finished_at=timezone.now(),
            summary=summary,
            verdict=verdict,
            error=error[:5000],
            api_key_secret_encrypted="",
        )
        if not changed:
            return None
        run.refresh_from_db()
        if run.api_key_id:
            key = ApiKey.objects.filter(pk=run.api_key_id).first()
            if key is not None:
                api_key_revoke(api_key=key, actor=Actor.system(f"eval run {run.id}"))
        audit_event_record(
            organisation_id=run.organisation_id,
            actor=Actor.system(f"eval run {run.id}"),
            action=Action.EVAL_RUN_FINISHED,
            target_type="eval_run",
            target_id=run.id,
            after={
                "status": status,
                "verdict": verdict,
                "cells_done": run.cells_done,
                "cells_failed": run.cells_failed,
                "cost_usd": str(run.cost_usd),
                "error": error[:500],
            },
        )
    return run


def run_fail(*, run_id: int, error: str) -> Run | None:
    """Fail a run now (its deadline passed, its key is gone): open cells become errors, then it ends."""
    now = timezone.now()
    Cell.objects.filter(run_id=run_id, status__in=[CellStatus.PENDING, CellStatus.RUNNING]).update(
        status=CellStatus.ERROR, error=error[:2000], finished_at=now, lease_expires_at=None
    )
    return run_finish_if_done(run_id=run_id, error=error)


# --- claims and results (used by the executor, sync: run them in a thread from async code) -------------

_CLAIM_SQL = """
UPDATE evals_cell SET status = 'running', attempts = attempts + 1,
       lease_expires_at = now() + make_interval(secs => %s)
WHERE id IN (
    SELECT id FROM evals_cell WHERE run_id = %s AND status = 'pending'
      AND NOT EXISTS (SELECT 1 FROM evals_run WHERE id = %s AND cancel_requested_at IS NOT NULL)
    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
)
RETURNING id, variant_id, item_id, repeat, attempts
"""

_FINISH_SQL = """
WITH done AS (
    UPDATE evals_cell SET status = %s, output = %s, request_id = %s, latency_ms = %s, cost_usd = %s,
           prompt_tokens = %s, completion_tokens = %s, outcomes = %s, score = %s, passed = %s, error = %s,
           finished_at = now(), lease_expires_at = NULL
    WHERE id = %s AND status = 'running' AND attempts = %s
    RETURNING run_id
)
UPDATE evals_run SET cells_done = cells_done + 1, cells_failed = cells_failed + %s, cost_usd = cost_usd + %s
WHERE id IN (SELECT run_id FROM done)
RETURNING id
"""


def cells_claim(*, run_id: int, limit: int) -> list[dict]:
    """Claim up to `limit` pending cells of the run under a lease (SKIP LOCKED: concurrent workers never
    claim the same cell). Each claim increments `attempts`, which is the lease's token for cell_finish."""
    if connection.vendor != "postgresql":
        return _cells_claim_portable(run_id=run_id, limit=limit)
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [float(settings.STEWARD_EVALS_LEASE_SECONDS), run_id, run_id, limit])
        rows = cursor.fetchall()
    return [{"id": r[0], "variant_id": r[1], "item_id": r[2], "repeat": r[3], "attempts": r[4]} for r in rows]


def _cells_claim_portable(*, run_id: int, limit: int) -> list[dict]:
    # SQLite (make run's default) has no SKIP LOCKED, but it runs one writer at a time: a transaction is enough.
    from django.db.models import F

    lease = timezone.now() + timezone.timedelta(seconds=settings.STEWARD_EVALS_LEASE_SECONDS)
    with transaction.atomic():
        if Run.objects.filter(pk=run_id, cancel_requested_at__isnull=False).exists():
            return []
        ids = list(
            Cell.objects.filter(run_id=run_id, status=CellStatus.PENDING)
            .order_by("id")
            .values_list("id", flat=True)[:limit]
        )
        Cell.objects.filter(pk__in=ids, status=CellStatus.PENDING).update(
            status=CellStatus.RUNNING, attempts=F("attempts") + 1, lease_expires_at=lease
        )
        return list(
            Cell.objects.filter(pk__in=ids).values("id", "variant_id", "item_id", "repeat", "attempts").order_by("id")
        )


def cell_lease_extend(*, cell_id: int, attempts: int) -> bool:
    """Extend the lease of a cell still held under this claim; False if it was taken away (swept, cancelled)."""
    return bool(
        Cell.objects.filter(pk=cell_id, status=CellStatus.RUNNING, attempts=attempts).update(
            lease_expires_at=timezone.now() + timezone.timedelta(seconds=settings.STEWARD_EVALS_LEASE_SECONDS)
        )
    )


def cell_finish(*, cell_id: int, attempts: int, result: dict) -> bool:
    """Record a cell's one result if this claim still holds it (status running, same attempt); the run's
    counters move in the same statement. False (nothing written) when the claim was lost."""
    error = result.get("error", "")
    status = CellStatus.ERROR if error else CellStatus.DONE
    cost = Decimal(str(result.get("cost_usd") or 0))
    if connection.vendor != "postgresql":
        return _cell_finish_portable(cell_id=cell_id, attempts=attempts, result=result, status=status, cost=cost)
    with connection.cursor() as cursor:
        cursor.execute(
            _FINISH_SQL,
            _finish_params(cell_id, attempts, result),
        )
        return cursor.fetchone() is not None


def cells_finish_many(results: list[tuple[int, int, dict]]) -> None:
    """cell_finish for a batch of (cell id, attempts, result), in one transaction (pipelined on PostgreSQL)."""
    if connection.vendor != "postgresql" or len(results) == 1:
        for cell_id, attempts, result in results:
            cell_finish(cell_id=cell_id, attempts=attempts, result=result)
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(
            _FINISH_SQL, [_finish_params(cell_id, attempts, result) for cell_id, attempts, result in results]
        )


def _finish_params(cell_id: int, attempts: int, result: dict) -> list:
    import json

    error = result.get("error", "")
    cost = Decimal(str(result.get("cost_usd") or 0))
    return [
        CellStatus.ERROR if error else CellStatus.DONE,
        result.get("output", ""),
        result.get("request_id", "")[:64],
        result.get("latency_ms"),
        cost,
        result.get("prompt_tokens", 0),
        result.get("completion_tokens", 0),
        json.dumps(result.get("outcomes", [])),
        result.get("score"),
        result.get("passed"),
        error[:5000],
        cell_id,
        attempts,
        1 if error else 0,
        cost,
    ]


def _cell_finish_portable(*, cell_id: int, attempts: int, result: dict, status: str, cost: Decimal) -> bool:
    from django.db.models import F

    error = result.get("error", "")
    with transaction.atomic():
        changed = Cell.objects.filter(pk=cell_id, status=CellStatus.RUNNING, attempts=attempts).update(
            status=status,
            output=result.get("output", ""),
            request_id=result.get("request_id", "")[:64],
            latency_ms=result.get("latency_ms"),
            cost_usd=cost,
            prompt_tokens=result.get("prompt_tokens", 0),
            completion_tokens=result.get("completion_tokens", 0),
            outcomes=result.get("outcomes", []),
            score=result.get("score"),
            passed=result.get("passed"),
            error=error[:5000],
            finished_at=timezone.now(),
            lease_expires_at=None,
        )
        if changed:
            run_id = Cell.objects.filter(pk=cell_id).values_list("run_id", flat=True).first()
            Run.objects.filter(pk=run_id).update(
                cells_done=F("cells_done") + 1,
                cells_failed=F("cells_failed") + (1 if error else 0),
                cost_usd=F("cost_usd") + cost,
            )
    return bool(changed)


def cells_cancel_open(*, run_id: int) -> int:
    """Cancel every pending or running cell of a run (the run was asked to stop)."""
    return Cell.objects.filter(run_id=run_id, status__in=[CellStatus.PENDING, CellStatus.RUNNING]).update(
        status=CellStatus.CANCELLED, finished_at=timezone.now(), lease_expires_at=None
    )


def cells_sweep() -> dict:
    """Re-queue running cells whose lease expired (their worker died or stalled): back to pending, or error
    once they used STEWARD_EVALS_MAX_ATTEMPTS claims. Returns counts and the runs touched."""
    now = timezone.now()
    expired = Cell.objects.filter(status=CellStatus.RUNNING, lease_expires_at__lt=now)
    runs = set(expired.values_list("run_id", flat=True).distinct())
    failed = expired.filter(attempts__gte=settings.STEWARD_EVALS_MAX_ATTEMPTS).update(
        status=CellStatus.ERROR,
        error="the cell's worker stopped (lease expired) too many times",
        finished_at=now,
        lease_expires_at=None,
    )
    requeued = Cell.objects.filter(status=CellStatus.RUNNING, lease_expires_at__lt=now).update(
        status=CellStatus.PENDING, lease_expires_at=None
    )
    for run_id in runs:
        run_counters_refresh(run_id)
    return {"requeued": requeued, "failed": failed, "runs": sorted(runs)}


def runs_sweep(*, kick) -> dict:
    """The sweeper: cells_sweep, then for every open run: fail it past its deadline, end it when no cell is
    open, or `kick(run_id)` (enqueue execution) when it has pending cells and no live worker's heartbeat."""
    from core.redis import redis_client
    from evals.executor import ALIVE_KEY

    swept = cells_sweep()
    now = timezone.now()
    ended, kicked, failed = [], [], []
    client = redis_client()
    for run in Run.objects.filter(status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).only("id", "deadline"):
        if run.deadline < now:
            if run_fail(run_id=run.id, error="the run's deadline passed"):
                failed.append(run.id)
            continue
        if run_finish_if_done(run_id=run.id):
            ended.append(run.id)
            continue
        pending = Cell.objects.filter(run_id=run.id, status=CellStatus.PENDING).exists()
        if pending and not client.exists(ALIVE_KEY.format(run_id=run.id)):
            # Marked alive at once, so the next sweep does not kick it again before the task starts.
            client.set(ALIVE_KEY.format(run_id=run.id), "kicked", ex=60)
            kick(run.id)
            kicked.append(run.id)
    return {**swept, "ended": ended, "kicked": kicked, "failed": failed}
