"""The demo seed: a dataset, a suite and a finished run scored by the real assertions and statistics."""

import pytest

from evals.demo import demo_seed
from evals.models import Cell, Run, RunStatus
from registry.demo import demo_seed as registry_demo_seed
from tests.helpers import SYSTEM, login

pytestmark = pytest.mark.django_db


def test_demo_seed_leaves_a_finished_run_with_verdicts(organisation, admin, client):
    registry_demo_seed(organisation=organisation, admin=admin.user, actor=SYSTEM)
    lines = demo_seed(organisation=organisation, admin=admin.user, actor=SYSTEM)
    assert demo_seed(organisation=organisation, admin=admin.user, actor=SYSTEM) == lines  # idempotent
    run = Run.objects.get()
    assert run.status == RunStatus.COMPLETED and run.trigger == "demo" and f"run #{run.id}" in lines[0]
    assert Cell.objects.filter(run=run).count() == 40 and run.cells_done == 40
    summary = run.summary
    assert [v["name"] for v in summary["variants"]] == ["baseline", "candidate"]
    # v2 forgets the customer's name on three items, v1 on two others: both have item-level failures.
    assert summary["variants"][0]["pass_rate"] == pytest.approx(18 / 20)
    assert summary["variants"][1]["pass_rate"] == pytest.approx(17 / 20)
    metrics = {c["metric"]: c for c in summary["comparisons"]}
    assert {"pass_rate", "score"} <= set(metrics) and run.verdict
    assert all(
        c["verdict"] in ("improved", "regressed", "no_significant_difference", "non_inferior") for c in metrics.values()
    )
    page = login(client, admin).get(f"/evaluations/runs/{run.id}/").content.decode()
    assert "names-the-customer" in page and "Pass rate (95% Wilson)" in page
