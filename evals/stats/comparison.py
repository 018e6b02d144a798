"""Comparing a candidate with a baseline on several metrics: estimates, paired differences, Holm-adjusted
p-values and a verdict per metric.

Typical use by a run's report:

    comparisons = [
        metric_comparison("pass rate", base_passes, cand_passes, kind="binary"),
        metric_comparison("latency p50 ms", base_ms, cand_ms, kind="score", higher_is_better=False, margin=50),
    ]
    comparisons = run_verdicts(comparisons)   # Holm across the metrics, then a verdict each

docs/evaluation-statistics.md defines the verdicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evals.stats.intervals import bootstrap_mean_interval, paired_bootstrap_diff, paired_item_means, wilson_interval
from evals.stats.sample_size import items_needed, items_needed_means
from evals.stats.significance import holm, paired_binary_test, sign_flip_test

VERDICTS = ("improved", "regressed", "no_significant_difference", "non_inferior")


def verdict(
    diff: float,
    low: float,
    high: float,
    p_adjusted: float,
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
    margin: float | None = None,
) -> str:
    """The verdict on a difference (candidate − baseline) with its interval [low, high] and adjusted p.

    1. Significant when p_adjusted < alpha AND the interval excludes 0: "improved" if the interval lies on
       the better side of 0 (above it when higher is better), else "regressed".
    2. Otherwise, with a non-inferiority `margin` (>= 0, in the metric's units): "non_inferior" when the
       interval's worse end stays within the margin: low > −margin if higher is better, high < margin if not.
    3. Otherwise "no_significant_difference".

    The interval, not `diff`, decides the direction: a percentile interval need not be centred on `diff`.
    """
    if low > high:
        raise ValueError("the interval's low end must not exceed its high end")
    if margin is not None and margin < 0:
        raise ValueError("margin must be >= 0")
    if p_adjusted < alpha and (low > 0 or high < 0):
        better = low > 0 if higher_is_better else high < 0
        return "improved" if better else "regressed"
    if margin is not None and (low > -margin if higher_is_better else high < margin):
        return "non_inferior"
    return "no_significant_difference"


@dataclass(frozen=True)
class Estimate:
    """A variant's mean (pass rate or mean score) and its confidence interval."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class MetricComparison:
    """One metric compared between two variants over the items both ran.

    `p_adjusted` and `verdict` are None until run_verdicts fills them (they depend on the other metrics).
    `items_needed`: more items that would give 80% power to detect the observed difference at alpha 0.05
    (None when the difference is 0).
    """

    name: str
    kind: str
    higher_is_better: bool
    margin: float | None
    n_items: int
    baseline: Estimate
    candidate: Estimate
    diff: float
    diff_low: float
    diff_high: float
    p_value: float
    method: str
    items_needed: int | None
    p_adjusted: float | None = None
    verdict: str | None = None


def _variant_estimate(
    values_by_item: Mapping[Hashable, Sequence[float]], *, kind: str, confidence: float, resamples: int, seed: int
) -> Estimate:
    if kind == "binary" and all(len(values) == 1 for values in values_by_item.values()):
        successes = sum(1 for values in values_by_item.values() if values[0])
        low, high = wilson_interval(successes, len(values_by_item), confidence)
        return Estimate(successes / len(values_by_item), low, high)
    values = [float(v) for item_values in values_by_item.values() for v in item_values]
    clusters = [item for item, item_values in values_by_item.items() for _ in item_values]
    mean, low, high = bootstrap_mean_interval(
        values, clusters=clusters, confidence=confidence, resamples=resamples, seed=seed
    )
    return Estimate(mean, low, high)


def metric_comparison(
    name: str,
    baseline_values_by_item: Mapping[Hashable, Sequence[float]],
    candidate_values_by_item: Mapping[Hashable, Sequence[float]],
    *,
    kind: str,
    margin: float | None = None,
    higher_is_better: bool = True,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> MetricComparison:
    """Compare one metric. Values are per dataset item, a list of the item's repeats (bools for "binary").

    binary: pass rates; paired_binary_test (exact McNemar, or the clustered sign-flip test with repeats).
    score: mean scores; the sign-flip test on per-item mean differences, paired item-bootstrap interval.
    Only items both variants ran are compared. Estimates are Wilson intervals for binary metrics with one
    run per item, else item-clustered bootstrap intervals.
    """
    if kind not in ("binary", "score"):
        raise ValueError('kind must be "binary" or "score"')
    if kind == "binary":
        for values_by_item in (baseline_values_by_item, candidate_values_by_item):
            if any(value not in (0, 1) for values in values_by_item.values() for value in values):
                raise ValueError("binary metrics take pass/fail values (booleans, or 0 and 1)")
    items, base_means, cand_means = paired_item_means(baseline_values_by_item, candidate_values_by_item)
    base = {item: baseline_values_by_item[item] for item in items}
    cand = {item: candidate_values_by_item[item] for item in items}
    options = {"confidence": confidence, "resamples": resamples, "seed": seed}
    baseline_estimate = _variant_estimate(base, kind=kind, **options)
    candidate_estimate = _variant_estimate(cand, kind=kind, **options)
    differences = cand_means - base_means
    sd_diff = float(np.std(differences, ddof=1)) if len(items) > 1 else 0.0
    if kind == "binary":
        test = paired_binary_test(base, cand, **options)
        diff, low, high, p_value, method = test.diff, test.low, test.high, test.p_value, test.method
        if test.discordant is not None:
            needed = items_needed(test.baseline_rate, test.candidate_rate, len(items), discordant=test.discordant)
        else:
            needed = items_needed_means(diff, sd_diff, len(items))
    else:
        diff, low, high = paired_bootstrap_diff(base, cand, **options)
        p_value, method = sign_flip_test(differences.tolist(), seed=seed)
        needed = items_needed_means(diff, sd_diff, len(items))
    return MetricComparison(
        name=name,
        kind=kind,
        higher_is_better=higher_is_better,
        margin=margin,
        n_items=len(items),
        baseline=baseline_estimate,
        candidate=candidate_estimate,
        diff=diff,
        diff_low=low,
        diff_high=high,
        p_value=p_value,
        method=method,
        items_needed=needed,
    )


def run_verdicts(comparisons: Sequence[MetricComparison], *, alpha: float = 0.05) -> list[MetricComparison]:
    """The comparisons with Holm-adjusted p-values (across these metrics) and verdicts filled in."""
    names = [comparison.name for comparison in comparisons]
    if len(set(names)) != len(names):
        raise ValueError("metric names must be unique")
    adjusted = holm({comparison.name: comparison.p_value for comparison in comparisons})
    return [
        dataclasses.replace(
            comparison,
            p_adjusted=adjusted[comparison.name],
            verdict=verdict(
                comparison.diff,
                comparison.diff_low,
                comparison.diff_high,
                adjusted[comparison.name],
                higher_is_better=comparison.higher_is_better,
                alpha=alpha,
                margin=comparison.margin,
            ),
        )
        for comparison in comparisons
    ]
