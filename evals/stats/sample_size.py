"""How many more items would resolve an inconclusive comparison, if the observed difference is real.

docs/evaluation-statistics.md gives the formulas and references.
"""

from __future__ import annotations

import math

from scipy.optimize import brentq
from scipy.stats import nct, norm
from scipy.stats import t as student_t

_MAX_ITEMS = 1e9


def _check(alpha: float, power: float, n_current: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1")
    if not 0.0 < power < 1.0:
        raise ValueError("power must be between 0 and 1")
    if isinstance(n_current, bool) or n_current < 0:
        raise ValueError("n_current must be >= 0")


def _more(total: float, n_current: int) -> int | None:
    if not math.isfinite(total) or total > _MAX_ITEMS:
        return None
    return max(0, math.ceil(total - 1e-9) - n_current)


def mcnemar_items(delta: float, discordant: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Items (pairs) for the paired McNemar test to detect p01 − p10 = delta (Connor 1987).

    n = (z_{1−α/2} √ψ + z_{1−β} √(ψ − δ²))² / δ², ψ = p01 + p10 the discordant proportion.
    """
    if not abs(delta) <= discordant <= 1.0:
        raise ValueError("the discordant proportion must be in [|delta|, 1]")
    z_alpha, z_beta = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return (z_alpha * math.sqrt(discordant) + z_beta * math.sqrt(discordant - delta * delta)) ** 2 / delta**2


def two_proportion_items(p1: float, p2: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Items per group for the two-sided two-proportion z-test on the arcsine scale (Cohen 1988).

    h = 2·asin(√p2) − 2·asin(√p1); n solves Φ(|h|√(n/2) − z) + Φ(−|h|√(n/2) − z) = power with z = z_{1−α/2}
    (both rejection tails counted, as statsmodels' NormalIndPower does).
    """
    h = abs(2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1)))
    z = norm.ppf(1 - alpha / 2)

    def shortfall(n: float) -> float:
        shift = h * math.sqrt(n / 2)
        return norm.cdf(shift - z) + norm.cdf(-shift - z) - power

    return brentq(shortfall, 1e-9, _MAX_ITEMS * 10)


def items_needed(
    p_base: float,
    p_cand: float,
    n_current: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    paired: bool = True,
    discordant: float | None = None,
) -> int | None:
    """How many items beyond `n_current` a pass-rate difference of p_cand − p_base needs to reach `power`.

    Paired with a known discordant proportion: Connor's McNemar formula. Otherwise the two-proportion
    formula per group, which for paired runs on the same items is conservative (pairing only helps when
    the variants' results are positively correlated, as they are on shared items). None when the
    difference is 0 (no number of items resolves it); 0 when n_current already suffices.
    """
    _check(alpha, power, n_current)
    for p in (p_base, p_cand):
        if not 0.0 <= p <= 1.0:
            raise ValueError("pass rates must be in [0, 1]")
    delta = p_cand - p_base
    if delta == 0:
        return None
    if paired and discordant is not None:
        return _more(mcnemar_items(delta, discordant, alpha=alpha, power=power), n_current)
    return _more(two_proportion_items(p_base, p_cand, alpha=alpha, power=power), n_current)


def paired_t_items(diff: float, sd_diff: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Items for the two-sided paired t-test to detect a mean difference `diff` with per-item sd `sd_diff`.

    Exact power from the noncentral t: P(|T| > t_{1−α/2, n−1}), T ~ t'(n − 1, d√n), d = diff / sd_diff.
    """
    effect = abs(diff) / sd_diff

    def shortfall(n: float) -> float:
        df = n - 1
        critical = student_t.ppf(1 - alpha / 2, df)
        noncentrality = effect * math.sqrt(n)
        # The far tail is negligible once n is moderate, and scipy's nct.cdf returns NaN for some such
        # arguments; it counts as 0 then.
        far_tail = float(nct.cdf(-critical, df, noncentrality))
        return float(nct.sf(critical, df, noncentrality)) + (far_tail if math.isfinite(far_tail) else 0.0) - power

    if shortfall(2.0) >= 0:
        return 2.0
    # The normal approximation undershoots the t answer by a few items; doubling from it brackets the root
    # without evaluating the noncentral t at absurd sizes (where scipy returns NaN).
    upper = ((norm.ppf(1 - alpha / 2) + norm.ppf(power)) / effect) ** 2 + 10
    while shortfall(upper) < 0:
        upper *= 2
        if upper > _MAX_ITEMS:
            return math.inf
    return brentq(shortfall, 2.0, upper)


def items_needed_means(
    diff: float, sd_diff: float, n_current: int, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """How many items beyond `n_current` a mean-score difference `diff` needs (paired t approximation).

    None when diff is 0. With sd_diff 0 every item moved by the same amount, and 2 items suffice.
    """
    _check(alpha, power, n_current)
    if not (math.isfinite(diff) and math.isfinite(sd_diff)) or sd_diff < 0:
        raise ValueError("diff must be finite and sd_diff finite and >= 0")
    if diff == 0:
        return None
    if sd_diff == 0:
        return max(0, 2 - n_current)
    return _more(paired_t_items(diff, sd_diff, alpha=alpha, power=power), n_current)
