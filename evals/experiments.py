"""Online experiments, measured: each variant's traffic from the request log, compared with the control.

Per variant (requests the proxy served from it since the experiment started; rejected and
cancelled requests are left out, as neither says anything about the version):
- error rate (status "error") with a Wilson interval;
- latency p50 and p95 (milliseconds, the whole request as the client saw it);
- cost per request (the ledger's billing.UsageLine costs of the request, all attempts);
- feedback (proxy.Feedback scores in [-1, 1]) mean with a bootstrap interval, and its count.

Against the control, each metric gets a p-value from the independent two-sample tests of
evals.stats (the pooled two-proportion z-test for the error rate, Welch's t for feedback, latency
and cost means), an approximate 95% interval of the difference, Holm's correction across every
comparison of the experiment, and a verdict (evals.stats.verdict).

Guard rails (`experiment_guard`, run by the beat task `evals.experiments_guard` every 30 s) end a
running experiment when a variant with at least `min_sample` requests crosses a limit: error rate
above `max_error_rate`, latency p95 above `max_latency_p95_ms`, mean cost per request above
`max_cost_per_request`. Ending puts all traffic back on the control (registry.experiments).

Rows are read into memory per experiment; that suits experiments up to some hundred thousand
requests, which is where this is meant to be used (a guard rail acts long before).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import DecimalField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from billing.models import UsageLine
from core.actors import Actor
from evals import stats
from proxy.models import Feedback, RequestLog, RequestStatus
from registry.experiments import experiment_end, experiment_variants, experiments_running
from registry.models import Experiment

logger = logging.getLogger(__name__)

COUNTED = (RequestStatus.OK, RequestStatus.ERROR, RequestStatus.CACHED)
GUARD_ACTOR = Actor.system("experiment guard rail")
Z95 = 1.959963984540054
# metric -> (label, higher is better)
METRICS = {
    "feedback": ("Feedback", True),
    "error_rate": ("Error rate", False),
    "latency_ms": ("Latency (mean ms)", False),
    "cost": ("Cost per request", False),
}


@dataclass
class VariantStats:
    name: str
    version_number: int
    weight: int
    is_control: bool
    requests: int = 0
    errors: int = 0
    unsticky: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    costs: list[float] = field(default_factory=list, repr=False)
    scores: list[float] = field(default_factory=list, repr=False)
    error_rate: float | None = None
    error_low: float | None = None
    error_high: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    cost_mean: float | None = None
    feedback_mean: float | None = None
    feedback_low: float | None = None
    feedback_high: float | None = None

    @property
    def feedback_n(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Comparison:
    variant: str
    metric: str
    label: str
    diff: float
    low: float
    high: float
    p: float
    p_adjusted: float
    verdict: str


LIMIT_NAMES = {"error_rate": "error rate", "latency_p95_ms": "latency p95 (ms)", "cost_per_request": "cost per request"}


@dataclass(frozen=True)
class Breach:
    variant: str
    metric: str
    value: float
    limit: float
    n: int

    def reason(self) -> str:
        what = {
            "error_rate": "error rate",
            "latency_p95_ms": "latency p95 (ms)",
            "cost_per_request": "cost per request",
        }
        return (
            f"Variant {self.variant!r}: {what[self.metric]} {self.value:.6g} crossed the limit {self.limit:.6g} "
            f"after {self.n} requests."
        )


@dataclass(frozen=True)
class ExperimentReport:
    experiment: Experiment
    variants: list[VariantStats]
    comparisons: list[Comparison]
    breaches: list[Breach]

    @property
    def control(self) -> VariantStats | None:
        return next((v for v in self.variants if v.is_control), None)


def _percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean_var(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var


def experiment_variant_stats(experiment: Experiment) -> list[VariantStats]:
    """Each variant's counts and raw measurements since the experiment started (three queries)."""
    by_name = {
        v.name: VariantStats(name=v.name, version_number=v.version.number, weight=v.weight, is_control=v.is_control)
        for v in experiment_variants(experiment=experiment)
    }
    cost = Subquery(
        UsageLine.objects.filter(request_id=OuterRef("request_id"))
        .values("request_id")
        .annotate(total=Sum("cost"))
        .values("total"),
        output_field=DecimalField(max_digits=30, decimal_places=12),
    )
    rows = (
        RequestLog.objects.filter(
            organisation_id=experiment.prompt.organisation_id,
            experiment_id=experiment.id,
            started_at__gte=experiment.started_at,
            status__in=COUNTED,
        )
        .annotate(cost_total=Coalesce(cost, Value(Decimal(0)), output_field=DecimalField()))
        .values_list("request_id", "experiment_variant", "status", "latency_ms", "experiment_sticky", "cost_total")
    )
    variant_of: dict[str, VariantStats] = {}
    for request_id, name, status, latency, sticky, cost_total in rows.iterator(chunk_size=2000):
        variant = by_name.get(name)
        if variant is None:
            continue
        variant_of[request_id] = variant
        variant.requests += 1
        variant.errors += status == RequestStatus.ERROR
        variant.unsticky += sticky is False
        variant.latencies.append(float(latency))
        variant.costs.append(float(cost_total or 0))
    feedback = Feedback.objects.filter(
        organisation_id=experiment.prompt.organisation_id,
        request_id__in=RequestLog.objects.filter(experiment_id=experiment.id).values("request_id"),
    ).values_list("request_id", "score")
    for request_id, score in feedback.iterator(chunk_size=2000):
        variant = variant_of.get(request_id)
        if variant is not None:
            variant.scores.append(float(score))
    for variant in by_name.values():
        _summarise(variant)
    return list(by_name.values())


def _summarise(variant: VariantStats) -> None:
    if variant.requests:
        variant.error_rate = variant.errors / variant.requests
        variant.error_low, variant.error_high = stats.wilson_interval(variant.errors, variant.requests)
        variant.latency_p50 = _percentile(variant.latencies, 0.5)
        variant.latency_p95 = _percentile(variant.latencies, 0.95)
        variant.cost_mean = sum(variant.costs) / len(variant.costs)
    if variant.scores:
        variant.feedback_mean, variant.feedback_low, variant.feedback_high = stats.bootstrap_mean_interval(
            variant.scores
        )


def _means_test(a: list[float], b: list[float]) -> tuple[float, float, float, float] | None:
    """(diff b - a, low, high, p) by Welch's t; None with fewer than two values on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a, var_a = _mean_var(a)
    mean_b, var_b = _mean_var(b)
    diff = mean_b - mean_a
    half = Z95 * math.sqrt(var_a / len(a) + var_b / len(b))
    return diff, diff - half, diff + half, stats.welch_t(mean_b, var_b, len(b), mean_a, var_a, len(a))


def _rates_test(control: VariantStats, variant: VariantStats) -> tuple[float, float, float, float] | None:
    if not control.requests or not variant.requests:
        return None
    p_c, p_v = control.errors / control.requests, variant.errors / variant.requests
    diff = p_v - p_c
    half = Z95 * math.sqrt(p_c * (1 - p_c) / control.requests + p_v * (1 - p_v) / variant.requests)
    p = stats.two_sample_rate_test(variant.errors, variant.requests, control.errors, control.requests)
    return diff, diff - half, diff + half, p


def experiment_comparisons(variants: list[VariantStats]) -> list[Comparison]:
    """Every variant against the control on each metric that has data, Holm-corrected together."""
    control = next((v for v in variants if v.is_control), None)
    if control is None:
        return []
    raw: dict[str, tuple[str, str, tuple[float, float, float, float]]] = {}
    for variant in variants:
        if variant is control:
            continue
        tests = {
            "feedback": _means_test(control.scores, variant.scores),
            "error_rate": _rates_test(control, variant),
            "latency_ms": _means_test(control.latencies, variant.latencies),
            "cost": _means_test(control.costs, variant.costs),
        }
        for metric, result in tests.items():
            if result is not None:
                raw[f"{variant.name}/{metric}"] = (variant.name, metric, result)
    if not raw:
        return []
    adjusted = stats.holm({key: result[3] for key, (_, _, result) in raw.items()})
    comparisons = []
    for key, (name, metric, (diff, low, high, p)) in raw.items():
        label, higher_is_better = METRICS[metric]
        comparisons.append(
            Comparison(
                variant=name,
                metric=metric,
                label=label,
                diff=diff,
                low=low,
                high=high,
                p=p,
                p_adjusted=adjusted[key],
                verdict=stats.verdict(diff, low, high, adjusted[key], higher_is_better=higher_is_better),
            )
        )
    return comparisons


def experiment_breaches(experiment: Experiment, variants: list[VariantStats]) -> list[Breach]:
    """The guard-rail limits crossed by variants holding at least `min_sample` requests."""
    breaches = []
    for variant in variants:
        if variant.requests < experiment.min_sample:
            continue
        checks = (
            ("error_rate", variant.error_rate, experiment.max_error_rate),
            ("latency_p95_ms", variant.latency_p95, experiment.max_latency_p95_ms),
            (
                "cost_per_request",
                variant.cost_mean,
                float(experiment.max_cost_per_request) if experiment.max_cost_per_request is not None else None,
            ),
        )
        for metric, value, limit in checks:
            if limit is not None and value is not None and value > limit:
                breaches.append(Breach(variant.name, metric, value, limit, variant.requests))
    return breaches


def experiment_report(experiment: Experiment) -> ExperimentReport:
    variants = experiment_variant_stats(experiment)
    return ExperimentReport(
        experiment=experiment,
        variants=variants,
        comparisons=experiment_comparisons(variants),
        breaches=experiment_breaches(experiment, variants),
    )


def experiment_guard(experiment: Experiment) -> Breach | None:
    """End `experiment` if a variant crossed a guard rail; returns the breach that ended it (the first)."""
    breaches = experiment_breaches(experiment, experiment_variant_stats(experiment))
    if not breaches:
        return None
    breach = breaches[0]
    detail = {"variant": breach.variant, "metric": breach.metric, "value": breach.value, "limit": breach.limit}
    if experiment_end(
        experiment=experiment, reason=breach.reason(), detail={**detail, "n": breach.n}, actor=GUARD_ACTOR
    ):
        logger.warning("experiment %s ended by its guard rail: %s", experiment.id, breach.reason())
    return breach


def experiments_guard() -> int:
    """Check every running experiment's guard rails; returns how many were ended. One failing experiment
    does not stop the others from being checked."""
    ended = 0
    for experiment in experiments_running():
        try:
            ended += experiment_guard(experiment) is not None
        except Exception:
            logger.exception("guard rail check of experiment %s failed", experiment.id)
    return ended
