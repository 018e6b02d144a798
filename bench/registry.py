"""Latency of `aprompt_resolve`, the registry call on every proxied request that names a prompt.

    DATABASE_URL=... REDIS_URL=... python -m bench.registry [--calls 20000] [--cold 500]

Uses its own organisation (slug "bench-registry", kept because audit events are append-only) and
a throwaway prompt that is purged afterwards. Prints p50/p99 in microseconds for: warm in-process
cache (the steady state), and right after an invalidation (a thread hop and two queries).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--cold", type=int, default=500)
    args = parser.parse_args(argv)
    _setup()

    from django.db import connections

    from accounts.models import Organisation
    from accounts.services import organisation_create
    from core.actors import Actor
    from core.invalidation import _registry
    from registry import selectors, services

    actor = Actor.system("bench.registry")
    org = Organisation.objects.filter(slug="bench-registry").first() or organisation_create(
        name="Registry benchmark", slug="bench-registry", actor=actor
    )
    name = f"bench-{uuid.uuid4().hex[:8]}"
    prompt = services.prompt_create(organisation=org, name=name, actor=actor)
    services.prompt_version_create(
        prompt=prompt,
        messages=[
            {"role": "system", "content": "You are a {{ tone }} support agent for {{ company }}."},
            {"role": "user", "content": "{% if vip %}[VIP] {% endif %}{{ customer_name }} asks: {{ question }}"},
        ],
        model="dev-small",
        params={"temperature": 0.2, "max_tokens": 200},
        variables=[
            {"name": "customer_name", "type": "string"},
            {"name": "question", "type": "string"},
            {"name": "tone", "type": "string", "default": "friendly"},
            {"name": "company", "type": "string", "default": "Acme"},
            {"name": "vip", "type": "boolean", "default": False},
        ],
        commit_message="bench",
        actor=actor,
    )
    services.label_move(prompt=prompt, label="production", version=1, reason="bench", actor=actor)
    # Let the poller see our own invalidations so they do not land in the middle of the run.
    time.sleep(1.0)
    _registry.poll_once()
    variables = {"customer_name": "Ada", "question": "Where is my order?"}
    call = {"organisation_id": org.id, "name": name, "variables": variables}

    async def run() -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {"warm": [], "warm, version number": [], "after invalidation": []}
        await selectors.aprompt_resolve(**call)
        await selectors.aprompt_resolve(**call, version=1)
        for _ in range(args.calls):
            t = time.perf_counter_ns()
            await selectors.aprompt_resolve(**call)
            samples["warm"].append((time.perf_counter_ns() - t) / 1000)
        for _ in range(args.calls // 4):
            t = time.perf_counter_ns()
            await selectors.aprompt_resolve(**call, version=1)
            samples["warm, version number"].append((time.perf_counter_ns() - t) / 1000)
        for _ in range(args.cold):
            selectors._resolved.clear()  # what an invalidation from another process does here
            t = time.perf_counter_ns()
            await selectors.aprompt_resolve(**call)
            samples["after invalidation"].append((time.perf_counter_ns() - t) / 1000)
        await asyncio.get_running_loop().run_in_executor(None, connections.close_all)
        return samples

    try:
        samples = asyncio.run(run())
    finally:
        services.organisation_prompts_purge(organisation=org)
        connections.close_all()

    print(f"aprompt_resolve latency (µs), prompt with 2 messages and 5 variables, {os.cpu_count()} CPUs")
    print(f"{'case':<24}{'calls':>8}{'p50':>10}{'p99':>10}{'mean':>10}")
    for case, values in samples.items():
        print(
            f"{case:<24}{len(values):>8}{_percentile(values, 0.5):>10.1f}{_percentile(values, 0.99):>10.1f}"
            f"{statistics.fmean(values):>10.1f}"
        )


if __name__ == "__main__":
    main()
