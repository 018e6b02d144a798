"""Evaluation statistics: intervals, paired tests, multiplicity adjustment, verdicts and sample sizes.

Pure functions over numbers (numpy/scipy); docs/evaluation-statistics.md gives the formulas and references.
"""

from evals.stats.comparison import VERDICTS, Estimate, MetricComparison, metric_comparison, run_verdicts, verdict
from evals.stats.intervals import (
    bootstrap_mean_interval,
    paired_bootstrap_diff,
    paired_item_means,
    wilson_interval,
    z_two_sided,
)
from evals.stats.sample_size import (
    items_needed,
    items_needed_means,
    mcnemar_items,
    paired_t_items,
    two_proportion_items,
)
from evals.stats.significance import (
    PairedBinary,
    holm,
    mcnemar_exact,
    paired_binary_test,
    paired_counts,
    sign_flip_integer_exact,
    sign_flip_test,
    two_sample_rate_test,
    welch_t,
)

__all__ = [
    "VERDICTS",
    "Estimate",
    "MetricComparison",
    "PairedBinary",
    "bootstrap_mean_interval",
    "holm",
    "items_needed",
    "items_needed_means",
    "mcnemar_exact",
    "mcnemar_items",
    "metric_comparison",
    "paired_binary_test",
    "paired_bootstrap_diff",
    "paired_counts",
    "paired_item_means",
    "paired_t_items",
    "run_verdicts",
    "sign_flip_integer_exact",
    "sign_flip_test",
    "two_proportion_items",
    "two_sample_rate_test",
    "verdict",
    "welch_t",
    "wilson_interval",
    "z_two_sided",
]
