"""Drift watch: scheduled runs against a label; a run worse than the previous one raises an alert
(DriftAlert shown as a banner, an audit event, a signed webhook)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from billing.services import billing_settings_update
from evals.drift import drift_alert_webhook_send, drift_run_finished, drift_tick
from evals.models import DriftAlert, Run, RunStatus
from tests.evals.ui_factories import dataset_make, guarded_prompt, run_make, suite_make
from tests.helpers import SECRET, SYSTEM, webhook_verify

pytestmark = pytest.mark.django_db
N = 40


@pytest.fixture
def watched(organisation):
    prompt, v1, _ = guarded_prompt(organisation)
    dataset, version, _ = dataset_make(organisation, n=N)
    suite = suite_make(
        organisation, dataset, schedule_prompt_id=prompt.id, schedule_label="production", schedule_minutes=60
    )
    return prompt, v1, suite, version


def scheduled_run(watched, passes: list[bool]) -> Run:
    prompt, v1, suite, version = watched
    return run_make(
        suite=suite,
        prompt=prompt,
        version=version,
        variants=[("baseline", v1, True, passes), ("candidate", v1, False, passes)],
        trigger="schedule",
        summarise=False,
    )


def test_a_worse_scheduled_run_raises_one_alert_audited_and_signed(
    organisation, watched, receiver, django_capture_on_commit_callbacks
):
    billing_settings_update(organisation=organisation, actor=SYSTEM, webhook_url=receiver.url, webhook_secret=SECRET)
    first = scheduled_run(watched, [True] * N)
    assert drift_run_finished(first) is None  # nothing to compare with yet
    same = scheduled_run(watched, [True] * N)
    assert drift_run_finished(same) is None
    assert same.__class__.objects.get(pk=same.pk).summary["drift"]["previous_run"] == first.id
    # The model behind the unchanged name got worse: 15 of 40 items now fail.
    with django_capture_on_commit_callbacks() as callbacks:
        worse = scheduled_run(watched, [False] * 15 + [True] * (N - 15))
        alert = drift_run_finished(worse)
    assert alert is not None and alert.previous_run_id == same.id and alert.run_id == worse.id
    assert "pass rate 1.00 → 0.62" in alert.message
    assert drift_run_finished(worse) is None and DriftAlert.objects.count() == 1  # compared once
    worse.refresh_from_db()
    verdicts = {c["metric"]: c["verdict"] for c in worse.summary["drift"]["comparisons"]}
    assert verdicts == {"pass_rate": "regressed", "score": "regressed"}
    event = AuditEvent.objects.get(action="eval_drift.detected")
    assert event.target_id == str(worse.id) and event.after["previous_run"] == same.id
    assert len([c for c in callbacks if "drift_run_finished" in c.__qualname__]) == 1  # the webhook delivery
    assert drift_alert_webhook_send(alert_id=alert.id) == "sent"
    [delivered] = receiver.requests
    payload = webhook_verify(delivered, SECRET)
    assert payload["type"] == "eval.drift_detected" and payload["run_id"] == worse.id


def test_a_better_or_equal_run_raises_nothing(watched):
    first = scheduled_run(watched, [False] * 10 + [True] * (N - 10))
    drift_run_finished(first)
    better = scheduled_run(watched, [True] * N)
    assert drift_run_finished(better) is None
    assert not DriftAlert.objects.exists()


def test_the_beat_starts_due_scheduled_runs_once_per_period(organisation, watched):
    _prompt, v1, suite, _ = watched
    now = timezone.now()
    result = drift_tick(now)
    [run] = Run.objects.filter(trigger="schedule")
    assert result["started"] == [run.id] and run.status == RunStatus.QUEUED
    assert {(v.name, v.prompt_version_id) for v in run.variants.all()} == {("baseline", v1.id), ("candidate", v1.id)}
    assert drift_tick(now + timedelta(minutes=30))["started"] == []  # not due yet
    assert len(drift_tick(now + timedelta(minutes=61))["started"]) == 1
    suite.refresh_from_db()
    assert suite.last_scheduled_at == now + timedelta(minutes=61)


def test_the_beat_compares_finished_scheduled_runs_it_has_not_seen(watched):
    first = scheduled_run(watched, [True] * N)
    worse = scheduled_run(watched, [False] * 20 + [True] * (N - 20))
    suite = watched[2]
    suite.last_scheduled_at = timezone.now()
    suite.save()
    result = drift_tick()  # nothing due: it only compares
    assert result["started"] == [] and len(result["alerts"]) == 1
    first.refresh_from_db()
    assert "drift" in first.summary and DriftAlert.objects.get().run_id == worse.id
