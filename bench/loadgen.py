"""Load generators for `make bench`: wrk for closed loops, sseload (C) for streams, asyncio for the rest.

Nothing here imports Django, so the clients measure only HTTP. Every run has a fixed duration and
a per-request timeout, and returns a `RunResult` of latencies (seconds) and status counts.

- `wrk_run`: closed loop at a fixed concurrency (wrk is C and far faster than the proxy).
- `open_loop_run`: a fixed arrival schedule, independent of responses. Latency is measured from
  the *scheduled* send time, so a stalled server is charged for the requests it delayed
  (no coordinated omission).
- `sseload_run`: closed loop of streamed completions, recording time to first token and total,
  with a small C client (sseload.c, compiled on first use) that is far faster than the proxy.
- `stream_run`: the same in asyncio, the fallback when there is no C compiler.
- `closed_loop_run`: the asyncio fallback when wrk is not installed (numbers are then bounded
  by this client, and the table says so).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson

WRK_SCRIPT = Path(__file__).with_name("post.lua")
WRK_MARKER = "BENCH_JSON "


@dataclass
class RunResult:
    """What one load run measured. Latencies are in seconds; `ttft` only for streams."""

    requests: int = 0
    errors: int = 0
    duration: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    # wrk reports percentiles itself instead of raw samples.
    wrk_percentiles: dict[float, float] | None = None
    generator: str = "asyncio"
    # Set on a result that stands for several runs (`combined`): its percentiles are their median.
    runs: list[RunResult] | None = None

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.duration if self.duration else 0.0

    def latency(self, p: float) -> float | None:
        if self.runs is not None:
            return _median([run.latency(p) for run in self.runs])
        if self.wrk_percentiles is not None:
            return self.wrk_percentiles.get(p)
        return percentile(self.latencies, p)

    @property
    def streamed(self) -> bool:
        """Whether this load was streams (time to first token recorded)."""
        return bool(self.ttft) or any(run.ttft for run in self.runs or ())

    def first_token(self, p: float) -> float | None:
        if self.runs is not None:
            return _median([run.first_token(p) for run in self.runs])
        return percentile(self.ttft, p)


def combined(runs: list[RunResult]) -> RunResult:
    """Several runs of one load as one result: requests, errors, statuses and time add up; each
    percentile is the median of the runs' own.

    The bench interleaves direct and Steward runs so that a stretch when the machine is slower
    (shared hosts drift by a fifth over seconds) falls on both sides; the median keeps one such
    run from deciding the figure, and is the one rule that also works for wrk, which reports
    percentiles rather than samples."""
    if len(runs) == 1:
        return runs[0]
    statuses = Counter()
    for run in runs:
        statuses.update(run.statuses)
    return RunResult(
        requests=sum(run.requests for run in runs),
        errors=sum(run.errors for run in runs),
        duration=sum(run.duration for run in runs),
        statuses=statuses,
        generator=runs[0].generator,
        runs=list(runs),
    )


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- wrk -------------------------------------------------------------------------------------


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_run(
    *,
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    duration: float,
    cpu: int | None = None,
    timeout: float = 10.0,
) -> RunResult:
    """Run wrk for `duration` seconds with `connections` keep-alive connections (one thread)."""
    env = {
        **os.environ,
        "BENCH_BODY": body.decode(),
        "BENCH_HEADERS": json.dumps(headers),
    }
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    completed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + timeout + 30)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}")
    return wrk_parse(completed.stdout)


def wrk_parse(output: str) -> RunResult:
    """Read the JSON line our Lua `done()` prints (see post.lua)."""
    line = next((x for x in output.splitlines() if x.startswith(WRK_MARKER)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    data = json.loads(line[len(WRK_MARKER) :])
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    statuses = Counter({"non_2xx_3xx": data["status"]}) if data["status"] else Counter()
    return RunResult(
        requests=data["requests"],
        errors=errors,
        duration=data["duration_us"] / 1e6,
        statuses=statuses,
        wrk_percentiles={p: data[f"p{p:g}_us"] / 1e6 for p in (50, 90, 99)},
        generator="wrk",
    )


# --- sseload: streams, in C ------------------------------------------------------------------

SSELOAD_SOURCE = Path(__file__).with_name("sseload.c")


def sseload_build(out_dir: Path) -> Path | None:
    """Compile sseload.c once per source version (about a second); None when there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    import hashlib

    digest = hashlib.sha1(SSELOAD_SOURCE.read_bytes(), usedforsecurity=False).hexdigest()[:12]
    binary = out_dir / f"sseload-{digest}"
    if not binary.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        building = binary.with_suffix(".tmp")
        completed = subprocess.run(
            [compiler, "-O2", "-o", str(building), str(SSELOAD_SOURCE)], capture_output=True, text=True, timeout=120
        )
        if completed.returncode != 0:
            raise RuntimeError(f"compiling {SSELOAD_SOURCE.name} failed:\n{completed.stderr}")
        building.replace(binary)
    return binary


def sseload_run(
    *,
    binary: Path,
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    cpu: int | None = None,
    timeout: float = 10.0,
) -> RunResult:
    """Closed loop of streamed completions with the C client: time to first token and total per stream."""
    parsed = urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost"):
        raise ValueError("the bench only loads http://127.0.0.1")
    env = {
        **os.environ,
        "BENCH_BODY": body.decode(),
        "BENCH_HEADERS": "".join(f"{name}: {value}\r\n" for name, value in headers.items()),
    }
    cmd = [str(binary), parsed.hostname, str(parsed.port or 80), parsed.path, str(concurrency), f"{duration:g}"]
    cmd.append(f"{timeout:g}")
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    completed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + timeout + 30)
    if completed.returncode != 0:
        raise RuntimeError(f"sseload failed ({completed.returncode}): {completed.stderr.strip()}")
    return sseload_parse(completed.stdout)


def sseload_parse(output: str) -> RunResult:
    result = RunResult(generator="sseload")
    for line in output.splitlines():
        kind, *fields = line.split()
        if kind == "R":
            status, ttft_us, total_us = (int(x) for x in fields)
            result.statuses[status] += 1
            result.latencies.append(total_us / 1e6)
            if status == 200 and ttft_us >= 0:
                result.ttft.append(ttft_us / 1e6)
        elif kind == "END":
            result.duration = int(fields[0]) / 1e6
    if not result.duration:
        raise RuntimeError(f"sseload printed no END line:\n{output[-2000:]}")
    result.requests = len(result.latencies)
    result.errors = sum(n for s, n in result.statuses.items() if s != 200)
    return result


# --- asyncio clients -------------------------------------------------------------------------


def _session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False, ttl_dns_cache=None)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict, timeout: float) -> int:
    try:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            await r.read()
            return r.status
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0


async def open_loop_run(
    *, url: str, body: bytes, headers: dict[str, str], rate: float, duration: float, timeout: float = 10.0
) -> RunResult:
    """Send `rate` requests per second for `duration` seconds on a fixed schedule."""
    total = max(1, int(rate * duration))
    result = RunResult()
    # Generous pool: an open loop must never wait for a free connection (that would close the loop).
    async with _session(limit=max(64, int(rate * timeout))) as session:
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        clock = time.perf_counter
        start = clock() + 0.05

        async def one(i: int) -> None:
            scheduled = start + i / rate
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await _post(session, url, body, headers, timeout)
            result.latencies.append(clock() - scheduled)
            result.statuses[status] += 1

        await asyncio.gather(*(one(i) for i in range(total)))
        result.duration = clock() - start
    result.requests = total
    result.errors = sum(n for s, n in result.statuses.items() if not 200 <= s < 300)
    return result


async def closed_loop_run(
    *, url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, timeout: float = 10.0
) -> RunResult:
    """`concurrency` clients each sending the next request when the last one finished."""
    loop = asyncio.get_running_loop()
    result = RunResult()
    async with _session(limit=concurrency) as session:
        start = loop.time()
        end = start + duration

        async def client() -> None:
            while loop.time() < end:
                sent = time.perf_counter()
                status = await _post(session, url, body, headers, timeout)
                result.latencies.append(time.perf_counter() - sent)
                result.statuses[status] += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.duration = loop.time() - start
    result.requests = len(result.latencies)
    result.errors = sum(n for s, n in result.statuses.items() if not 200 <= s < 300)
    return result


_CONTENT = re.compile(rb'"content":\s*"[^"]')


async def _stream_one(session, url, body, headers, timeout) -> tuple[int, float | None, float]:
    """One streamed completion: (status, seconds to first content token, total seconds)."""
    sent = time.perf_counter()
    first = None
    try:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                await r.read()
                return r.status, None, time.perf_counter() - sent
            done = False
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue  # blank separators and keep-alive comments
                if line.startswith(b"data: [DONE]"):
                    done = True
                    break
                if first is None and _CONTENT.search(line):
                    first = time.perf_counter() - sent
            return (200 if done else 0), first, time.perf_counter() - sent
    except (TimeoutError, aiohttp.ClientError, OSError):
        return 0, first, time.perf_counter() - sent


async def stream_run(
    *, url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, timeout: float = 10.0
) -> RunResult:
    """Closed loop of streamed chat completions; a stream without `[DONE]` counts as an error."""
    loop = asyncio.get_running_loop()
    result = RunResult()
    async with _session(limit=concurrency) as session:
        start = loop.time()
        end = start + duration

        async def client() -> None:
            while loop.time() < end:
                status, first, total = await _stream_one(session, url, body, headers, timeout)
                result.statuses[status] += 1
                result.latencies.append(total)
                if status == 200 and first is not None:
                    result.ttft.append(first)

        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.duration = loop.time() - start
    result.requests = len(result.latencies)
    result.errors = sum(n for s, n in result.statuses.items() if s != 200)
    return result


CHAT_TEXT = "Summarise the benchmark in one short sentence please."
# The message of runs under a safety policy: personal data to redact and restore on every request.
PII_TEXT = "Summarise the benchmark in one short sentence please, and mail it to ada.lovelace@example.com"


def chat_body(
    *, model: str, stream: bool = False, prompt: dict | None = None, max_tokens: int = 16, text: str = CHAT_TEXT
) -> bytes:
    """The request every scenario sends: a short chat completion (optionally a prompt invocation)."""
    body: dict = {"model": model, "max_tokens": max_tokens}
    if prompt is not None:
        body["prompt"] = prompt
    else:
        body["messages"] = [{"role": "user", "content": text}]
    if stream:
        body["stream"] = True
    return orjson.dumps(body)
