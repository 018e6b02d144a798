"""Confidence intervals: Wilson's score interval for a pass rate, and percentile bootstrap intervals for
means and paired mean differences, resampling whole items when an item was run several times.

docs/evaluation-statistics.md gives the formulas and references.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy.stats import norm

# The bootstrap draws resamples × units indices; drawing them in batches of at most this many keeps
# memory bounded (8 bytes each: 32 MiB) for large datasets without changing the seeded sequence's meaning.
_BOOTSTRAP_BATCH_CELLS = 4_000_000


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1 (exclusive)")


def z_two_sided(confidence: float) -> float:
    """The standard normal quantile z with P(|Z| <= z) = confidence."""
    _check_confidence(confidence)
    return float(norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's (1927) score interval for a binomial proportion; (0.0, 1.0) when n is 0."""
    if isinstance(successes, bool) or isinstance(n, bool) or n < 0 or not 0 <= successes <= n:
        raise ValueError("need 0 <= successes <= n")
    z = z_two_sided(confidence)
    if n == 0:
        return 0.0, 1.0
    p_hat = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p_hat + z2 / (2 * n)) / denominator
    half_width = (z / denominator) * math.sqrt(p_hat * (1.0 - p_hat) / n + z2 / (4 * n * n))
    # At 0 or n successes the bound equals p̂ exactly; rounding must not move it past p̂ or outside [0, 1].
    low = 0.0 if successes == 0 else max(0.0, min(p_hat, centre - half_width))
    high = 1.0 if successes == n else min(1.0, max(p_hat, centre + half_width))
    return low, high


def _unit_means(values: Sequence[float], clusters: Sequence[Hashable] | None) -> np.ndarray:
    """The resampling units: each observation, or each cluster's mean (clusters in first-seen order)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError("need at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite numbers")
    if clusters is None:
        return array
    if len(clusters) != array.size:
        raise ValueError(f"{array.size} values but {len(clusters)} cluster labels")
    sums: dict[Hashable, float] = {}
    counts: dict[Hashable, int] = {}
    for value, cluster in zip(array.tolist(), clusters, strict=True):
        sums[cluster] = sums.get(cluster, 0.0) + value
        counts[cluster] = counts.get(cluster, 0) + 1
    return np.array([sums[c] / counts[c] for c in sums])


def bootstrap_means(units: np.ndarray, *, resamples: int, seed: int) -> np.ndarray:
    """`resamples` means of `units` resampled with replacement (numpy's PCG64 seeded with `seed`)."""
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    rng = np.random.default_rng(seed)
    size = units.size
    rows_per_batch = max(1, _BOOTSTRAP_BATCH_CELLS // size)
    means = np.empty(resamples)
    for start in range(0, resamples, rows_per_batch):
        rows = min(rows_per_batch, resamples - start)
        means[start : start + rows] = units[rng.integers(0, size, size=(rows, size))].mean(axis=1)
    return means


def _percentile_interval(estimate: float, replicates: np.ndarray, confidence: float) -> tuple[float, float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    # The quantiles of identical replicates can differ from the estimate in the last bit; a degenerate
    # interval should read as exactly [estimate, estimate].
    if np.ptp(replicates) == 0.0:
        low = high = estimate
    return float(estimate), float(low), float(high)


def bootstrap_mean_interval(
    values: Sequence[float],
    *,
    clusters: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean (Efron & Tibshirani 1993).

    With `clusters` (one label per value, e.g. the dataset item of each repeat), whole clusters are resampled
    (Field & Welsh 2007) and the estimate is the mean of the cluster means, so every item weighs the same
    however many of its repeats succeeded in running.
    """
    _check_confidence(confidence)
    units = _unit_means(values, clusters)
    return _percentile_interval(float(units.mean()), bootstrap_means(units, resamples=resamples, seed=seed), confidence)


def paired_item_means(
    baseline: Mapping[Hashable, Sequence[float]], candidate: Mapping[Hashable, Sequence[float]]
) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """(items, baseline means, candidate means) over the items both variants have values for.

    Items present in only one variant are left out: a paired comparison needs both sides of every pair.
    """
    items = [item for item in baseline if item in candidate and len(baseline[item]) and len(candidate[item])]
    if not items:
        raise ValueError("the two variants have no item in common")
    base = np.array([math.fsum(map(float, baseline[item])) / len(baseline[item]) for item in items])
    cand = np.array([math.fsum(map(float, candidate[item])) / len(candidate[item]) for item in items])
    if not (np.all(np.isfinite(base)) and np.all(np.isfinite(cand))):
        raise ValueError("values must be finite numbers")
    return items, base, cand


def paired_bootstrap_diff(
    baseline: Mapping[Hashable, Sequence[float]],
    candidate: Mapping[Hashable, Sequence[float]],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean difference candidate − baseline, low, high), resampling items.

    Each item's repeats are averaged per variant first; the per-item differences are then bootstrapped,
    which keeps the pairing (both variants ran on the same items) and the clustering of repeats.
    """
    _check_confidence(confidence)
    _, base, cand = paired_item_means(baseline, candidate)
    differences = cand - base
    return _percentile_interval(
        float(differences.mean()), bootstrap_means(differences, resamples=resamples, seed=seed), confidence
    )
