"""A promotion request to a gated label starts its regression run (trigger "gate"); when a real worker
finishes the run through the proxy, the gate is settled without anyone looking."""

from __future__ import annotations

import pytest

from core.actors import Actor
from evals.gate import prompt_gate_set
from evals.models import Run, RunStatus
from registry import services as registry_services
from registry.models import GateStatus, Label, PromotionRequest
from tests.evals.runfixtures import dataset_with, suite_with
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _gate(organisation, eval_prompt, admin):
    eval_prompt.protected_labels = ["production"]
    eval_prompt.save(update_fields=["protected_labels"])
    suite = suite_with(organisation, dataset_with(organisation, 6, critical=(0,)), name="gate-suite", concurrency=3)
    prompt_gate_set(
        prompt=eval_prompt, label="production", suite=suite, actor=Actor.for_user(admin.user), roles=["admin"]
    )
    return suite


def test_the_request_starts_a_gate_run_and_its_end_passes_the_gate(
    organisation, eval_prompt, admin, prompt_engineer, second_prompt_engineer, proxy, start_worker
):
    suite = _gate(organisation, eval_prompt, admin)
    worker = start_worker()
    promotion = registry_services.promotion_request_create(
        prompt=eval_prompt,
        label="production",
        version=2,
        reason="friendlier",
        actor=Actor.for_user(prompt_engineer.user),
        roles=["prompt_engineer"],
    )
    run = Run.objects.get()
    assert run.trigger == "gate" and run.promotion_request_id == promotion.id and run.suite_id == suite.id
    assert {(v.name, v.prompt_version_number) for v in run.variants.all()} == {("baseline", 1), ("candidate", 2)}
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.PENDING and promotion.gate_run_id == run.id

    def settled():
        p = PromotionRequest.objects.get(pk=promotion.pk)
        return p if p.gate_status != GateStatus.PENDING else None

    promotion = wait_until(
        settled, timeout=60, interval=0.2, context=lambda: f"run {Run.objects.get(pk=run.pk).status}\n{worker.log()}"
    )
    assert Run.objects.get(pk=run.pk).status == RunStatus.COMPLETED
    assert promotion.gate_status == GateStatus.PASSED, promotion.gate_detail
    assert f"Run #{run.id} shows v2 non-inferior to v1" in promotion.gate_detail["sentence"]
    registry_services.promotion_request_approve(
        promotion=promotion, actor=Actor.for_user(second_prompt_engineer.user), roles=["prompt_engineer"]
    )
    assert Label.objects.get(prompt=eval_prompt, name="production").version.number == 2


def test_a_gate_run_that_cannot_start_says_so(organisation, eval_prompt, admin, prompt_engineer):
    from evals.services import dataset_create
    from tests.helpers import ACTOR

    suite = _gate(organisation, eval_prompt, admin)
    suite.dataset = dataset_create(organisation=organisation, name="empty", actor=ACTOR)  # no version yet
    suite.save()
    promotion = registry_services.promotion_request_create(
        prompt=eval_prompt,
        label="production",
        version=2,
        reason="friendlier",
        actor=Actor.for_user(prompt_engineer.user),
        roles=["prompt_engineer"],
    )
    promotion.refresh_from_db()
    assert promotion.gate_status == GateStatus.PENDING
    assert promotion.gate_detail["sentence"].startswith("The regression run could not start:")
    assert not Run.objects.exists()
