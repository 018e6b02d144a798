"""The pieces composed as the run executor composes them: specs → outcomes → cells → items → a verdict."""

from __future__ import annotations

from evals.assertions import CellOutput, assertion_score, assertion_validate, cell_score, reduce_repeats
from evals.stats import metric_comparison, run_verdicts

SPECS = [
    assertion_validate({"type": "is-json", "critical": True}),
    assertion_validate({"type": "json-path-equals", "path": "$.city", "value": "{{expected}}", "weight": 2}),
    assertion_validate({"type": "latency-at-most", "max_ms": 800, "weight": 0.5}),
]
ITEMS = [{"id": i, "input": f"question {i}", "expected": f"city-{i}"} for i in range(60)]


def run_variant(answer) -> tuple[dict[int, list[bool]], dict[int, list[float]]]:
    passes: dict[int, list[bool]] = {}
    scores: dict[int, list[float]] = {}
    for item in ITEMS:
        for repeat in range(3):
            output = CellOutput(text=answer(item["id"], repeat), latency_ms=300.0, cost_usd=0.0001)
            outcomes = [assertion_score(spec, output, item) for spec in SPECS]
            score, passed = cell_score(SPECS, outcomes, threshold=0.8)
            passes.setdefault(item["id"], []).append(passed)
            scores.setdefault(item["id"], []).append(score)
    return passes, scores


def test_a_candidate_that_fixes_items_is_judged_improved():
    # The baseline gets items 0-29 right; the candidate also items 30-49, and breaks the JSON of item 59.
    baseline_passes, baseline_scores = run_variant(
        lambda i, r: f'{{"city": "city-{i}"}}' if i < 30 else '{"city": "elsewhere"}'
    )
    candidate_passes, candidate_scores = run_variant(
        lambda i, r: "not json" if i == 59 else (f'{{"city": "city-{i}"}}' if i < 50 else '{"city": "x"}')
    )
    # Only the latency assertion passes on item 59 (weight 0.5 of 3.5); the critical is-json failure fails it.
    assert reduce_repeats(candidate_passes[59], candidate_scores[59], "majority") == (False, 0.5 / 3.5)
    assert reduce_repeats(candidate_passes[40], candidate_scores[40], "majority") == (True, 1.0)
    comparisons = run_verdicts(
        [
            metric_comparison("pass rate", baseline_passes, candidate_passes, kind="binary"),
            metric_comparison("score", baseline_scores, candidate_scores, kind="score"),
        ]
    )
    pass_rate, score = comparisons
    assert pass_rate.method == "clustered_sign_flip_exact"
    assert pass_rate.diff == 20 / 60
    assert pass_rate.verdict == "improved"
    assert score.verdict == "improved"
