"""Sample sizes against statsmodels' power solvers, and Connor's McNemar formula against simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower, TTestPower
from statsmodels.stats.proportion import proportion_effectsize

from evals.stats import items_needed, items_needed_means, mcnemar_items, paired_t_items, two_proportion_items


@pytest.mark.parametrize(
    ("p1", "p2", "alpha", "power"),
    [(0.6, 0.7, 0.05, 0.8), (0.5, 0.55, 0.05, 0.9), (0.9, 0.8, 0.01, 0.8), (0.02, 0.04, 0.05, 0.8)],
)
def test_two_proportion_items_match_statsmodels(p1, p2, alpha, power):
    reference = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(p2, p1), alpha=alpha, power=power, ratio=1.0
    )
    assert two_proportion_items(p1, p2, alpha=alpha, power=power) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize(
    ("diff", "sd", "alpha", "power"),
    [(0.1, 0.3, 0.05, 0.8), (1.0, 0.3, 0.05, 0.8), (0.05, 0.5, 0.05, 0.9), (-0.2, 0.25, 0.01, 0.8)],
)
def test_paired_t_items_match_statsmodels(diff, sd, alpha, power):
    reference = TTestPower().solve_power(effect_size=abs(diff) / sd, alpha=alpha, power=power)
    assert paired_t_items(diff, sd, alpha=alpha, power=power) == pytest.approx(reference, rel=1e-6)


def test_connor_formula_by_hand():
    # δ = 0.1, ψ = 0.3: (1.95996·√0.3 + 0.84162·√0.29)² / 0.01 = 233.09
    assert mcnemar_items(0.1, 0.3) == pytest.approx(233.09, abs=0.01)


def test_connor_sample_size_gives_the_promised_power():
    """Simulate McNemar's (uncorrected, asymptotic) test at Connor's n: it rejects in about 80% of 4000 datasets
    (binomial sd 0.6 points; the normal approximations are a little off at n ≈ 130)."""
    p01, p10 = 0.25, 0.10  # the candidate fixes 25% of items and breaks 10%
    n = math.ceil(mcnemar_items(p01 - p10, p01 + p10))
    rng = np.random.default_rng(21)
    counts = rng.multinomial(n, [p01, p10, 1 - p01 - p10], size=4000)
    c, b = counts[:, 0], counts[:, 1]
    statistic = (b - c) ** 2 / np.maximum(b + c, 1)
    assert 0.77 <= np.mean(statistic > 3.841459) <= 0.84


def test_items_needed_counts_only_the_missing_items():
    total = math.ceil(two_proportion_items(0.6, 0.7))
    assert items_needed(0.6, 0.7, 100, paired=False) == total - 100
    assert items_needed(0.6, 0.7, 100) == total - 100  # paired, discordance unknown: the conservative count
    assert items_needed(0.6, 0.7, 10_000) == 0
    assert items_needed(0.6, 0.7, 50, discordant=0.3) == math.ceil(mcnemar_items(0.1, 0.3)) - 50


def test_items_needed_without_a_difference_is_none():
    assert items_needed(0.7, 0.7, 100) is None
    assert items_needed_means(0.0, 0.2, 100) is None


def test_items_needed_means():
    assert items_needed_means(0.1, 0.3, 20) == math.ceil(paired_t_items(0.1, 0.3)) - 20
    assert items_needed_means(0.1, 0.0, 0) == 2  # every item moved by the same amount
    assert items_needed_means(0.1, 0.0, 30) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: items_needed(1.2, 0.5, 10),
        lambda: items_needed(0.5, 0.6, -1),
        lambda: items_needed(0.5, 0.6, 10, alpha=0),
        lambda: items_needed(0.5, 0.6, 10, power=1.0),
        lambda: items_needed(0.5, 0.7, 10, discordant=0.1),
        lambda: items_needed_means(0.1, -1.0, 10),
        lambda: items_needed_means(float("nan"), 1.0, 10),
    ],
)
def test_sample_size_refuses_bad_input(call):
    with pytest.raises(ValueError):
        call()
