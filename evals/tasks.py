"""Celery tasks of evaluations: executing a run's cells, and the sweeper that recovers stuck work."""

from __future__ import annotations

from celery import shared_task

# Imported with the tasks, so a worker loads them (aiohttp, the assertions, numpy/scipy for the summary) when it
# starts rather than during a run's first cells: measured at about half a second on the bench machine.
from evals import executor as _executor  # noqa: F401
from evals import summary as _summary  # noqa: F401

# A task executes cells for at most this long, then hands the rest of the run to a fresh task (so no task
# outlives the time limits, and a long run moves between workers as they come and go).
SLICE_SECONDS = 600


@shared_task(
    name="evals.run_execute",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=SLICE_SECONDS + 240,
    time_limit=SLICE_SECONDS + 300,
)
def run_execute(run_id: int) -> None:
    """Execute the run's pending cells (evals.executor). Idempotent: cells are claimed under leases, and a
    result is written only by the claim holding its cell, so any number of these may run for one run."""
    from evals.executor import execute

    if execute(run_id, slice_seconds=SLICE_SECONDS) == "more":
        run_execute.delay(run_id)


@shared_task(name="evals.sweep_stuck_cells", soft_time_limit=60, time_limit=75)
def sweep_stuck_cells() -> dict:
    """Re-queue cells whose lease expired, end runs with nothing left to do, fail runs past their deadline,
    and re-kick runs with pending cells that no live worker is executing. Idempotent."""
    from evals.runs import runs_sweep

    return runs_sweep(kick=lambda run_id: run_execute.delay(run_id))
