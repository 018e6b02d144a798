"""Runs end to end: a real Celery worker executes the cells through the proxy over HTTP (PostgreSQL, Redis,
the development upstream), with the run's own key, costs attributed, and a summary at the end."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey
from audit.models import AuditEvent
from billing.models import Budget
from core.errors import NotFound, ValidationFailed
from evals import services
from evals.models import Cell, CellStatus, Run, RunStatus
from tests.evals.runfixtures import dataset_with, run_ended, suite_with
from tests.helpers import ACTOR, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_run_start_creates_cells_and_a_scoped_key(organisation, eval_prompt):
    dataset = dataset_with(organisation, 4)
    suite = suite_with(organisation, dataset, repeats=2, cost_budget_usd="0.50")
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    assert run.cells_total == 2 * 4 * 2 == Cell.objects.filter(run=run, status=CellStatus.PENDING).count()
    variants = list(run.variants.order_by("position"))
    assert [(v.name, v.prompt_version_number, v.label) for v in variants] == [
        ("baseline", 1, "production"),
        ("candidate", 2, ""),
    ]
    key = ApiKey.objects.get(pk=run.api_key_id)
    assert key.name == f"eval run {run.id}" and key.allowed_prompts == ["support-reply"]
    budget = Budget.objects.get(api_key_id=key.id)
    assert (budget.scope, budget.period, str(budget.amount)) == ("api_key", "total", "0.500000000000")
    assert run.api_key_secret_encrypted and "stw_" not in run.api_key_secret_encrypted
    assert AuditEvent.objects.filter(action="eval_run.started", target_id=str(run.id)).exists()


def test_run_start_validates(organisation, eval_prompt, other_organisation):
    dataset = dataset_with(organisation, 2)
    suite = suite_with(organisation, dataset)
    with pytest.raises(NotFound):
        services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=9)
    with pytest.raises(NotFound):
        services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2, baseline_label="nope")
    with pytest.raises(ValidationFailed):
        services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2, model_override="gpt-9")
    with pytest.raises(ValidationFailed):
        services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, kind="ab", variants=[{"version": 1}])
    assert not Run.objects.exists()


def test_cancel_before_any_worker_ends_the_run_and_revokes_its_key(organisation, eval_prompt):
    suite = suite_with(organisation, dataset_with(organisation, 3))
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    run = services.run_cancel(run=run, actor=ACTOR)
    assert run.status == RunStatus.CANCELLED and run.api_key_secret_encrypted == ""
    assert set(Cell.objects.filter(run=run).values_list("status", flat=True)) == {"cancelled"}
    assert ApiKey.objects.get(pk=run.api_key_id).revoked_at is not None


def test_regression_run_end_to_end_through_the_proxy(organisation, eval_prompt, proxy, dev_upstream, start_worker):
    dataset = dataset_with(organisation, 8, critical=(0,))
    suite = suite_with(
        organisation,
        dataset,
        assertions=[
            {"type": "icontains", "value": "{{expected}}", "name": "names the customer"},
            {"type": "contains", "value": "Steward dev reply", "name": "dev reply"},
            {"type": "latency-at-most", "max_ms": 60000},
        ],
        concurrency=4,
    )
    worker = start_worker()
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2, trigger="cli")
    run = wait_until(run_ended(run.id), timeout=60, interval=0.2, context=worker.log)
    assert run.status == RunStatus.COMPLETED, run.error
    cells = list(Cell.objects.filter(run=run).select_related("item", "variant"))
    assert len(cells) == 16 and {c.status for c in cells} == {"done"}
    for cell in cells:
        assert cell.item.expected in cell.output and cell.passed is True and cell.score == 1.0
        assert cell.request_id.startswith("req_") and cell.latency_ms > 0 and cell.prompt_tokens > 0
        assert [o["name"] for o in cell.outcomes] == ["names the customer", "dev reply", "latency-at-most"]
        assert cell.cost_usd > 0
    # The upstream saw each variant's own template, called with the run's key (not the test's key).
    assert dev_upstream.stats()["requests"] == 16
    assert run.cells_done == 16 and run.cells_failed == 0
    assert run.cost_usd == sum(c.cost_usd for c in cells)
    key = ApiKey.objects.get(pk=run.api_key_id)
    assert key.revoked_at is not None and run.api_key_secret_encrypted == ""
    summary = run.summary
    assert [v["name"] for v in summary["variants"]] == ["baseline", "candidate"]
    assert summary["variants"][0]["pass_rate"] == 1.0 and summary["variants"][0]["n_items"] == 8
    metrics = {c["metric"]: c for c in summary["comparisons"]}
    assert set(metrics) == {"pass_rate", "score", "names the customer", "dev reply", "latency-at-most"}
    assert metrics["pass_rate"]["diff"] == 0 and metrics["pass_rate"]["verdict"] == "non_inferior"
    assert run.verdict == "non_inferior" and summary["newly_failing_critical"] == []
    assert AuditEvent.objects.filter(action="eval_run.finished", target_id=str(run.id)).exists()


def test_ab_run_with_repeats_and_model_override(organisation, eval_prompt, proxy, dev_upstream, start_worker):
    from tests.helpers import route_with_deployments

    route_with_deployments(organisation, "dev-large", [{"api_base": dev_upstream.url, "model": "dev-large"}])
    suite = suite_with(organisation, dataset_with(organisation, 3), repeats=2, reducer="pass_at_k")
    worker = start_worker()
    run = services.run_start(
        suite=suite,
        prompt=eval_prompt,
        actor=ACTOR,
        kind="ab",
        variants=[{"name": "A", "version": 1}, {"name": "B", "version": 2, "model_override": "dev-large"}],
    )
    run = wait_until(run_ended(run.id), timeout=60, interval=0.2, context=worker.log)
    assert run.status == RunStatus.COMPLETED, run.error
    b_cells = Cell.objects.filter(run=run, variant__name="B")
    assert b_cells.count() == 6 and set(b_cells.values_list("repeat", flat=True)) == {0, 1}
    assert dev_upstream.stats()["last_request"]["model"] in ("dev-small", "dev-large")
    assert {c["variant"] for c in run.summary["comparisons"]} == {"B"}


def test_run_budget_is_enforced_by_the_proxy_and_not_waited_on(
    organisation, eval_prompt, proxy, dev_upstream, start_worker
):
    # A budget far below one call's worst case: the proxy refuses every call of the run's key (429
    # budget_exceeded, with a Retry-After), and the executor records that at once instead of waiting.
    suite = suite_with(organisation, dataset_with(organisation, 3), cost_budget_usd="0.000000000001")
    worker = start_worker()
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    run = wait_until(run_ended(run.id), timeout=30, interval=0.2, context=worker.log)
    assert run.status == RunStatus.FAILED and run.error == "every cell failed"
    errors = list(Cell.objects.filter(run=run).values_list("error", flat=True))
    assert len(errors) == 6 and all(e.startswith("HTTP 429 budget_exceeded: Budget 'eval run") for e in errors)
    assert dev_upstream.stats()["requests"] == 0 and run.cost_usd == 0
    assert ApiKey.objects.get(pk=run.api_key_id).revoked_at is not None
