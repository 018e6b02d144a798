"""Assertion specs: the common fields, refusals naming the field, {{expected}}, errored cells, needs."""

from __future__ import annotations

import json

import pytest

from evals.assertions import (
    ASSERTION_TYPES,
    EXPECTED,
    AssertionConfigError,
    CellOutput,
    assertion_needs,
    assertion_score,
    assertion_validate,
)

OK = CellOutput(text="Paris", latency_ms=100.0, cost_usd=0.001)

# One valid spec per type; the catalogue test below fails when a type is added without one.
MINIMAL = {
    "equals": {"type": "equals", "value": "Paris"},
    "contains": {"type": "contains", "value": "Par"},
    "icontains": {"type": "icontains", "value": "par"},
    "not-contains": {"type": "not-contains", "value": "London"},
    "starts-with": {"type": "starts-with", "value": "Pa"},
    "regex": {"type": "regex", "pattern": "^P"},
    "similarity": {"type": "similarity", "value": "Paris"},
    "is-json": {"type": "is-json"},
    "json-schema": {"type": "json-schema", "schema": {"type": "string"}},
    "json-path-equals": {"type": "json-path-equals", "path": "$.a", "value": 1},
    "number-within": {"type": "number-within", "value": 1},
    "latency-at-most": {"type": "latency-at-most", "max_ms": 500},
    "cost-at-most": {"type": "cost-at-most", "max_usd": "0.01"},
    "embedding-cosine": {"type": "embedding-cosine", "value": "Paris"},
    "llm-judge": {"type": "llm-judge", "rubric": "Names the capital of France."},
}


def test_every_type_has_a_minimal_spec_that_validates_to_json():
    assert set(MINIMAL) == set(ASSERTION_TYPES)
    for kind, spec in MINIMAL.items():
        normalised = assertion_validate(spec)
        assert normalised["type"] == kind
        assert normalised["name"] == kind
        assert normalised["weight"] == 1.0
        assert normalised["critical"] is False
        assert json.loads(json.dumps(normalised)) == normalised
        assert assertion_validate(normalised) == normalised  # idempotent
        assert ASSERTION_TYPES[kind].description


def test_common_fields_are_kept():
    spec = assertion_validate({"type": "contains", "value": "x", "weight": 3, "critical": True, "name": "mentions x"})
    assert (spec["weight"], spec["critical"], spec["name"]) == (3.0, True, "mentions x")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"value": "x"}, "type"),
        ({"type": "sounds-good"}, "type"),
        ({"type": 3}, "type"),
        ({"type": "contains", "value": "x", "weight": 0}, "weight"),
        ({"type": "contains", "value": "x", "weight": -1}, "weight"),
        ({"type": "contains", "value": "x", "weight": True}, "weight"),
        ({"type": "contains", "value": "x", "weight": float("nan")}, "weight"),
        ({"type": "contains", "value": "x", "weight": "2"}, "weight"),
        ({"type": "contains", "value": "x", "critical": "yes"}, "critical"),
        ({"type": "contains", "value": "x", "name": ""}, "name"),
        ({"type": "contains", "value": "x", "name": "n" * 201}, "name"),
        ({"type": "contains", "value": "x", "treshold": 0.5}, "treshold"),
    ],
)
def test_refusals_name_the_field(spec, field):
    with pytest.raises(AssertionConfigError) as caught:
        assertion_validate(spec)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert isinstance(caught.value, ValueError)


def test_a_spec_must_be_an_object():
    with pytest.raises(AssertionConfigError, match="spec: must be an object"):
        assertion_validate(["contains"])


def test_expected_placeholder_resolves_from_the_item():
    spec = {"type": "equals", "value": EXPECTED}
    assert assertion_score(spec, OK, {"expected": "Paris"}).passed
    assert not assertion_score(spec, OK, {"expected": "Rome"}).passed


def test_expected_is_the_default_value_where_a_reference_is_natural():
    assert assertion_validate({"type": "equals"})["value"] == EXPECTED
    assert assertion_validate({"type": "similarity"})["value"] == EXPECTED
    assert assertion_score({"type": "equals"}, OK, {"expected": "Paris"}).passed


def test_a_missing_expected_output_fails_the_assertion_not_the_run():
    outcome = assertion_score({"type": "equals"}, OK, {"input": "capital of France?"})
    assert (outcome.passed, outcome.score) == (False, 0.0)
    assert outcome.detail == "the dataset item has no expected output"


def test_only_the_whole_value_is_a_placeholder():
    spec = {"type": "contains", "value": "{{expected}}!"}
    assert assertion_score(spec, CellOutput("say {{expected}}!", 1, 0), {"expected": "x"}).passed


def test_an_errored_cell_fails_every_assertion_with_its_error():
    errored = CellOutput(text="", latency_ms=5.0, cost_usd=0, error="upstream timed out")
    for spec in MINIMAL.values():
        outcome = assertion_score(spec, errored, {"expected": "x"}, judge=lambda *a: (1.0, ""), embed=lambda t: [])
        assert (outcome.passed, outcome.score, outcome.detail) == (False, 0.0, "upstream timed out")


def test_assertion_score_validates_raw_specs():
    with pytest.raises(AssertionConfigError):
        assertion_score({"type": "regex", "pattern": "("}, OK, {})


def test_outcome_carries_the_spec_identity():
    outcome = assertion_score({"type": "contains", "value": "Par", "weight": 2, "critical": True, "name": "c"}, OK, {})
    assert (outcome.name, outcome.type, outcome.weight, outcome.critical) == ("c", "contains", 2.0, True)


def test_needs():
    assert assertion_needs(MINIMAL["llm-judge"]) == {"judge"}
    assert assertion_needs(MINIMAL["embedding-cosine"]) == {"embed"}
    assert all(
        assertion_needs(spec) == set()
        for kind, spec in MINIMAL.items()
        if kind not in {"llm-judge", "embedding-cosine"}
    )
    with pytest.raises(AssertionConfigError):
        assertion_needs({"type": "nope"})
