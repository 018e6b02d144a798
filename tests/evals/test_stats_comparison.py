"""Verdict rules, metric comparisons and Holm across a run's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from evals.stats import (
    holm,
    mcnemar_exact,
    metric_comparison,
    run_verdicts,
    sign_flip_test,
    verdict,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("diff", "low", "high", "p", "kwargs", "expected"),
    [
        (0.10, 0.04, 0.16, 0.01, {}, "improved"),
        (-0.10, -0.16, -0.04, 0.01, {}, "regressed"),
        (-0.10, -0.16, -0.04, 0.01, {"higher_is_better": False}, "improved"),
        (0.10, 0.04, 0.16, 0.01, {"higher_is_better": False}, "regressed"),
        # p significant but the interval straddles 0: the two disagree, nothing is claimed.
        (0.05, -0.01, 0.11, 0.01, {}, "no_significant_difference"),
        # interval excludes 0 but the Holm-adjusted p does not clear alpha.
        (0.10, 0.04, 0.16, 0.06, {}, "no_significant_difference"),
        (0.10, 0.04, 0.16, 0.03, {"alpha": 0.01}, "no_significant_difference"),
        (0.01, -0.02, 0.04, 0.4, {"margin": 0.03}, "non_inferior"),
        (0.01, -0.04, 0.06, 0.4, {"margin": 0.03}, "no_significant_difference"),
        (0.01, -0.03, 0.06, 0.4, {"margin": 0.03}, "no_significant_difference"),  # the bound is strict
        # lower is better (latency): the worse end is the upper one.
        (5.0, -10.0, 20.0, 0.5, {"higher_is_better": False, "margin": 25.0}, "non_inferior"),
        (5.0, -10.0, 30.0, 0.5, {"higher_is_better": False, "margin": 25.0}, "no_significant_difference"),
        # a significant regression stays a regression, whatever the margin.
        (-0.01, -0.015, -0.005, 0.001, {"margin": 0.05}, "regressed"),
    ],
)
def test_verdict_rules(diff, low, high, p, kwargs, expected):
    assert verdict(diff, low, high, p, **kwargs) == expected


def test_verdict_refuses_bad_input():
    with pytest.raises(ValueError):
        verdict(0.0, 0.1, -0.1, 0.5)
    with pytest.raises(ValueError):
        verdict(0.0, -0.1, 0.1, 0.5, margin=-0.1)


def _binary(seed: int, rate: float, items: int = 80, repeats: int = 1) -> dict[int, list[bool]]:
    rng = np.random.default_rng(seed)
    return {item: [bool(x) for x in rng.random(repeats) < rate] for item in range(items)}


def test_binary_comparison_with_single_runs():
    baseline = _binary(1, 0.6)
    candidate = _binary(2, 0.8)
    baseline["only-in-baseline"] = [True]
    result = metric_comparison("pass rate", baseline, candidate, kind="binary")
    pairs = [(baseline[i][0], candidate[i][0]) for i in range(80)]
    b = sum(1 for x, y in pairs if x and not y)
    c = sum(1 for x, y in pairs if y and not x)
    base_passes = sum(1 for x, _ in pairs if x)
    assert result.n_items == 80
    assert result.method == "mcnemar_exact"
    assert result.p_value == mcnemar_exact(b, c)
    assert result.diff == pytest.approx((c - b) / 80)
    assert (result.baseline.low, result.baseline.high) == wilson_interval(base_passes, 80)
    assert result.baseline.mean == base_passes / 80
    assert result.items_needed is not None
    assert result.verdict is None and result.p_adjusted is None


def test_binary_comparison_with_repeats_is_clustered():
    result = metric_comparison("pass rate", _binary(3, 0.5, repeats=3), _binary(4, 0.5, repeats=3), kind="binary")
    assert result.method == "clustered_sign_flip_exact"
    assert result.baseline.low <= result.baseline.mean <= result.baseline.high


def test_score_comparison():
    rng = np.random.default_rng(5)
    baseline = {i: [float(x)] for i, x in enumerate(rng.normal(100, 20, size=40))}
    candidate = {i: [v[0] + 30 + float(rng.normal(0, 5))] for i, v in baseline.items()}
    result = metric_comparison("latency ms", baseline, candidate, kind="score", higher_is_better=False)
    differences = [candidate[i][0] - baseline[i][0] for i in range(40)]
    assert result.diff == pytest.approx(np.mean(differences))
    assert (result.p_value, result.method) == sign_flip_test(differences)
    assert result.diff_low > 0
    [judged] = run_verdicts([result])
    assert judged.verdict == "regressed"


def test_run_verdicts_applies_holm_across_metrics():
    comparisons = [
        metric_comparison("pass rate", _binary(6, 0.55), _binary(7, 0.75), kind="binary"),
        metric_comparison("json valid", _binary(8, 0.9), _binary(9, 0.9), kind="binary", margin=0.1),
        metric_comparison(
            "judge score",
            {i: [0.5 + 0.01 * (i % 7)] for i in range(30)},
            {i: [0.5 + 0.01 * (i % 5)] for i in range(30)},
            kind="score",
        ),
    ]
    judged = run_verdicts(comparisons)
    expected = holm({c.name: c.p_value for c in comparisons})
    assert [c.p_adjusted for c in judged] == [expected[c.name] for c in comparisons]
    assert all(
        c.verdict
        == verdict(c.diff, c.diff_low, c.diff_high, c.p_adjusted, higher_is_better=c.higher_is_better, margin=c.margin)
        for c in judged
    )
    assert judged[0].verdict == "improved"


def test_comparison_refuses_bad_input():
    with pytest.raises(ValueError):
        metric_comparison("x", {"a": [1.0]}, {"a": [1.0]}, kind="ordinal")
    with pytest.raises(ValueError):
        metric_comparison("x", {"a": [1.0]}, {"b": [1.0]}, kind="score")
    with pytest.raises(ValueError, match="pass/fail"):
        metric_comparison("x", {"a": [0.7]}, {"a": [True]}, kind="binary")
    same = metric_comparison("x", {"a": [1.0]}, {"a": [1.0]}, kind="score")
    with pytest.raises(ValueError, match="unique"):
        run_verdicts([same, same])
