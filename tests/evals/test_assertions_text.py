"""Text assertions one by one: equals, contains, icontains, not-contains, starts-with, regex, similarity."""

from __future__ import annotations

import pytest
from rapidfuzz import fuzz

from evals.assertions import AssertionConfigError, CellOutput, assertion_score, assertion_validate


def score(spec: dict, text: str, item: dict | None = None):
    return assertion_score(spec, CellOutput(text=text, latency_ms=1.0, cost_usd=0.0), item or {})


def refused(spec: dict) -> str:
    with pytest.raises(AssertionConfigError) as caught:
        assertion_validate(spec)
    return caught.value.field


# --- equals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "text", "passed"),
    [
        ({"value": "Paris"}, "Paris", True),
        ({"value": "Paris"}, "  Paris\n", True),
        ({"value": "Paris", "strip": False}, "Paris\n", False),
        ({"value": "Paris"}, "paris", False),
        ({"value": "Paris", "ignore_case": True}, "PARIS", True),
        ({"value": "Paris"}, "Paris.", False),
        ({"value": {"a": 1, "b": [1, 2]}}, '{ "b": [1, 2.0], "a": 1 }', True),
        ({"value": {"a": 1}}, '{"a": true}', False),
        ({"value": 42}, "42", True),
        ({"value": 42}, "forty-two", False),
        ({"value": True}, "1", False),
    ],
)
def test_equals(spec, text, passed):
    outcome = score({"type": "equals", **spec}, text)
    assert (outcome.passed, outcome.score) == (passed, float(passed))


def test_equals_detail_shows_both_sides():
    assert score({"type": "equals", "value": "Paris"}, "Rome").detail == "expected 'Paris', got 'Rome'"


def test_equals_with_a_json_expected_output():
    assert score({"type": "equals"}, "[1, 2]", {"expected": [1, 2]}).passed


def test_equals_config_errors():
    assert refused({"type": "equals", "value": "x", "strip": "no"}) == "strip"


# --- contains / icontains / not-contains ------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "text", "passed", "score_"),
    [
        ({"type": "contains", "value": "cat"}, "a cat sat", True, 1.0),
        ({"type": "contains", "value": "Cat"}, "a cat sat", False, 0.0),
        ({"type": "contains", "value": "Cat", "ignore_case": True}, "a cat sat", True, 1.0),
        ({"type": "contains", "value": ["cat", "sat", "mat"]}, "a cat sat", False, 2 / 3),
        ({"type": "contains", "value": ["cat", "sat"]}, "a cat sat", True, 1.0),
        ({"type": "contains", "value": ["dog", "sat"], "mode": "any"}, "a cat sat", True, 1.0),
        ({"type": "contains", "value": ["dog", "mat"], "mode": "any"}, "a cat sat", False, 0.0),
        ({"type": "icontains", "value": "CAT"}, "a Cat sat", True, 1.0),
        ({"type": "icontains", "value": ["straße", "DOG"], "mode": "all"}, "STRASSE dog", True, 1.0),
        ({"type": "not-contains", "value": "dog"}, "a cat sat", True, 1.0),
        ({"type": "not-contains", "value": ["dog", "cat"]}, "a cat sat", False, 0.0),
        ({"type": "not-contains", "value": "CAT"}, "a cat sat", True, 1.0),
        ({"type": "not-contains", "value": "CAT", "ignore_case": True}, "a cat sat", False, 0.0),
    ],
)
def test_contains_family(spec, text, passed, score_):
    outcome = score(spec, text)
    assert outcome.passed is passed
    assert outcome.score == pytest.approx(score_)


def test_contains_details():
    assert score({"type": "contains", "value": ["cat", "dog"]}, "cat").detail == "missing 'dog'"
    assert score({"type": "not-contains", "value": ["dog"]}, "hotdog").detail == "contains 'dog'"


def test_contains_expected_by_default():
    assert score({"type": "contains"}, "The answer is Paris.", {"expected": "Paris"}).passed


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "contains", "value": ""}, "value"),
        ({"type": "contains", "value": []}, "value"),
        ({"type": "contains", "value": ["a", 3]}, "value"),
        ({"type": "contains", "value": "a", "mode": "some"}, "mode"),
        ({"type": "icontains", "value": "a", "ignore_case": False}, "ignore_case"),
        ({"type": "not-contains"}, "value"),
    ],
)
def test_contains_config_errors(spec, field):
    assert refused(spec) == field


# --- starts-with ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "text", "passed"),
    [
        ({"value": "Yes"}, "Yes, it is.", True),
        ({"value": "Yes"}, "  Yes", True),
        ({"value": "Yes", "strip": False}, "  Yes", False),
        ({"value": "Yes"}, "yes", False),
        ({"value": "Yes", "ignore_case": True}, "YES!", True),
        ({"value": "Yes"}, "No, yes", False),
    ],
)
def test_starts_with(spec, text, passed):
    assert score({"type": "starts-with", **spec}, text).passed is passed


def test_starts_with_config_errors():
    assert refused({"type": "starts-with"}) == "value"
    assert refused({"type": "starts-with", "value": ["a"]}) == "value"


# --- regex ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "text", "passed"),
    [
        ({"pattern": r"\d{3}-\d{4}"}, "call 555-1234 now", True),
        ({"pattern": r"\d{3}-\d{4}"}, "call me", False),
        ({"pattern": r"\d{3}-\d{4}", "match": "full"}, "call 555-1234 now", False),
        ({"pattern": r"\d{3}-\d{4}", "match": "full"}, "555-1234", True),
        ({"pattern": "^yes$"}, "YES", False),
        ({"pattern": "^yes$", "ignore_case": True}, "YES", True),
        ({"pattern": "é+"}, "café", True),
    ],
)
def test_regex(spec, text, passed):
    assert score({"type": "regex", **spec}, text).passed is passed


def test_regex_is_linear_time_on_a_catastrophic_pattern():
    """(a+)+$ backtracks exponentially in Python's re on "aaa…b"; RE2 answers at once (a 40-character input
    would take Python's re minutes, so if this used re the test would time out)."""
    outcome = score({"type": "regex", "pattern": "(a+)+$", "match": "full"}, "a" * 40 + "b")
    assert outcome.passed is False


def test_regex_detail_shows_the_match():
    assert score({"type": "regex", "pattern": r"\d+"}, "order 1234 shipped").detail == "matched '1234'"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "regex"}, "pattern"),
        ({"type": "regex", "pattern": "(unclosed"}, "pattern"),
        ({"type": "regex", "pattern": r"(a)\1"}, "pattern"),  # backreferences are not RE2
        ({"type": "regex", "pattern": "a", "match": "prefix"}, "match"),
        ({"type": "regex", "value": "a"}, "pattern"),
    ],
)
def test_regex_config_errors(spec, field):
    assert refused(spec) == field


def test_regex_error_message_is_readable():
    with pytest.raises(AssertionConfigError, match=r"pattern: is not a valid RE2 regular expression \(missing \)"):
        assertion_validate({"type": "regex", "pattern": "(unclosed"})


# --- similarity -------------------------------------------------------------------------------


def test_similarity_ratio_is_rapidfuzz_normalised():
    outcome = score({"type": "similarity", "value": "The capital is Paris", "threshold": 0.9}, "The capital is Pariss")
    assert outcome.score == pytest.approx(fuzz.ratio("The capital is Pariss", "The capital is Paris") / 100)
    assert outcome.passed


def test_similarity_threshold_and_method():
    text, reference = "Paris is the capital", "the capital is Paris"
    ratio = score({"type": "similarity", "value": reference, "threshold": 0.9}, text)
    assert not ratio.passed
    sorted_tokens = score(
        {"type": "similarity", "value": reference, "method": "token_sort_ratio", "ignore_case": True}, text
    )
    assert sorted_tokens.passed and sorted_tokens.score == 1.0


def test_similarity_against_expected_by_default():
    assert score({"type": "similarity"}, "colour", {"expected": "color"}).score == pytest.approx(
        fuzz.ratio("colour", "color") / 100
    )


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "similarity", "threshold": 1.5}, "threshold"),
        ({"type": "similarity", "threshold": -0.1}, "threshold"),
        ({"type": "similarity", "method": "jaro"}, "method"),
    ],
)
def test_similarity_config_errors(spec, field):
    assert refused(spec) == field
