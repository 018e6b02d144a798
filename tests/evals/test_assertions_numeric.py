"""number-within, latency-at-most and cost-at-most."""

from __future__ import annotations

from decimal import Decimal

import pytest

from evals.assertions import AssertionConfigError, CellOutput, assertion_score, assertion_validate


def score(spec: dict, text: str = "", item: dict | None = None, *, latency_ms=10.0, cost_usd=0.0):
    return assertion_score(spec, CellOutput(text=text, latency_ms=latency_ms, cost_usd=cost_usd), item or {})


def refused(spec: dict) -> str:
    with pytest.raises(AssertionConfigError) as caught:
        assertion_validate(spec)
    return caught.value.field


@pytest.mark.parametrize(
    ("spec", "text", "passed"),
    [
        ({"value": 42}, "The answer is 42.", True),
        ({"value": 42}, "The answer is 43.", False),
        ({"value": 42, "tolerance": 1}, "The answer is 43.", True),
        ({"value": 42, "tolerance": 0.5}, "The answer is 43.", False),
        ({"value": 100, "relative": 0.05}, "about 104.9 units", True),
        ({"value": 100, "relative": 0.05}, "about 105.1 units", False),
        ({"value": 100, "relative": 0.01, "tolerance": 5}, "104", True),  # the larger allowance wins
        ({"value": -3.5}, "t = -3.5e0", True),
        ({"value": 0.5}, "p=.5", True),
        ({"value": 2}, "1 then 2", False),  # the first number counts
        ({"value": 2, "parse": "whole"}, " 2 ", True),
        ({"value": 2, "parse": "whole"}, "2 apples", False),
        ({"value": 1}, "no digits here", False),
    ],
)
def test_number_within(spec, text, passed):
    assert score({"type": "number-within", **spec}, text).passed is passed


def test_number_within_detail():
    assert score({"type": "number-within", "value": 10, "tolerance": 1}, "12").detail == "found 12, expected 10 ± 1"
    assert score({"type": "number-within", "value": 10}, "none").detail == "no number in the output"


def test_number_within_against_expected():
    assert score({"type": "number-within"}, "It is 7", {"expected": 7}).passed
    assert score({"type": "number-within", "tolerance": 0.1}, "It is 7.05", {"expected": "7"}).passed
    outcome = score({"type": "number-within"}, "It is 7", {"expected": "seven"})
    assert not outcome.passed
    assert "not a number" in outcome.detail


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "number-within", "value": "42"}, "value"),
        ({"type": "number-within", "value": float("inf")}, "value"),
        ({"type": "number-within", "value": 1, "tolerance": -1}, "tolerance"),
        ({"type": "number-within", "value": 1, "relative": -0.1}, "relative"),
        ({"type": "number-within", "value": 1, "parse": "last"}, "parse"),
    ],
)
def test_number_within_config_errors(spec, field):
    assert refused(spec) == field


@pytest.mark.parametrize(("latency", "passed"), [(499.9, True), (500.0, True), (500.1, False)])
def test_latency_at_most(latency, passed):
    outcome = score({"type": "latency-at-most", "max_ms": 500}, latency_ms=latency)
    assert (outcome.passed, outcome.score) == (passed, float(passed))


def test_latency_config_errors():
    assert refused({"type": "latency-at-most"}) == "max_ms"
    assert refused({"type": "latency-at-most", "max_ms": 0}) == "max_ms"


@pytest.mark.parametrize(
    ("cost", "limit", "passed"),
    [
        (Decimal("0.0100"), "0.01", True),
        (Decimal("0.010001"), "0.01", False),
        (0.1, 0.1, True),  # as written, not as binary floats
        (0.3, "0.3", True),
        (0, 0, True),
    ],
)
def test_cost_at_most(cost, limit, passed):
    assert score({"type": "cost-at-most", "max_usd": limit}, cost_usd=cost).passed is passed


def test_cost_limit_is_stored_as_a_decimal_string():
    assert assertion_validate({"type": "cost-at-most", "max_usd": 0.25})["max_usd"] == "0.25"


@pytest.mark.parametrize("limit", [-0.01, "lots", "NaN", True, None])
def test_cost_config_errors(limit):
    assert refused({"type": "cost-at-most", "max_usd": limit}) == "max_usd"
