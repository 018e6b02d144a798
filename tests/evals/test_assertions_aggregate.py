"""Cell scores from outcomes, and item results from repeats."""

from __future__ import annotations

import pytest

from evals.assertions import Outcome, cell_score, item_pass_rate, reduce_repeats


def outcome(passed: bool, score: float, weight: float = 1.0, critical: bool = False) -> Outcome:
    return Outcome(name="a", type="contains", passed=passed, score=score, detail="", weight=weight, critical=critical)


def specs(n: int) -> list[dict]:
    return [{"type": "contains", "value": "x"}] * n


def test_weighted_mean_and_threshold():
    outcomes = [outcome(True, 1.0, weight=3), outcome(False, 0.0, weight=1)]
    assert cell_score(specs(2), outcomes, 0.75) == (0.75, True)
    assert cell_score(specs(2), outcomes, 0.76) == (0.75, False)


def test_partial_scores_count():
    outcomes = [outcome(True, 0.9), outcome(False, 0.4, weight=2)]
    score, passed = cell_score(specs(2), outcomes, 0.5)
    assert score == pytest.approx((0.9 + 0.8) / 3)
    assert passed


def test_a_failed_critical_assertion_fails_the_cell_whatever_the_score():
    outcomes = [outcome(True, 1.0, weight=10), outcome(False, 0.0, weight=1, critical=True)]
    score, passed = cell_score(specs(2), outcomes, 0.5)
    assert score == pytest.approx(10 / 11)
    assert passed is False
    assert cell_score(specs(2), [outcome(True, 1.0), outcome(True, 1.0, critical=True)], 0.5) == (1.0, True)


def test_no_assertions_is_not_a_pass():
    assert cell_score([], [], 0.5) == (0.0, False)


def test_cell_score_refuses_mismatched_or_bad_input():
    with pytest.raises(ValueError):
        cell_score(specs(1), [], 0.5)
    with pytest.raises(ValueError):
        cell_score(specs(1), [outcome(True, 1.0)], 1.5)


@pytest.mark.parametrize(
    ("passes", "scores", "reducer", "expected"),
    [
        ([True, False], [1.0, 0.0], "mean", (True, 0.5)),  # a tie passes under mean
        ([True, False], [1.0, 0.0], "majority", (False, 0.5)),  # and fails under majority
        ([True, True, False], [1.0, 0.8, 0.2], "majority", (True, 2 / 3)),
        ([False, False, True], [0.1, 0.2, 0.9], "mean", (False, 0.4)),
        ([False, False, True], [0.1, 0.2, 0.9], "pass_at_k", (True, 0.9)),
        ([False, False], [0.1, 0.3], "pass_at_k", (False, 0.3)),
        ([True], [0.7], "majority", (True, 0.7)),
    ],
)
def test_reduce_repeats(passes, scores, reducer, expected):
    passed, score = reduce_repeats(passes, scores, reducer)
    assert (passed, score) == (expected[0], pytest.approx(expected[1]))


def test_reduce_repeats_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown reducer"):
        reduce_repeats([True], [1.0], "median")
    with pytest.raises(ValueError):
        reduce_repeats([], [], "mean")
    with pytest.raises(ValueError):
        reduce_repeats([True], [1.0, 0.5], "mean")


def test_item_pass_rate():
    assert item_pass_rate([True, False, True, True]) == 0.75
    with pytest.raises(ValueError):
        item_pass_rate([])
