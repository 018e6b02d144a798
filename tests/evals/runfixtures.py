"""Fixtures of the run tests (imported by name in each module: tests/evals/conftest.py belongs to no helper yet)."""

from __future__ import annotations

import pytest

from evals import services
from registry import services as registry_services
from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import ACTOR, CeleryWorker

NAMES = ["Ada", "Grace", "Linus", "Barbara", "Edsger", "Donald", "Margaret", "Ken", "Dennis", "Frances"]


@pytest.fixture
def eval_prompt(organisation):
    """support-reply: v1 (production) and v2, both on dev-small, replying with the customer's name."""
    prompt = PromptFactory(organisation=organisation, name="support-reply")
    v1 = PromptVersionFactory(prompt=prompt, text="Hello {{ customer_name }}")
    PromptVersionFactory(prompt=prompt, text="Hi there {{ customer_name }}")
    registry_services._label_set(prompt=prompt, label="production", version=v1, actor=ACTOR, reason="seed")
    prompt.refresh_from_db()
    return prompt


def dataset_with(organisation, n: int, name: str = "customers", critical: tuple[int, ...] = ()):
    dataset = services.dataset_create(organisation=organisation, name=name, actor=ACTOR)
    items = [
        {
            "key": f"c{i}",
            "variables": {"customer_name": f"{NAMES[i % len(NAMES)]}{i}"},
            "expected": f"{NAMES[i % len(NAMES)]}{i}",
            "critical": i in critical,
        }
        for i in range(n)
    ]
    services.dataset_version_create(dataset=dataset, items=items, note="seed", source="api", actor=ACTOR)
    return dataset


def suite_with(organisation, dataset, name: str = "basic", **fields):
    fields.setdefault("assertions", [{"type": "icontains", "value": "{{expected}}"}])
    return services.suite_create(organisation=organisation, actor=ACTOR, name=name, dataset=dataset, **fields)


def run_ended(run_id: int):
    """A wait_until check: the run once it has ended (completed, failed or cancelled), else None."""
    from evals.models import Run
    from evals.runs import TERMINAL

    def check():
        run = Run.objects.get(pk=run_id)
        return run if run.status in TERMINAL else None

    return check


@pytest.fixture
def start_worker(tmp_path, proxy):
    """start_worker(**env) -> CeleryWorker, pointed at the in-process Steward server; all stopped at the end."""
    workers = []

    def start(**env):
        env.setdefault("STEWARD_EVALS_PROXY_URL", proxy.url)
        worker = CeleryWorker(str(tmp_path / f"worker{len(workers)}.log"), **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
