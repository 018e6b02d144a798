"""McNemar, the clustered sign-flip test, Holm and the two-sample tests against scipy/statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_ztest

from evals.stats import (
    holm,
    mcnemar_exact,
    paired_binary_test,
    paired_counts,
    sign_flip_integer_exact,
    sign_flip_test,
    two_sample_rate_test,
    welch_t,
)


@pytest.mark.parametrize(("b", "c"), [(0, 1), (1, 0), (3, 9), (9, 3), (10, 10), (0, 12), (25, 40), (101, 140), (7, 8)])
def test_mcnemar_exact_matches_statsmodels_and_scipy(b, c):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(mcnemar([[50, b], [c, 50]], exact=True).pvalue, rel=1e-12)
    assert p == pytest.approx(scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_without_discordant_pairs_is_one():
    assert mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize(("b", "c"), [(-1, 2), (True, 2)])
def test_mcnemar_refuses_non_counts(b, c):
    with pytest.raises(ValueError):
        mcnemar_exact(b, c)


@settings(deadline=None)  # scipy's first call in a worker can take longer than hypothesis' 200 ms
@given(st.integers(0, 500), st.integers(0, 500))
def test_mcnemar_is_symmetric_and_a_probability(b, c):
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)
    assert 0.0 < mcnemar_exact(b, c) <= 1.0


def test_paired_counts():
    pairs = [(True, True), (True, False), (True, False), (False, True), (False, False), (False, False)]
    assert paired_counts(pairs) == (1, 2, 1, 2)


# --- the sign-flip test -----------------------------------------------------------------------


@settings(deadline=None)
@given(st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=60))
def test_sign_flip_on_single_runs_is_exact_mcnemar(differences):
    """With one run per item, per-item differences are −1, 0, +1 and the sign-flip test is McNemar's."""
    b, c = differences.count(-1), differences.count(1)
    assert sign_flip_integer_exact(differences) == pytest.approx(mcnemar_exact(b, c), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sign_flip_enumeration_matches_scipy_permutation_test(seed):
    rng = np.random.default_rng(seed)
    baseline = rng.random(11)
    candidate = baseline + rng.normal(0.15, 0.2, size=11)
    p, method = sign_flip_test((candidate - baseline).tolist())
    reference = scipy_stats.permutation_test(
        (candidate, baseline),
        lambda x, y: np.mean(x - y),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
    ).pvalue
    assert method == "sign_flip_exact"
    assert p == pytest.approx(reference, rel=1e-9)


def test_sign_flip_integer_convolution_matches_enumeration():
    differences = [3, -1, 2, 0, 5, 1, -2, 4, 1, 1, -3, 2]
    assert sign_flip_integer_exact(differences) == pytest.approx(sign_flip_test(differences)[0], rel=1e-12)


def test_sign_flip_monte_carlo_is_close_to_the_exact_value():
    differences = [int(x) for x in np.random.default_rng(4).integers(-3, 5, size=40) if x != 0]
    exact = sign_flip_integer_exact(differences)
    sampled, method = sign_flip_test(differences, resamples=20_000, seed=5)
    assert method == "sign_flip_monte_carlo"
    # Monte Carlo standard error at B = 20,000 is at most 0.0036; 4 of them.
    assert sampled == pytest.approx(exact, abs=0.015)
    assert sampled > 0.0


def test_sign_flip_without_differences_is_one():
    assert sign_flip_test([0.0, 0.0]) == (1.0, "sign_flip_exact")
    assert sign_flip_integer_exact([0, 0]) == 1.0


# --- paired_binary_test -----------------------------------------------------------------------


def test_single_runs_use_exact_mcnemar():
    baseline = {i: [i % 3 != 0] for i in range(30)}
    candidate = {i: [i % 5 != 0] for i in range(30)}
    result = paired_binary_test(baseline, candidate)
    _, b, c, _ = paired_counts([(baseline[i][0], candidate[i][0]) for i in range(30)])
    assert result.method == "mcnemar_exact"
    assert result.p_value == mcnemar_exact(b, c)
    assert result.diff == pytest.approx((c - b) / 30)
    assert result.discordant == pytest.approx((b + c) / 30)
    assert result.n_items == 30
    assert result.low <= result.diff <= result.high


def test_identical_repeats_count_once():
    """At temperature 0 an item's repeats often agree; they must not multiply the evidence. Here 2 items got
    worse and 8 better (McNemar p = 0.11); pooling 5 identical repeats as 5 pairs each would claim 10 vs 40."""
    single_base = {i: [i < 20] for i in range(40)}
    single_cand = {i: [i < 18 or 20 <= i < 28] for i in range(40)}
    _, b, c, _ = paired_counts([(single_base[i][0], single_cand[i][0]) for i in range(40)])
    assert (b, c) == (2, 8)
    repeated = paired_binary_test(
        {i: v * 5 for i, v in single_base.items()}, {i: v * 5 for i, v in single_cand.items()}
    )
    assert repeated.method == "clustered_sign_flip_exact"
    assert repeated.p_value == pytest.approx(mcnemar_exact(2, 8), rel=1e-9)
    assert repeated.diff == pytest.approx(6 / 40)
    assert mcnemar_exact(5 * b, 5 * c) < 0.001 < 0.05 < repeated.p_value


def test_clustered_test_holds_its_level_under_the_null():
    """Both variants share each item's pass probability: the test rejects at 5% about 5% of the time."""
    rng = np.random.default_rng(13)
    trials, rejections = 300, 0
    for _ in range(trials):
        difficulty = rng.beta(0.5, 0.5, size=40)
        baseline = {i: list(rng.random(5) < difficulty[i]) for i in range(40)}
        candidate = {i: list(rng.random(5) < difficulty[i]) for i in range(40)}
        rejections += paired_binary_test(baseline, candidate, resamples=100).p_value < 0.05
    assert rejections / trials <= 0.08


def test_clustered_test_detects_a_real_improvement():
    rng = np.random.default_rng(14)
    difficulty = rng.beta(2, 2, size=60)
    baseline = {i: list(rng.random(3) < difficulty[i]) for i in range(60)}
    candidate = {i: list(rng.random(3) < min(1.0, difficulty[i] + 0.25)) for i in range(60)}
    result = paired_binary_test(baseline, candidate)
    assert result.p_value < 0.01
    assert result.low > 0
    assert result.discordant is None


def test_paired_binary_uses_only_shared_items():
    result = paired_binary_test({"a": [True], "b": [False], "x": [True]}, {"a": [True], "b": [True], "y": [False]})
    assert result.n_items == 2
    with pytest.raises(ValueError):
        paired_binary_test({"a": [True]}, {"b": [True]})


# --- Holm -------------------------------------------------------------------------------------

RAW = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": 0.5, "f": 0.04, "g": 0.0, "h": 1.0}


def test_holm_matches_statsmodels():
    names = list(RAW)
    reference = multipletests([RAW[n] for n in names], method="holm")[1]
    adjusted = holm(RAW)
    assert [adjusted[n] for n in names] == pytest.approx(list(reference), abs=1e-15)


def test_holm_edge_cases():
    assert holm({}) == {}
    assert holm({"only": 0.03}) == {"only": 0.03}
    with pytest.raises(ValueError):
        holm({"bad": 1.5})


@given(st.dictionaries(st.integers(0, 99).map(str), st.floats(0, 1), min_size=1, max_size=20))
def test_holm_properties(raw):
    adjusted = holm(raw)
    names = list(raw)
    assert all(raw[n] <= adjusted[n] <= 1.0 for n in names)
    for first in names:
        for second in names:
            if raw[first] < raw[second]:
                assert adjusted[first] <= adjusted[second]


@pytest.mark.parametrize("seed", range(10))
def test_holm_matches_statsmodels_on_random_sets_with_ties(seed):
    rng = np.random.default_rng(seed)
    raw = {f"m{i}": float(p) for i, p in enumerate(np.round(rng.random(rng.integers(2, 15)) ** 3, 2))}
    reference = multipletests(list(raw.values()), method="holm")[1]
    assert list(holm(raw).values()) == pytest.approx(list(reference), abs=1e-12)


# --- two-sample tests for online experiments ---------------------------------------------------


@pytest.mark.parametrize(("s1", "n1", "s2", "n2"), [(120, 1000, 150, 1000), (5, 40, 12, 45), (300, 300, 299, 300)])
def test_two_sample_rate_test_matches_statsmodels(s1, n1, s2, n2):
    _, reference = proportions_ztest([s1, s2], [n1, n2])
    assert two_sample_rate_test(s1, n1, s2, n2) == pytest.approx(reference, rel=1e-9)


def test_two_sample_rate_test_without_variance_is_one():
    assert two_sample_rate_test(0, 10, 0, 20) == 1.0
    with pytest.raises(ValueError):
        two_sample_rate_test(3, 0, 1, 2)


@pytest.mark.parametrize(
    ("mean1", "var1", "n1", "mean2", "var2", "n2"),
    [(100.0, 25.0, 30, 104.0, 81.0, 25), (0.5, 0.04, 1000, 0.52, 0.05, 900), (3.0, 1.0, 2, 3.0, 2.0, 3)],
)
def test_welch_t_matches_scipy(mean1, var1, n1, mean2, var2, n2):
    reference = scipy_stats.ttest_ind_from_stats(
        mean1, np.sqrt(var1), n1, mean2, np.sqrt(var2), n2, equal_var=False
    ).pvalue
    assert welch_t(mean1, var1, n1, mean2, var2, n2) == pytest.approx(reference, rel=1e-9)


def test_welch_t_degenerate_cases():
    assert welch_t(1.0, 0.0, 5, 1.0, 0.0, 5) == 1.0
    assert welch_t(1.0, 0.0, 5, 2.0, 0.0, 5) == 0.0
    with pytest.raises(ValueError):
        welch_t(1.0, 1.0, 1, 1.0, 1.0, 5)
