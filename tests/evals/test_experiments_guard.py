"""Experiments measured from the request log: per-variant statistics, comparisons with the control, and
the guard rails that end an experiment (audited) and put every user back on the control."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import requests
from django.utils import timezone
from scipy import stats as scipy_stats

from audit.models import AuditEvent
from billing.models import UsageLine
from config.celery import beat_schedule
from evals import experiment_tasks
from evals.experiments import experiment_breaches, experiment_report, experiment_variant_stats
from proxy.models import Feedback, RequestLog
from registry import services as registry
from registry.experiments import experiment_start
from registry.models import ExperimentStatus
from tests.helpers import SYSTEM, wait_until


def _prompt(organisation, name="greeter"):
    prompt = registry.prompt_create(organisation=organisation, name=name, actor=SYSTEM)
    for text in ("Hello {{ who }}", "Howdy {{ who }}"):
        registry.prompt_version_create(
            prompt=prompt,
            messages=[{"role": "user", "content": text}],
            model="dev-small",
            params={},
            variables=[{"name": "who", "type": "string", "required": True}],
            commit_message=text,
            actor=SYSTEM,
        )
    registry.label_move(prompt=prompt, label="production", version=1, reason="ship", actor=SYSTEM)
    return prompt


def _experiment(prompt, **limits):
    return experiment_start(
        prompt=prompt,
        label="production",
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        actor=SYSTEM,
        **limits,
    )


def _rows(experiment, variant: str, *, n: int, errors: int = 0, latency: float = 100.0, cost: str | None = None):
    """`n` request-log rows served from `variant`, the first `errors` of them failed; with `cost`, a ledger
    line for each."""
    version = 1 if variant == "control" else 2
    started = timezone.now()
    rows, lines = [], []
    for i in range(n):
        request_id = f"req_{uuid.uuid4().hex}"
        rows.append(
            RequestLog(
                request_id=request_id,
                organisation_id=experiment.prompt.organisation_id,
                endpoint="chat.completions",
                model="dev-small",
                prompt_id=experiment.prompt_id,
                prompt_version_number=version,
                status="error" if i < errors else "ok",
                http_status=502 if i < errors else 200,
                started_at=started,
                latency_ms=latency + i,
                experiment_id=experiment.id,
                experiment_variant=variant,
                experiment_sticky=True,
            )
        )
        if cost is not None:
            lines.append(
                UsageLine(
                    request_id=request_id,
                    attempt=1,
                    organisation_id=experiment.prompt.organisation_id,
                    model="dev-small",
                    status="ok",
                    cost=Decimal(cost),
                    basis="priced",
                    started_at=started,
                )
            )
    RequestLog.objects.bulk_create(rows)
    UsageLine.objects.bulk_create(lines)
    return [r.request_id for r in rows]


def test_guard_rail_ends_the_experiment_audited_and_the_proxy_serves_the_control(proxy, organisation):
    assert beat_schedule()["evals-experiments-guard"]["task"] == "evals.experiments_guard"
    experiment = _experiment(_prompt(organisation), max_error_rate=0.2, min_sample=10)

    def version_for(user: str) -> int:
        response = requests.post(
            f"{proxy.url}/chat/completions",
            json={"prompt": {"name": "greeter", "variables": {"who": "Ada"}}, "user": user},
            headers=proxy.headers(),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return int(response.headers["x-steward-prompt-version"].split(":")[1])

    on_variant = [u for u in (f"user-{i}" for i in range(30)) if version_for(u) == 2]
    assert on_variant

    _rows(experiment, "control", n=20)
    _rows(experiment, "v2", n=9, errors=9)
    assert experiment_tasks.experiments_guard() == 0  # 9 requests: below min_sample, nothing happens
    _rows(experiment, "v2", n=11)  # 9 errors in 20 requests: 45% > 20%
    assert experiment_tasks.experiments_guard() == 1

    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.ENDED
    assert experiment.end_detail["variant"] == "v2" and experiment.end_detail["metric"] == "error_rate"
    assert experiment.end_detail["value"] == pytest.approx(0.45) and experiment.end_detail["n"] == 20
    event = AuditEvent.objects.get(action="experiment.ended", target_id=str(experiment.id))
    assert event.actor_type == "system" and "error rate" in event.after["reason"]
    assert experiment_tasks.experiments_guard() == 0  # already ended: no second event
    assert AuditEvent.objects.filter(action="experiment.ended").count() == 1

    wait_until(lambda: all(version_for(u) == 1 for u in on_variant), timeout=2.0, interval=0.1)
    assert experiment.prompt.labels.get(name="production").version.number == 1


@pytest.mark.django_db
def test_latency_and_cost_limits(organisation):
    experiment = _experiment(_prompt(organisation), max_latency_p95_ms=500, max_cost_per_request="0.01", min_sample=5)
    _rows(experiment, "control", n=20, latency=100, cost="0.001")
    _rows(experiment, "v2", n=20, latency=490, cost="0.02")
    variants = {v.name: v for v in experiment_variant_stats(experiment)}
    # latencies 490..509: numpy's linear p95 is 490 + 0.95 * 19
    assert variants["v2"].latency_p95 == pytest.approx(490 + 0.95 * 19)
    assert variants["v2"].cost_mean == pytest.approx(0.02) and variants["control"].cost_mean == pytest.approx(0.001)
    breaches = {(b.variant, b.metric) for b in experiment_breaches(experiment, list(variants.values()))}
    assert breaches == {("v2", "latency_p95_ms"), ("v2", "cost_per_request")}


@pytest.mark.django_db
def test_report_compares_variants_with_the_control(organisation):
    experiment = _experiment(_prompt(organisation))
    control_ids = _rows(experiment, "control", n=200, errors=10, latency=100)
    variant_ids = _rows(experiment, "v2", n=200, errors=30, latency=100)
    scores_c = [1, 1, -1, 1, 0.5, 1, -1, 1, 1, 1]
    scores_v = [-1, -1, 1, -1, -0.5, -1, -1, 1, -1, -1]
    for ids, scores in ((control_ids, scores_c), (variant_ids, scores_v)):
        Feedback.objects.bulk_create(
            Feedback(organisation=organisation, request_id=rid, source="user:1", score=s)
            for rid, s in zip(ids, scores, strict=False)
        )
    # Rows from before the experiment started do not count.
    RequestLog.objects.filter(request_id=control_ids[0]).update(started_at=experiment.started_at - dt.timedelta(1))

    report = experiment_report(experiment)
    control, variant = report.variants
    assert (control.requests, control.errors, variant.requests, variant.errors) == (199, 9, 200, 30)
    assert control.feedback_n == 9 and variant.feedback_n == 10
    assert control.error_low < control.error_rate < control.error_high
    assert variant.feedback_low <= variant.feedback_mean <= variant.feedback_high

    by_metric = {c.metric: c for c in report.comparisons}
    error = by_metric["error_rate"]
    assert error.diff == pytest.approx(30 / 200 - 9 / 199)
    z = (30 / 200 - 9 / 199) / ((39 / 399) * (1 - 39 / 399) * (1 / 200 + 1 / 199)) ** 0.5
    assert error.p == pytest.approx(2 * scipy_stats.norm.sf(abs(z)))
    feedback = by_metric["feedback"]
    expected = scipy_stats.ttest_ind(scores_v, scores_c[1:], equal_var=False)
    assert feedback.p == pytest.approx(expected.pvalue)
    # Holm over the comparisons: each adjusted p is at least its raw p, and the smallest is m * p.
    assert all(c.p_adjusted >= c.p for c in report.comparisons)
    smallest = min(report.comparisons, key=lambda c: c.p)
    assert smallest.p_adjusted == pytest.approx(min(1.0, len(report.comparisons) * smallest.p))
    assert error.verdict == "regressed" and feedback.verdict == "regressed"
    assert by_metric["latency_ms"].verdict == "no_significant_difference"
    assert report.breaches == []
