"""Wilson and bootstrap intervals against statsmodels and scipy on fixed data, plus coverage checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint

from evals.stats import bootstrap_mean_interval, paired_bootstrap_diff, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "confidence"),
    [(0, 10, 0.95), (1, 10, 0.95), (5, 10, 0.95), (10, 10, 0.95), (37, 120, 0.95), (37, 120, 0.9),
     (999, 1000, 0.99), (1, 1, 0.95), (0, 1, 0.8), (250, 1000, 0.5)],
)  # fmt: skip
def test_wilson_matches_statsmodels(successes, n, confidence):
    low, high = wilson_interval(successes, n, confidence)
    ref_low, ref_high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert low == pytest.approx(ref_low, abs=1e-12)
    assert high == pytest.approx(ref_high, abs=1e-12)


def test_wilson_textbook_value():
    # With no successes Wilson's upper bound reduces to z²/(n + z²): 0.1611 for n = 20 at 95%.
    assert wilson_interval(0, 20) == (0.0, pytest.approx(1.959964**2 / (20 + 1.959964**2), abs=1e-6))


def test_wilson_without_trials_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("successes", "n", "confidence"), [(-1, 5, 0.95), (6, 5, 0.95), (1, 5, 1.0), (1, 5, 0.0)])
def test_wilson_refuses_impossible_input(successes, n, confidence):
    with pytest.raises(ValueError):
        wilson_interval(successes, n, confidence)


@settings(deadline=None)  # scipy's first call in a worker can take longer than hypothesis' 200 ms
@given(
    n=st.integers(min_value=1, max_value=100_000),
    fraction=st.floats(min_value=0, max_value=1),
    confidence=st.floats(min_value=0.5, max_value=0.999),
)
def test_wilson_contains_the_estimate_and_stays_in_unit_interval(n, fraction, confidence):
    successes = round(fraction * n)
    low, high = wilson_interval(successes, n, confidence)
    assert 0.0 <= low <= successes / n <= high <= 1.0


# --- bootstrap --------------------------------------------------------------------------------

DATA = np.random.default_rng(42).exponential(scale=2.0, size=60)


def test_bootstrap_mean_interval_matches_scipy_percentile_bootstrap():
    """Both are percentile bootstraps of the mean with independent random streams, so they agree up to Monte Carlo
    error. With B = 20,000 the standard error of an estimated 2.5% quantile is about 2.7·SE/√B ≈ 0.02·SE (SE the
    standard error of the mean); the two ends may differ by a few times √2 of that, so 0.15·SE is a loose bound."""
    mean, low, high = bootstrap_mean_interval(DATA, resamples=20_000, seed=1)
    reference = scipy_stats.bootstrap(
        (DATA,), np.mean, method="percentile", n_resamples=20_000, confidence_level=0.95, rng=2
    ).confidence_interval
    standard_error = DATA.std(ddof=1) / np.sqrt(DATA.size)
    assert mean == pytest.approx(DATA.mean())
    assert low == pytest.approx(reference.low, abs=0.15 * standard_error)
    assert high == pytest.approx(reference.high, abs=0.15 * standard_error)
    # And the interval is nowhere near degenerate: about ±1.96 SE wide.
    assert (high - low) == pytest.approx(2 * 1.96 * standard_error, rel=0.15)


def test_bootstrap_is_reproducible_by_seed():
    assert bootstrap_mean_interval(DATA, seed=3) == bootstrap_mean_interval(DATA, seed=3)
    assert bootstrap_mean_interval(DATA, seed=3) != bootstrap_mean_interval(DATA, seed=4)


def test_singleton_clusters_are_plain_observations():
    assert bootstrap_mean_interval(DATA, clusters=list(range(DATA.size)), seed=5) == bootstrap_mean_interval(
        DATA, seed=5
    )


def test_clusters_are_resampled_whole():
    """An item repeated 4 times with the same result carries one item's information, not four."""
    item_values = DATA[:20]
    repeated = np.repeat(item_values, 4)
    clusters = np.repeat(np.arange(20), 4).tolist()
    clustered = bootstrap_mean_interval(repeated, clusters=clusters, seed=6)
    per_item = bootstrap_mean_interval(item_values, seed=6)
    naive = bootstrap_mean_interval(repeated, seed=6)
    assert clustered == per_item
    assert (naive[2] - naive[1]) < 0.6 * (clustered[2] - clustered[1])


def test_clustered_estimate_weighs_items_equally():
    mean, _, _ = bootstrap_mean_interval([1.0, 1.0, 1.0, 0.0], clusters=["a", "a", "a", "b"])
    assert mean == 0.5


def test_constant_values_give_a_point_interval():
    assert bootstrap_mean_interval([0.7] * 9) == (0.7, 0.7, 0.7)


@pytest.mark.parametrize(
    ("values", "kwargs"),
    [([], {}), ([1.0, float("nan")], {}), ([1.0, 2.0], {"clusters": ["a"]}), ([1.0], {"confidence": 1.5}),
     ([1.0], {"resamples": 0})],
)  # fmt: skip
def test_bootstrap_refuses_bad_input(values, kwargs):
    with pytest.raises(ValueError):
        bootstrap_mean_interval(values, **kwargs)


def test_bootstrap_coverage_is_near_nominal():
    """95% intervals for a Bernoulli(0.3) mean from 80 observations cover 0.3 in roughly 95% of 300 datasets
    (binomial sd of the coverage is 1.3 points; the percentile bootstrap runs slightly liberal at this size)."""
    rng = np.random.default_rng(11)
    covered = sum(
        low <= 0.3 <= high
        for low, high in (
            bootstrap_mean_interval((rng.random(80) < 0.3).astype(float), resamples=1000, seed=s)[1:]
            for s in range(300)
        )
    )
    assert 0.90 <= covered / 300 <= 0.98


def test_clustered_bootstrap_keeps_coverage_where_the_naive_one_loses_it():
    """40 items of differing difficulty (p_i ~ Beta(0.5, 0.5), mean 0.5), 5 repeats each: the repeats of an
    item are correlated, so resampling observations understates the uncertainty about the items' mean."""
    rng = np.random.default_rng(7)
    clustered_hits = naive_hits = 0
    trials = 200
    clusters = np.repeat(np.arange(40), 5).tolist()
    for trial in range(trials):
        difficulty = rng.beta(0.5, 0.5, size=40)
        values = (rng.random((40, 5)) < difficulty[:, None]).astype(float).ravel()
        _, low, high = bootstrap_mean_interval(values, clusters=clusters, resamples=1000, seed=trial)
        clustered_hits += low <= 0.5 <= high
        _, low, high = bootstrap_mean_interval(values, resamples=1000, seed=trial)
        naive_hits += low <= 0.5 <= high
    assert clustered_hits / trials >= 0.90
    assert naive_hits / trials <= 0.80


# --- paired bootstrap -------------------------------------------------------------------------


def test_paired_bootstrap_matches_scipy_on_the_differences():
    rng = np.random.default_rng(8)
    baseline = rng.random(50)
    candidate = baseline + rng.normal(0.05, 0.1, size=50)
    diff, low, high = paired_bootstrap_diff(
        {i: [b] for i, b in enumerate(baseline)}, {i: [c] for i, c in enumerate(candidate)}, resamples=20_000
    )
    differences = candidate - baseline
    reference = scipy_stats.bootstrap(
        (differences,), np.mean, method="percentile", n_resamples=20_000, rng=9
    ).confidence_interval
    standard_error = differences.std(ddof=1) / np.sqrt(differences.size)
    assert diff == pytest.approx(differences.mean())
    assert low == pytest.approx(reference.low, abs=0.15 * standard_error)
    assert high == pytest.approx(reference.high, abs=0.15 * standard_error)


def test_paired_bootstrap_uses_the_pairing():
    """A constant shift on widely varying items is known exactly once the items are paired."""
    baseline = {i: [float(i), float(i)] for i in range(30)}
    candidate = {i: [i + 0.25, i + 0.25] for i in range(30)}
    assert paired_bootstrap_diff(baseline, candidate) == (0.25, 0.25, 0.25)


def test_paired_bootstrap_averages_repeats_and_ignores_unpaired_items():
    baseline = {"a": [0.0, 1.0], "b": [1.0], "only-baseline": [5.0]}
    candidate = {"a": [1.0], "b": [1.0, 1.0, 1.0], "only-candidate": [9.0]}
    diff, low, high = paired_bootstrap_diff(baseline, candidate)
    assert diff == pytest.approx(0.25)  # item a: 1 − 0.5, item b: 0
    assert 0.0 <= low <= diff <= high <= 0.5


def test_paired_bootstrap_needs_a_common_item():
    with pytest.raises(ValueError, match="no item in common"):
        paired_bootstrap_diff({"a": [1.0]}, {"b": [1.0]})
