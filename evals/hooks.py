"""What happens when a run ends: its promotion gate is settled and a scheduled run is compared with
the previous one. Connected (EvalsConfig.ready) to the audit event that records a run's end (the runner
ends a run with a conditional queryset update, which sends no model signal, and audits it in the same
transaction) and to Run's post_save (a run saved as ended); both act after commit, and the drift beat
task settles anything they missed."""

from __future__ import annotations

import logging

from django.db import transaction

from evals.models import RunStatus, RunTrigger

logger = logging.getLogger(__name__)

ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


def run_finished(run) -> None:
    """Settle what depends on an ended run. Never raises: the run's own bookkeeping must not fail for it."""
    from evals.drift import drift_run_finished
    from evals.gate import gate_run_finished

    try:
        gate_run_finished(run)
        if run.trigger == RunTrigger.SCHEDULE:
            drift_run_finished(run)
    except Exception:
        logger.exception("run %s: settling its gate or drift check failed (the beat task retries)", run.pk)


def run_saved(sender, instance, created: bool, update_fields=None, **kwargs) -> None:
    if instance.status not in ENDED:
        return
    if update_fields is not None and "status" not in update_fields:
        return
    if instance.promotion_request_id is None and instance.trigger not in (RunTrigger.SCHEDULE, RunTrigger.GATE):
        # A run started by hand can still decide a gate (it compares the same versions).
        from registry.models import PromotionRequest, PromotionStatus

        if not PromotionRequest.objects.filter(prompt_id=instance.prompt_id, status=PromotionStatus.PENDING).exists():
            return
    run_id = instance.pk

    def settle() -> None:
        from evals.models import Run

        run = Run.objects.filter(pk=run_id).first()
        if run is not None:
            run_finished(run)

    transaction.on_commit(settle)


def audit_saved(sender, instance, created: bool, **kwargs) -> None:
    if not created or instance.action != "eval_run.finished" or instance.target_type != "eval_run":
        return
    run_id = int(instance.target_id)

    def settle() -> None:
        from evals.models import Run

        run = Run.objects.filter(pk=run_id).first()
        if run is not None and run.status in ENDED:
            run_finished(run)

    transaction.on_commit(settle)
