"""From assertion outcomes to a cell's score, and from K repeats of an item to the item's result."""

from __future__ import annotations

import math

from evals.assertions.values import Outcome

REDUCERS = ("mean", "majority", "pass_at_k")


def cell_score(specs: list[dict], outcomes: list[Outcome], threshold: float) -> tuple[float, bool]:
    """(weighted mean of the outcomes' scores, passed).

    Passed means score >= threshold and no critical assertion failed. `specs` and `outcomes` are parallel
    lists (outcomes carry their spec's weight and criticality); a cell with no assertions scores 0 and fails,
    because "nothing was checked" must not read as success.
    """
    if len(specs) != len(outcomes):
        raise ValueError(f"{len(specs)} specs but {len(outcomes)} outcomes")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be in [0, 1]")
    total_weight = math.fsum(outcome.weight for outcome in outcomes)
    if not outcomes or total_weight <= 0:
        return 0.0, False
    score = math.fsum(outcome.weight * outcome.score for outcome in outcomes) / total_weight
    score = min(1.0, max(0.0, score))
    critical_failed = any(outcome.critical and not outcome.passed for outcome in outcomes)
    return score, score >= threshold and not critical_failed


def item_pass_rate(passes: list[bool]) -> float:
    """The fraction of an item's repeats that passed."""
    if not passes:
        raise ValueError("no repeats")
    return sum(1 for passed in passes if passed) / len(passes)


def reduce_repeats(passes: list[bool], scores: list[float], reducer: str) -> tuple[bool, float]:
    """An item's (passed, score) from its K repeats.

    - mean: score = mean of scores; passed = pass rate >= 0.5 (a tie passes).
    - majority: score = mean of scores; passed = more than half the repeats passed (a tie fails).
    - pass_at_k: score = best score; passed = at least one repeat passed.
    """
    if len(passes) != len(scores):
        raise ValueError(f"{len(passes)} passes but {len(scores)} scores")
    if not passes:
        raise ValueError("no repeats")
    passed_count = sum(1 for passed in passes if passed)
    if reducer == "mean":
        return passed_count / len(passes) >= 0.5, math.fsum(scores) / len(scores)
    if reducer == "majority":
        return passed_count * 2 > len(passes), math.fsum(scores) / len(scores)
    if reducer == "pass_at_k":
        return passed_count > 0, max(scores)
    raise ValueError(f"unknown reducer {reducer!r} (known: {', '.join(REDUCERS)})")
