"""Evaluation throughput: a 1,000-cell run against the development upstream answering in 200 ms, at concurrency 50.

    DATABASE_URL=... REDIS_URL=... python -m bench.evals [--cells 1000] [--latency-ms 200] [--concurrency 50]

Starts the development upstream, Steward (uvicorn) and one Celery worker as child processes, seeds its own
organisation (a prompt with two versions, a dataset of cells/2 items, a suite), starts a regression run (two
variants, so cells = 2 × items) and times it from the worker's start of execution to the run's end (summary
included). The ideal is cells × latency / concurrency; the run passes within 1.2 × the ideal. Every cell goes
the whole way: HTTP to the proxy with the run's key, prompt rendering, the upstream, scoring and the
conditional write of its result.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

from bench.runner import Children, child_env, cpu_seconds, django_ready, free_port, steward_command, wait_http

LIMIT = 1.2


def _seed(*, upstream_url: str, items: int, concurrency: int):
    from accounts.services import organisation_create
    from core.actors import Actor
    from evals.services import dataset_create, dataset_version_create, suite_create
    from proxy.services import deployment_create, route_create
    from registry.services import label_move, prompt_create, prompt_version_create

    actor = Actor.system("bench.evals")
    suffix = secrets.token_hex(4)
    organisation = organisation_create(name=f"Evals benchmark {suffix}", slug=f"bench-evals-{suffix}", actor=actor)
    route = route_create(organisation=organisation, name="dev-small", actor=actor)
    deployment_create(route=route, name="dev-upstream", model="dev-small", api_base=upstream_url, actor=actor)
    prompt = prompt_create(organisation=organisation, name="support-reply", actor=actor)
    for text in ("Hello {{ customer_name }}", "Hi there {{ customer_name }}"):
        prompt_version_create(
            prompt=prompt,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
            model="dev-small",
            params={},
            variables=[{"name": "customer_name", "type": "string"}],
            commit_message="bench",
            actor=actor,
        )
    label_move(prompt=prompt, label="production", version=1, reason="bench", actor=actor)
    dataset = dataset_create(organisation=organisation, name="customers", actor=actor)
    dataset_version_create(
        dataset=dataset,
        items=[
            {"key": f"c{i}", "variables": {"customer_name": f"customer{i}"}, "expected": f"customer{i}"}
            for i in range(items)
        ],
        actor=actor,
    )
    suite = suite_create(
        organisation=organisation,
        actor=actor,
        name="names",
        dataset=dataset,
        assertions=[{"type": "icontains", "value": "{{expected}}"}, {"type": "contains", "value": "Steward"}],
        concurrency=concurrency,
    )
    return prompt, suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000, help="Cells (even: two variants)")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    django_ready()

    from core.actors import Actor
    from evals.models import Cell, Run
    from evals.runs import TERMINAL
    from evals.services import run_start

    log_dir = Path(os.environ.get("STEWARD_VAR_DIR", "var")) / "bench-evals"
    log_dir.mkdir(parents=True, exist_ok=True)
    children = Children(log_dir, pin=False)
    env = child_env()
    upstream_port, steward_port = free_port(), free_port()
    try:
        upstream = children.start(
            "devupstream",
            [
                sys.executable,
                "-m",
                "devtools.devupstream",
                "--port",
                str(upstream_port),
                "--delay-ms",
                str(args.latency_ms),
            ],
            cpu=0,
            env=env,
        )
        wait_http(f"http://127.0.0.1:{upstream_port}/health", process=upstream)
        steward = children.start("steward", steward_command(sys.executable, steward_port), cpu=0, env=env)
        wait_http(f"http://127.0.0.1:{steward_port}/healthz", process=steward)
        worker_env = {**env, "STEWARD_EVALS_PROXY_URL": f"http://127.0.0.1:{steward_port}/v1"}
        worker = children.start(
            "worker",
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "evals", "--concurrency", "1",
             "--pool", "prefork", "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", "INFO"],
            cpu=0,
            env=worker_env,
        )  # fmt: skip
        prompt, suite = _seed(
            upstream_url=f"http://127.0.0.1:{upstream_port}/v1", items=args.cells // 2, concurrency=args.concurrency
        )
        # The worker is ready once it has taken a task; give it a moment to boot before the clock matters.
        deadline = time.monotonic() + 60
        while "ready." not in (log_dir / "worker.log").read_text() and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError("the worker exited:\n" + (log_dir / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        processes = {"steward": steward, "worker": worker, "upstream": upstream}
        cpu_before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        submitted = time.monotonic()
        run = run_start(suite=suite, prompt=prompt, actor=Actor.system("bench.evals"), candidate_version=2)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if run.status in TERMINAL:
                break
            time.sleep(0.1)
        wall = time.monotonic() - submitted
        cpu = {name: cpu_seconds(p.pid) - cpu_before[name] for name, p in processes.items()}
    finally:
        children.stop_all()
    run = Run.objects.get(pk=run.pk)
    if run.status != "completed" or run.started_at is None or run.finished_at is None:
        print(f"run {run.id} ended {run.status}: {run.error}")
        return 1
    cells = Cell.objects.filter(run=run)
    done = cells.filter(status="done").count()
    actual = (run.finished_at - run.started_at).total_seconds()
    ideal = run.cells_total * args.latency_ms / 1000 / args.concurrency
    ratio = actual / ideal
    ok = ratio <= LIMIT and done == run.cells_total
    rows = [
        ("cells", "latency ms", "concurrency", "ideal s", "actual s", "ratio", f"limit ×{LIMIT}", "result"),
        (
            str(run.cells_total),
            f"{args.latency_ms:g}",
            str(args.concurrency),
            f"{ideal:.2f}",
            f"{actual:.2f}",
            f"{ratio:.3f}",
            f"{ideal * LIMIT:.2f}",
            "pass" if ok else "FAIL",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        f"(run {run.id}: {done}/{run.cells_total} cells done; wall time from submission {wall:.2f} s, "
        f"including the worker picking the task up; verdict {run.verdict or '-'})"
    )
    print(
        "CPU seconds during the run: "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items())
        + f" ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
