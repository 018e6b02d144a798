"""Runs survive what happens to workers and providers: a worker SIGKILLed mid-run (the sweeper re-queues its
cells and another worker finishes with exactly one result per cell), cancellation (cells stop within seconds)
and rate limits (the upstream answers 429 with Retry-After; the executor backs off and the run completes)."""

from __future__ import annotations

import time

import pytest

from accounts.models import ApiKey
from evals import services
from evals.models import Cell, Run, RunStatus
from evals.tasks import sweep_stuck_cells
from tests.evals.runfixtures import dataset_with, suite_with
from tests.helpers import ACTOR, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _run(run_id: int) -> Run:
    return Run.objects.get(pk=run_id)


def test_killed_worker_leaves_exactly_one_result_per_cell(organisation, eval_prompt, proxy, dev_upstream, start_worker):
    dev_upstream.control(delay_ms=300)
    suite = suite_with(organisation, dataset_with(organisation, 20), concurrency=4)
    first = start_worker(STEWARD_EVALS_LEASE_SECONDS="5")
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    wait_until(lambda: _run(run.id).cells_done >= 6, timeout=30, context=first.log)
    first.kill()
    held = Cell.objects.filter(run_id=run.id, status="running").count()
    assert held > 0, "the killed worker held no cell: the test proves nothing"
    assert _run(run.id).status == RunStatus.RUNNING
    second = start_worker(STEWARD_EVALS_LEASE_SECONDS="5")
    # Beat is not running here: sweep as it would, until the run ends.
    sweeps = []

    def swept_and_finished():
        sweeps.append(sweep_stuck_cells())
        return _run(run.id).status in ("completed", "failed", "cancelled")

    wait_until(swept_and_finished, timeout=60, interval=1.0, context=second.log)
    run = _run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert sum(s["requeued"] for s in sweeps) == held
    assert any(run.id in s["kicked"] for s in sweeps)
    cells = Cell.objects.filter(run=run)
    assert cells.count() == 40 and set(cells.values_list("status", flat=True)) == {"done"}
    assert run.cells_done == 40 and all(c.output and c.request_id for c in cells)
    # The re-queued cells were claimed again (attempt 2); every cell has one result.
    assert cells.filter(attempts=2).count() == held
    assert ApiKey.objects.get(pk=run.api_key_id).revoked_at is not None


def test_cancel_stops_cells_within_seconds(organisation, eval_prompt, proxy, dev_upstream, start_worker):
    dev_upstream.control(delay_ms=400)
    suite = suite_with(organisation, dataset_with(organisation, 40), concurrency=4)
    worker = start_worker()
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    wait_until(lambda: _run(run.id).cells_done >= 4, timeout=30, context=worker.log)
    asked = time.monotonic()
    services.run_cancel(run=_run(run.id), actor=ACTOR)
    wait_until(lambda: _run(run.id).status == RunStatus.CANCELLED, timeout=5, interval=0.05, context=worker.log)
    assert time.monotonic() - asked < 3.0
    requests_then = dev_upstream.stats()["requests"]
    time.sleep(1.5)
    assert dev_upstream.stats()["requests"] == requests_then, "cells were still being called after the cancel"
    statuses = list(Cell.objects.filter(run_id=run.id).values_list("status", flat=True))
    assert "pending" not in statuses and "running" not in statuses
    assert statuses.count("cancelled") >= 40  # most of the 80 cells never ran
    run = _run(run.id)
    assert run.summary == {} and ApiKey.objects.get(pk=run.api_key_id).revoked_at is not None


def test_rate_limited_cells_back_off_and_the_run_completes(
    organisation, eval_prompt, proxy, dev_upstream, start_worker, settings
):
    # The proxy passes the upstream's 429s on (its circuit kept closed here, so they stay 429s rather than a
    # 503 with a 30 s cooldown, which the executor would also wait out): the executor retries after Retry-After.
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 100
    dev_upstream.control(fail_status=429, fail_count=5, retry_after=1)
    suite = suite_with(organisation, dataset_with(organisation, 2), concurrency=1)
    worker = start_worker()
    started = time.monotonic()
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    wait_until(lambda: _run(run.id).status not in ("queued", "running"), timeout=60, interval=0.2, context=worker.log)
    run = _run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert set(Cell.objects.filter(run=run).values_list("status", flat=True)) == {"done"}
    stats = dev_upstream.stats()
    assert stats["failed"] == 5 and stats["completed"] == 4
    assert worker.log().count("HTTP 429") >= 2 and "rate-limited answers retried" in worker.log()
    assert time.monotonic() - started >= 1.0  # Retry-After was respected at least once
