"""Prometheus metrics of the proxy (served by /metrics of the same process).

The pipeline records ten timings per request; prometheus_client's Histogram takes a lock and
walks its buckets in Python for each, which costs more than some of the stages it measures (its
Counter takes a lock too). So timings and request counts land in plain per-process arrays and
dicts (the event loop is single-threaded; a lost update from another thread would only skew a
counter) and a collector turns them into metrics when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

STAGES = (
    "authenticate",
    "resolve_prompt",
    "pre_filters",
    "admit",
    "reserve_budget",
    "call_upstream",
    "post_filters",
    "settle_cost",
    "log",
)
BUCKETS_MS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_MS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS_MS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(str, BUCKETS_MS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


_stages = {name: _Histogram() for name in STAGES}
_overhead = _Histogram()
_requests: dict[tuple[str, str], int] = {}


class _Collector:
    def collect(self):
        stage = HistogramMetricFamily(
            "steward_proxy_stage_milliseconds", "Time spent in each pipeline stage", labels=["stage"]
        )
        for name, hist in _stages.items():
            stage.add_metric([name], hist.cumulative(), hist.sum)
        yield stage
        overhead = HistogramMetricFamily(
            "steward_proxy_overhead_milliseconds", "Time spent in Steward per request, upstream excluded"
        )
        overhead.add_metric([], _overhead.cumulative(), _overhead.sum)
        yield overhead
        served = CounterMetricFamily(
            "steward_proxy_requests", "Proxied requests by outcome", labels=["endpoint", "status"]
        )
        for (endpoint, status), n in list(_requests.items()):
            served.add_metric([endpoint, status], n)
        yield served


REGISTRY.register(_Collector())


def count(endpoint: str, status: str) -> None:
    """One more request with this outcome (`steward_proxy_requests_total`)."""
    key = (endpoint, status)
    _requests[key] = _requests.get(key, 0) + 1


def observe(timings: dict[str, float], overhead: float, endpoint: str, status: str) -> None:
    for name, value in timings.items():
        hist = _stages.get(name)
        if hist is not None:
            hist.observe(value)
    _overhead.observe(overhead)
    count(endpoint, status)


_filter_runs: dict[tuple[str, str], int] = {}


class _SafetyCollector:
    def collect(self):
        runs = CounterMetricFamily(
            "steward_safety_filter_runs", "Safety filter runs by filter and status", labels=["filter", "status"]
        )
        for (name, status), n in list(_filter_runs.items()):
            runs.add_metric([name, status], n)
        yield runs


REGISTRY.register(_SafetyCollector())


def filter_runs(runs: list[dict]) -> None:
    """Count a request's filter runs (`steward_safety_filter_runs_total{filter, status}`)."""
    for run in runs:
        key = (run["filter"], run["status"])
        _filter_runs[key] = _filter_runs.get(key, 0) + 1
