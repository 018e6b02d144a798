"""Evaluation assertions: validating assertion specs and scoring one cell (one output for one dataset item).

Pure and synchronous; model-backed assertions get their model calls as callables from the executor.
docs/evaluation-statistics.md describes every type's fields.
"""

from evals.assertions.aggregate import REDUCERS, cell_score, item_pass_rate, reduce_repeats
from evals.assertions.catalogue import (
    ASSERTION_TYPES,
    AssertionType,
    assertion_needs,
    assertion_score,
    assertion_validate,
)
from evals.assertions.judge import JUDGE_SYSTEM_PROMPT, judge_messages, judge_reply_parse
from evals.assertions.values import EXPECTED, AssertionConfigError, CellOutput, Outcome

__all__ = [
    "ASSERTION_TYPES",
    "EXPECTED",
    "JUDGE_SYSTEM_PROMPT",
    "REDUCERS",
    "AssertionConfigError",
    "AssertionType",
    "CellOutput",
    "Outcome",
    "assertion_needs",
    "assertion_score",
    "assertion_validate",
    "cell_score",
    "item_pass_rate",
    "judge_messages",
    "judge_reply_parse",
    "reduce_repeats",
]
