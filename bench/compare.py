"""Two Steward checkouts side by side: which one spends less CPU per request.

    python -m bench.compare OTHER_CHECKOUT [--rounds 5] [--duration 10] [--concurrency 16] [--chat]
                            [--prompt] [--policy default]

`make bench` compares Steward with the upstream, run after run; on a shared virtual machine the
speed of a core drifts by 10-20% between runs minutes apart, more than most single changes are
worth. Here both checkouts (this one and OTHER_CHECKOUT, e.g. a `git worktree` of main) serve at
the same time, each one uvicorn process pinned to the same CPU, while two closed loops on the other
CPU load them at once: the kernel shares the core between them, so drift hits both alike, and the
ratio of their CPU time per request, round after round, shows differences of about one percent.
Both use this checkout's database and Redis (DATABASE_URL, REDIS_URL) and one bench key and route.

`--policy default` sends this checkout's load with a second key that has the default safety policy
attached (personal data redacted and restored, injection heuristics), and a message holding an
email address, so every request is redacted on the way up and restored on the way back; the other
side keeps the key without a policy. Compared with this checkout itself as OTHER_CHECKOUT it shows
what the policy costs per request:

    python -m bench.compare . --chat --policy default
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
from pathlib import Path

from bench import loadgen
from bench.runner import (
    LOAD_CPU,
    STEWARD_CPU,
    Children,
    child_env,
    cpu_seconds,
    django_ready,
    free_port,
    steward_command,
    wait_http,
)

HERE = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (its Steward is served from there)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--concurrency", type=int, default=16, help="per checkout")
    parser.add_argument("--chat", action="store_true", help="non-streaming chat (wrk) instead of streams")
    parser.add_argument("--prompt", action="store_true", help="invoke the bench prompt (a label) in every request")
    parser.add_argument("--policy", choices=["default"], help="this checkout's requests under a safety policy")
    args = parser.parse_args(argv)
    other = args.other.resolve()
    if not (other / "config" / "asgi.py").exists():
        parser.error(f"{other} is not a Steward checkout")
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        parser.error("needs two CPUs and taskset")
    if args.chat and shutil.which("wrk") is None:
        parser.error("--chat needs wrk")
    sse = None if args.chat else loadgen.sseload_build(HERE / "var" / "bench")
    if not args.chat and sse is None:
        parser.error("needs a C compiler for sseload")

    django_ready()
    from bench.fixtures import bench_policy_key, bench_setup, bench_teardown

    os.sched_setaffinity(0, {LOAD_CPU})
    log_dir = HERE / "var" / "bench-compare"
    log_dir.mkdir(parents=True, exist_ok=True)
    children = Children(log_dir, pin=True)
    env = child_env()
    python = sys.executable
    target = None
    try:
        upstream_port = free_port()
        upstream = children.start(
            "upstream",
            [python, "-m", "devtools.devupstream", "--port", str(upstream_port), "--name", "bench-upstream"],
            cpu=LOAD_CPU,
            env=env,
        )
        wait_http(f"http://127.0.0.1:{upstream_port}/health", process=upstream)
        target = bench_setup(upstream_url=f"http://127.0.0.1:{upstream_port}/v1")
        checkouts = {"this": HERE, "other": other}
        servers = {}
        for name, root in checkouts.items():
            port = free_port()
            proc = children.start(f"steward-{name}", steward_command(python, port), cpu=STEWARD_CPU, env=env, cwd=root)
            wait_http(f"http://127.0.0.1:{port}/healthz", process=proc)
            servers[name] = (proc, port)
        prompt = target.prompt if args.prompt else None
        if args.prompt and prompt is None:
            raise RuntimeError(f"--prompt: {target.prompt_note}")
        body = loadgen.chat_body(model=target.model, stream=not args.chat, prompt=prompt)
        headers = {"Authorization": f"Bearer {target.secret}", "Content-Type": "application/json"}
        side_headers = {name: headers for name in servers}
        if args.policy:
            body = loadgen.chat_body(model=target.model, stream=not args.chat, text=loadgen.PII_TEXT)
            side_headers["this"] = {**headers, "Authorization": f"Bearer {bench_policy_key(target=target)}"}

        def load(port: int, duration: float, results: dict, name: str) -> None:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            headers = side_headers[name]
            if args.chat:
                results[name] = loadgen.wrk_run(
                    url=url, body=body, headers=headers, connections=args.concurrency, duration=duration, cpu=LOAD_CPU
                )
            else:
                results[name] = loadgen.sseload_run(
                    binary=sse,
                    url=url,
                    body=body,
                    headers=headers,
                    concurrency=args.concurrency,
                    duration=duration,
                    cpu=LOAD_CPU,
                )

        per_request: dict[str, list[float]] = {name: [] for name in servers}
        columns = ("round", "this req/s", "cpu ms/req", "other req/s", "cpu ms/req", "this/other")
        print("  ".join(f"{c:>{w}}" for c, w in zip(columns, (5, 10, 10, 11, 10, 10), strict=True)))
        for round_no in range(args.rounds + 1):
            duration = 3.0 if round_no == 0 else args.duration  # round 0 warms both up
            before = {name: cpu_seconds(proc.pid) for name, (proc, _) in servers.items()}
            results: dict = {}
            threads = [
                threading.Thread(target=load, args=(port, duration, results, name))
                for name, (_, port) in servers.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if round_no == 0:
                continue
            row = [f"{round_no:>5}"]
            for name, (proc, _) in servers.items():
                result = results[name]
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} failed requests in round {round_no}")
                per_request[name].append((cpu_seconds(proc.pid) - before[name]) / result.requests * 1000)
                width = 10 if name == "this" else 11
                row.append(f"{result.throughput:>{width}.0f}  {per_request[name][-1]:>10.3f}")
            row.append(f"{per_request['this'][-1] / per_request['other'][-1]:>10.3f}")
            print("  ".join(row), flush=True)
        ratios = [a / b for a, b in zip(per_request["this"], per_request["other"], strict=True)]
        print(
            f"CPU per request, this checkout against {other}: median ratio {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds)"
        )
        return 0
    finally:
        children.stop_all()
        if target is not None:
            bench_teardown(target)


if __name__ == "__main__":
    sys.exit(main())
