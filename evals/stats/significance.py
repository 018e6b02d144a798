"""Significance tests: exact McNemar for paired pass/fail, a clustered (per-item) sign-flip test for
items run several times, Holm's step-down adjustment, and two-sample tests for online experiments.

docs/evaluation-statistics.md gives the formulas, the choice of the clustered test and the references.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import reduce

import numpy as np
from scipy.stats import binom, norm
from scipy.stats import t as student_t

from evals.stats.intervals import paired_bootstrap_diff

# Exact sign-flip distributions are computed by convolution over an integer lattice; past this much work
# (items × lattice width) the Monte Carlo version is used instead. Measured here: 2,500 items with differences
# up to ±5 (3.5e7 operations) take 0.11 s, so the limit costs at most about 0.15 s.
_EXACT_WORK_LIMIT = 50_000_000
# Float differences are enumerated exactly up to 2**16 sign patterns, else sampled.
_ENUMERATE_MAX_NONZERO = 16
MONTE_CARLO_RESAMPLES = 20_000


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value (McNemar 1947): the binomial(b + c, 1/2) test on the discordant pairs.

    p = min(1, 2 · P(X <= min(b, c))), X ~ Binomial(b + c, 1/2); 1.0 when there is no discordant pair.
    """
    if isinstance(b, bool) or isinstance(c, bool) or b < 0 or c < 0:
        raise ValueError("b and c must be counts (integers >= 0)")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def paired_counts(pairs: Sequence[tuple[bool, bool]]) -> tuple[int, int, int, int]:
    """(a, b, c, d) of the 2×2 table of (baseline passed, candidate passed) pairs.

    a: both passed; b: only the baseline passed; c: only the candidate passed; d: both failed.
    """
    a = b = c = d = 0
    for baseline_passed, candidate_passed in pairs:
        if baseline_passed and candidate_passed:
            a += 1
        elif baseline_passed:
            b += 1
        elif candidate_passed:
            c += 1
        else:
            d += 1
    return a, b, c, d


def _tail_count(null_sums: np.ndarray, observed: float) -> int:
    """How many null sums are at least as extreme as the observed one."""
    # Sums equal to the observed one in exact arithmetic may differ in the last bits as floats.
    tolerance = 1e-9 * max(1.0, abs(observed))
    return int(np.count_nonzero(np.abs(null_sums) >= abs(observed) - tolerance))


def sign_flip_integer_exact(differences: Sequence[int]) -> float:
    """Exact two-sided p-value of the sign-flip test for integer differences, by convolution.

    Under the null each difference is equally likely to have either sign; the statistic is |Σ d_i|.
    """
    values = [abs(int(d)) for d in differences if d != 0]
    observed = abs(sum(int(d) for d in differences))
    if not values:
        return 1.0
    total = sum(values)
    # distribution[k] = P(Σ s_i |d_i| = k − total)
    distribution = np.zeros(2 * total + 1)
    distribution[total] = 1.0
    for value in values:
        shifted = np.zeros_like(distribution)
        shifted[value:] += distribution[:-value]
        shifted[:-value] += distribution[value:]
        distribution = shifted * 0.5
    sums = np.arange(-total, total + 1)
    return float(min(1.0, distribution[np.abs(sums) >= observed].sum()))


def sign_flip_test(
    differences: Sequence[float], *, resamples: int = MONTE_CARLO_RESAMPLES, seed: int = 0
) -> tuple[float, str]:
    """(two-sided p-value, method) of the paired sign-flip (randomisation) test of mean difference 0.

    Exact by enumeration when at most 16 differences are non-zero, else Monte Carlo with `resamples` random
    sign patterns and the (1 + hits) / (1 + resamples) estimate, which never reports p = 0 (Phipson & Smyth 2010).
    """
    array = np.asarray(differences, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ValueError("differences must be finite numbers")
    nonzero = array[array != 0.0]
    if nonzero.size == 0:
        return 1.0, "sign_flip_exact"
    observed = float(nonzero.sum())
    if nonzero.size <= _ENUMERATE_MAX_NONZERO:
        patterns = np.arange(2**nonzero.size)[:, None] >> np.arange(nonzero.size) & 1
        null_sums = (np.where(patterns == 1, 1.0, -1.0) * nonzero).sum(axis=1)
        return min(1.0, _tail_count(null_sums, observed) / null_sums.size), "sign_flip_exact"
    rng = np.random.default_rng(seed)
    hits = 0
    rows_per_batch = max(1, 4_000_000 // nonzero.size)
    for start in range(0, resamples, rows_per_batch):
        rows = min(rows_per_batch, resamples - start)
        signs = rng.integers(0, 2, size=(rows, nonzero.size)) * 2 - 1
        hits += _tail_count((signs * nonzero).sum(axis=1), observed)
    return (1 + hits) / (1 + resamples), "sign_flip_monte_carlo"


@dataclass(frozen=True)
class PairedBinary:
    """A paired pass-rate comparison: diff = candidate − baseline pass rate (items weigh equally)."""

    diff: float
    low: float
    high: float
    p_value: float
    method: str
    n_items: int = 0
    baseline_rate: float = 0.0
    candidate_rate: float = 0.0
    # The fraction of items whose result differs between the variants (one run per item only), for
    # the sample-size formula; None when items have several repeats.
    discordant: float | None = None


def _lcm(numbers: list[int]) -> int:
    return reduce(lambda x, y: x * y // math.gcd(x, y), numbers, 1)


def paired_binary_test(
    baseline: Mapping[Hashable, Sequence[bool]],
    candidate: Mapping[Hashable, Sequence[bool]],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedBinary:
    """Compare pass rates of two variants run on the same items, each item possibly repeated.

    One run per item: the exact McNemar test. Several: the clustered sign-flip test on the per-item
    difference of pass rates (the randomisation form of Durkalski et al.'s clustered McNemar statistic, and
    identical to exact McNemar when every item has one run). The interval is the paired item bootstrap.
    Items present in only one variant are left out.
    """
    shared = [item for item in baseline if item in candidate and len(baseline[item]) and len(candidate[item])]
    if not shared:
        raise ValueError("the two variants have no item in common")
    base = {item: [bool(p) for p in baseline[item]] for item in shared}
    cand = {item: [bool(p) for p in candidate[item]] for item in shared}
    diff, low, high = paired_bootstrap_diff(
        {i: [float(p) for p in v] for i, v in base.items()},
        {i: [float(p) for p in v] for i, v in cand.items()},
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    base_rate = sum(sum(v) / len(v) for v in base.values()) / len(shared)
    cand_rate = sum(sum(v) / len(v) for v in cand.values()) / len(shared)
    if all(len(base[i]) == 1 and len(cand[i]) == 1 for i in shared):
        _, b, c, _ = paired_counts([(base[i][0], cand[i][0]) for i in shared])
        return PairedBinary(
            diff, low, high, mcnemar_exact(b, c), "mcnemar_exact", len(shared), base_rate, cand_rate,
            discordant=(b + c) / len(shared),
        )  # fmt: skip
    # Per-item differences of pass rates are fractions with denominators K_b·K_c; on their common lattice
    # they are integers and the exact null distribution is a cheap convolution.
    rate_differences = [Fraction(sum(cand[i]), len(cand[i])) - Fraction(sum(base[i]), len(base[i])) for i in shared]
    denominator = _lcm([d.denominator for d in rate_differences])
    lattice = [int(d * denominator) for d in rate_differences]
    if len(lattice) * 2 * sum(abs(x) for x in lattice) <= _EXACT_WORK_LIMIT:
        p_value, method = sign_flip_integer_exact(lattice), "clustered_sign_flip_exact"
    else:
        p_value, _ = sign_flip_test([float(d) for d in rate_differences], seed=seed)
        method = "clustered_sign_flip_monte_carlo"
    return PairedBinary(diff, low, high, p_value, method, len(shared), base_rate, cand_rate)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979): step-down, monotone, capped at 1.

    With the m raw p-values sorted ascending, p_adj(i) = max over j <= i of min(1, (m − j + 1) · p(j)).
    """
    for name, p in p_values.items():
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: p-value must be in [0, 1]")
    ordered = sorted(p_values, key=lambda name: p_values[name])
    m = len(ordered)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(ordered):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def two_sample_rate_test(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (independent samples, e.g. A/B traffic).

    1.0 when the pooled rate is 0 or 1 (both samples identical, no variance to test against).
    """
    for s, n in ((s1, n1), (s2, n2)):
        if n < 1 or not 0 <= s <= n:
            raise ValueError("need n >= 1 and 0 <= successes <= n")
    pooled = (s1 + s2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance == 0.0:
        return 1.0
    z = (s1 / n1 - s2 / n2) / math.sqrt(variance)
    return float(min(1.0, 2.0 * norm.sf(abs(z))))


def welch_t(mean1: float, var1: float, n1: int, mean2: float, var2: float, n2: int) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test from summary statistics (variances with ddof=1)."""
    if n1 < 2 or n2 < 2:
        raise ValueError("each sample needs at least 2 observations")
    if var1 < 0 or var2 < 0:
        raise ValueError("variances must be >= 0")
    se1, se2 = var1 / n1, var2 / n2
    standard_error = math.sqrt(se1 + se2)
    if standard_error == 0.0:
        return 1.0 if mean1 == mean2 else 0.0
    t = (mean1 - mean2) / standard_error
    df = (se1 + se2) ** 2 / (se1**2 / (n1 - 1) + se2**2 / (n2 - 1))
    return float(min(1.0, 2.0 * student_t.sf(abs(t), df)))
