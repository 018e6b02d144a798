"""The promotion gate: a gated label's promotion needs a completed regression run of the candidate
against the label's version with every gating metric improved or non-inferior and no newly failing
critical case; an admin may override it with a written reason (audited)."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from core.actors import Actor
from core.errors import Conflict, Forbidden, ValidationFailed
from evals.gate import gate_evaluate, gate_refresh, gates_sweep, prompt_gate_set
from evals.models import PromptGate, RunStatus
from registry import services
from registry.models import GateStatus, Label
from tests.evals.ui_factories import dataset_make, guarded_prompt, run_make, suite_make
from tests.helpers import SYSTEM

ENGINEER = ["prompt_engineer"]
N = 30


@pytest.fixture(autouse=True)
def _no_autorun(settings):
    # These tests write the gate runs themselves; the automatic start is tested with the runner.
    settings.STEWARD_EVAL_GATE_AUTORUN = False


@pytest.fixture
def gated(organisation, prompt_engineer, second_prompt_engineer, admin):
    prompt, v1, v2 = guarded_prompt(organisation)
    dataset, version, _ = dataset_make(organisation, n=N, critical=("case-3",))
    suite = suite_make(organisation, dataset)
    prompt_gate_set(prompt=prompt, label="production", suite=suite, actor=Actor.for_user(admin.user), roles=["admin"])
    pat = Actor.for_user(prompt_engineer.user)
    quinn = Actor.for_user(second_prompt_engineer.user)
    return prompt, v1, v2, suite, version, pat, quinn


def request_promotion(prompt, pat, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        return services.promotion_request_create(
            prompt=prompt, label="production", version=2, reason="warmer tone", actor=pat, roles=ENGINEER
        )


def test_a_request_to_a_gated_label_is_pending_and_cannot_be_approved(gated, django_capture_on_commit_callbacks):
    prompt, _, _, _, _, pat, quinn = gated
    promotion = request_promotion(prompt, pat, django_capture_on_commit_callbacks)
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.PENDING
    assert "No regression run" in promotion.gate_detail["sentence"]
    with pytest.raises(Conflict) as exc:
        services.promotion_request_approve(promotion=promotion, actor=quinn, roles=ENGINEER)
    assert exc.value.code == "promotion_gate_not_passed"
    # An ungated label of another prompt is not affected.
    assert not PromptGate.objects.filter(label="staging").exists()


def test_a_regressed_run_blocks_the_promotion_and_says_why(gated, django_capture_on_commit_callbacks):
    prompt, v1, v2, suite, version, pat, quinn = gated
    promotion = request_promotion(prompt, pat, django_capture_on_commit_callbacks)
    # The candidate fails 12 items the baseline passes: a significant regression on both metrics.
    base = [True] * N
    cand = [False] * 12 + [True] * (N - 12)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_make(
            suite=suite,
            prompt=prompt,
            version=version,
            variants=[("baseline", v1, True, base), ("candidate", v2, False, cand)],
            trigger="gate",
            promotion_request_id=promotion.id,
        )
    assert run.verdict == "regressed"
    promotion.refresh_from_db()  # settled by the run's post-save hook
    assert promotion.gate_status == GateStatus.FAILED and promotion.gate_run_id == run.id
    sentence = promotion.gate_detail["sentence"]
    assert sentence.startswith(f"Blocked: in run #{run.id}, v2 against v1")
    assert "pass rate is regressed" in sentence and "case-3" in sentence and sentence.endswith(".")
    with pytest.raises(Conflict):
        services.promotion_request_approve(promotion=promotion, actor=quinn, roles=ENGINEER)
    assert Label.objects.get(prompt=prompt, name="production").version_id == v1.id
    events = AuditEvent.objects.filter(action="promotion.gate_changed", target_id=str(promotion.id))
    event = events.order_by("id").last()
    assert event.after == {"gate_status": "failed", "run_id": run.id}


def test_a_newly_failing_critical_case_alone_blocks(gated, django_capture_on_commit_callbacks):
    prompt, v1, v2, suite, version, pat, _ = gated
    promotion = request_promotion(prompt, pat, django_capture_on_commit_callbacks)
    base = [True] * N
    cand = [True] * N
    cand[3] = False  # one critical item; the rates stay non-inferior within a wide margin
    base[10] = False
    suite.margin = 0.2
    suite.save()
    run_make(
        suite=suite,
        prompt=prompt,
        version=version,
        variants=[("baseline", v1, True, base), ("candidate", v2, False, cand)],
    )
    promotion = gate_refresh(promotion)
    assert promotion.gate_status == GateStatus.FAILED
    assert promotion.gate_detail["failing_metrics"] == []
    assert promotion.gate_detail["newly_failing_critical"] == ["case-3"]
    assert "critical case case-3 newly fails" in promotion.gate_detail["sentence"]


def test_a_non_inferior_run_passes_and_the_promotion_goes_through(gated, django_capture_on_commit_callbacks):
    prompt, v1, v2, suite, version, pat, quinn = gated
    promotion = request_promotion(prompt, pat, django_capture_on_commit_callbacks)
    # A run started by hand (not the gate's) that compares exactly these versions decides too.
    same = [True] * N
    with django_capture_on_commit_callbacks(execute=True):
        run = run_make(
            suite=suite,
            prompt=prompt,
            version=version,
            variants=[("baseline", v1, True, same), ("candidate", v2, False, same)],
        )
    assert {c["verdict"] for c in run.summary["comparisons"]} == {"non_inferior"}
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.PASSED, promotion.gate_detail
    assert promotion.gate_detail["run_id"] == run.id and "non-inferior" in promotion.gate_detail["sentence"]
    move = services.promotion_request_approve(promotion=promotion, actor=quinn, roles=ENGINEER)
    assert move.to_version_id == v2.id


def test_a_run_of_other_versions_or_an_unfinished_run_does_not_decide(gated, django_capture_on_commit_callbacks):
    prompt, v1, v2, suite, version, pat, _ = gated
    promotion = request_promotion(prompt, pat, django_capture_on_commit_callbacks)
    same = [True] * N
    # Candidate v1 against v1: not the requested version.
    variants = [("baseline", v1, True, same), ("candidate", v1, False, same)]
    run_make(suite=suite, prompt=prompt, version=version, variants=variants)
    running = run_make(
        suite=suite,
        prompt=prompt,
        version=version,
        variants=[("baseline", v1, True, same), ("candidate", v2, False, same)],
        status=RunStatus.RUNNING,
        promotion_request_id=promotion.id,
    )
    services.promotion_request_gate_set(promotion=promotion, status="pending", run_id=running.id, actor=SYSTEM)
    promotion.refresh_from_db()
    status, detail = gate_evaluate(promotion)
    assert status == GateStatus.PENDING and f"run #{running.id} is still running" in detail["sentence"]
    # The run is cancelled: the gate fails and says to start a new run.
    running.status = RunStatus.CANCELLED
    running.save()
    assert gates_sweep() == 1
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.FAILED and "ended cancelled" in promotion.gate_detail["sentence"]


def test_an_admin_overrides_a_blocked_gate_with_a_reason(gated, admin, django_capture_on_commit_callbacks):
    prompt, _, v2, _, _, pat, quinn = gated
    promotion = request_promotion(prompt, pat, django_capture_on_commit_callbacks)
    services.promotion_request_gate_set(
        promotion=promotion, status="failed", actor=SYSTEM, detail={"sentence": "Blocked: pass rate is regressed."}
    )
    alice = Actor.for_user(admin.user)
    with pytest.raises(Forbidden):
        services.promotion_request_gate_override(promotion=promotion, reason="ship it", actor=pat, roles=ENGINEER)
    with pytest.raises(Forbidden):
        services.promotion_request_gate_override(
            promotion=promotion, reason="ship it", actor=Actor.for_api_key(key_id=1, prefix="sk"), roles=["admin"]
        )
    with pytest.raises(ValidationFailed):
        services.promotion_request_gate_override(promotion=promotion, reason="  ", actor=alice, roles=["admin"])
    promotion = services.promotion_request_gate_override(
        promotion=promotion, reason="hotfix for incident 42", actor=alice, roles=["admin"]
    )
    assert promotion.gate_status == GateStatus.PASSED and promotion.gate_detail["overridden"]
    assert promotion.gate_detail["blocked_sentence"] == "Blocked: pass rate is regressed."
    event = AuditEvent.objects.get(action="promotion.gate_overridden", target_id=str(promotion.id))
    assert event.after["reason"] == "hotfix for incident 42" and event.before["gate_status"] == "failed"
    # A later evaluation does not undo the override.
    assert gate_refresh(promotion).gate_status == GateStatus.PASSED
    with pytest.raises(Conflict):  # nothing left to override
        services.promotion_request_gate_override(promotion=promotion, reason="again", actor=alice, roles=["admin"])
    services.promotion_request_approve(promotion=promotion, actor=quinn, roles=ENGINEER)
    assert Label.objects.get(prompt=prompt, name="production").version_id == v2.id


def test_setting_a_gate_is_admin_only_protects_the_label_and_is_audited(organisation, admin, prompt_engineer):
    prompt, _, _ = guarded_prompt(organisation)
    dataset, _, _ = dataset_make(organisation, n=3)
    suite = suite_make(organisation, dataset)
    with pytest.raises(Forbidden):
        prompt_gate_set(
            prompt=prompt, label="staging", suite=suite, actor=Actor.for_user(prompt_engineer.user), roles=ENGINEER
        )
    alice = Actor.for_user(admin.user)
    prompt_gate_set(prompt=prompt, label="staging", suite=suite, actor=alice, roles=["admin"])
    prompt.refresh_from_db()
    assert "staging" in prompt.protected_labels
    event = AuditEvent.objects.get(action="eval_gate.changed")
    assert event.after == {"prompt": "guarded", "label": "staging", "suite": suite.name}
    prompt_gate_set(prompt=prompt, label="staging", suite=None, actor=alice, roles=["admin"])
    assert not PromptGate.objects.exists()
    assert AuditEvent.objects.filter(action="eval_gate.changed").count() == 2
