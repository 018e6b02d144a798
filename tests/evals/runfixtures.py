"""Fixtures of the run tests (imported by name in each module: tests/evals/conftest.py belongs to no helper yet)."""

from __future__ import annotations

import pytest

from evals import services
from registry import services as registry_services
from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import ACTOR

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


class Worker:
    """A real Celery worker process (its own session: SIGKILL reaches it and its pool children)."""

    def __init__(self, log_path: str, **env: str):
        import subprocess
        import sys

        from django.conf import settings

        from core.queues import Queue
        from tests.helpers import subprocess_env

        self.log_path = log_path
        log = open(log_path, "a")  # noqa: SIM115 (kept open for the process's life)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "-Q", ",".join(q.value for q in Queue),
                "--concurrency", "2", "--pool", "prefork", "--loglevel", "INFO",
                "--without-mingle", "--without-gossip", "--without-heartbeat",
            ],
            env=subprocess_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=settings.BASE_DIR,
            start_new_session=True,
        )  # fmt: skip
        from tests.helpers import wait_until

        wait_until(self._ready, timeout=30, interval=0.1, context=self.log)

    def log(self) -> str:
        from pathlib import Path

        return Path(self.log_path).read_text()[-4000:]

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError("celery worker exited:\n" + self.log())
        return "ready." in self.log()

    def kill(self) -> None:
        import os
        import signal

        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        import contextlib
        import os
        import signal

        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except Exception:
                os.killpg(self.process.pid, signal.SIGKILL)


@pytest.fixture
def start_worker(tmp_path, proxy):
    """start_worker(**env) -> Worker, pointed at the in-process Steward server; all stopped at the end."""
    workers = []

    def start(**env):
        env.setdefault("STEWARD_EVALS_PROXY_URL", proxy.url)
        worker = Worker(str(tmp_path / f"worker{len(workers)}.log"), **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
