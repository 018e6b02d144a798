"""Assertions that call models go through the proxy with the run's key: the LLM judge (a pinned registry version,
temperature 0, a fixed seed) and embeddings; and the per-model limit is shared by every worker (Redis)."""

from __future__ import annotations

import json

import pytest

from evals import services
from evals.executor import JUDGE_SEED
from evals.models import Cell, Run, RunStatus
from tests.evals.runfixtures import dataset_with, run_ended, suite_with
from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import ACTOR, route_with_deployments, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_judge_and_embeddings_through_the_proxy(
    organisation, eval_prompt, proxy, dev_upstream, dev_upstream_b, start_worker, settings
):
    # The judge answers from its own upstream with a fixed verdict; embeddings come from the dev upstream.
    dev_upstream_b.control(reply=json.dumps({"score": 0.9, "reason": "names the customer"}))
    route_with_deployments(organisation, "dev-large", [{"api_base": dev_upstream_b.url, "model": "dev-large"}])
    route_with_deployments(
        organisation, "text-embedding-3-small", [{"api_base": dev_upstream.url, "model": "dev-embed"}]
    )
    judge_prompt = PromptFactory(organisation=organisation, name="grader")
    judge_version = PromptVersionFactory(
        prompt=judge_prompt, text="Grade it.", system="You grade.", model="dev-large", variables=[], params={}
    )
    suite = suite_with(
        organisation,
        dataset_with(organisation, 2),
        assertions=[
            {"type": "llm-judge", "rubric": "Does it greet the customer by name?",
             "judge_prompt_version_id": judge_version.id, "threshold": 0.8},
            {"type": "embedding-cosine", "value": "{{expected}}", "threshold": 0.0, "weight": 0.001},
        ],
        pass_threshold=0.5,
    )  # fmt: skip
    worker = start_worker()
    run = services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2)
    run = wait_until(run_ended(run.id), timeout=60, interval=0.2, context=worker.log)
    assert run.status == RunStatus.COMPLETED, run.error
    cells = list(Cell.objects.filter(run=run))
    assert len(cells) == 4 and all(c.status == "done" for c in cells), [c.error for c in cells]
    for cell in cells:
        judge, embedding = cell.outcomes
        assert judge["passed"] and judge["score"] == 0.9 and "names the customer" in judge["detail"]
        assert embedding["type"] == "embedding-cosine" and "cosine" in embedding["detail"]
        assert cell.passed is True
    judged = dev_upstream_b.stats()["last_request"]
    assert judged["temperature"] == 0 and judged["seed"] == JUDGE_SEED and judged["model"] == "dev-large"
    assert "Does it greet the customer by name?" in json.dumps(judged["messages"])
    assert dev_upstream_b.stats()["requests"] == 4  # one judgement per cell


def test_model_limit_is_shared_by_workers(organisation, eval_prompt, proxy, dev_upstream, start_worker):
    """Two workers, two runs of 8 concurrent cells each, on one model limited to 3 calls at a time: the model's
    semaphore (sampled in Redis throughout) never holds more than 3, and is full most of the time."""
    from core.redis import redis_client
    from evals.limits import model_limit_key

    dev_upstream.control(delay_ms=150)
    suite = suite_with(organisation, dataset_with(organisation, 12), concurrency=8)
    first = start_worker(STEWARD_EVALS_MODEL_CONCURRENCY="3")
    second = start_worker(STEWARD_EVALS_MODEL_CONCURRENCY="3")
    runs = [services.run_start(suite=suite, prompt=eval_prompt, actor=ACTOR, candidate_version=2) for _ in range(2)]
    key, client, held = model_limit_key(organisation.id, "dev-small"), redis_client(), []

    def all_finished():
        held.append(client.zcard(key))
        return all(Run.objects.get(pk=r.id).status not in ("queued", "running") for r in runs)

    wait_until(all_finished, timeout=90, interval=0.02, context=lambda: first.log() + second.log())
    assert [Run.objects.get(pk=r.id).status for r in runs] == ["completed", "completed"]
    assert max(held) == 3
    assert sum(1 for n in held if n == 3) > len(held) / 3
    # Both workers executed cells (one run each), through the one limit.
    assert "evals.run_execute" in first.log() and "evals.run_execute" in second.log()
    assert dev_upstream.stats()["completed"] == 2 * 24
