"""JSON assertions one by one: is-json, json-schema, json-path-equals."""

from __future__ import annotations

import pytest

from evals.assertions import AssertionConfigError, CellOutput, assertion_score, assertion_validate


def score(spec: dict, text: str, item: dict | None = None):
    return assertion_score(spec, CellOutput(text=text, latency_ms=1.0, cost_usd=0.0), item or {})


def refused(spec: dict) -> str:
    with pytest.raises(AssertionConfigError) as caught:
        assertion_validate(spec)
    return caught.value.field


@pytest.mark.parametrize(
    ("text", "fences", "passed"),
    [
        ('{"a": 1}', False, True),
        ("  [1, 2, 3]\n", False, True),
        ('"just a string"', False, True),
        ("null", False, True),
        ("{'a': 1}", False, False),
        ('{"a": 1} trailing', False, False),
        ("", False, False),
        ('{"a": NaN}', False, False),
        ("Infinity", False, False),
        ('```json\n{"a": 1}\n```', False, False),
        ('```json\n{"a": 1}\n```', True, True),
        ('```\n{"a": 1}\n```', True, True),
        ('Here you go: ```json\n{"a": 1}\n```', True, False),
    ],
)
def test_is_json(text, fences, passed):
    outcome = score({"type": "is-json", "fences": fences}, text)
    assert (outcome.passed, outcome.score) == (passed, float(passed))
    if not passed:
        assert outcome.detail.startswith("not JSON: ")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("text", "passed", "detail"),
    [
        ('{"name": "Ada", "age": 36}', True, "matches the schema"),
        ('{"name": "Ada"}', True, "matches the schema"),
        ('{"age": 36}', False, 'at (root): "name" is a required property'),
        ('{"age": -1}', False, "at age: -1 is less than the minimum of 0 (and 1 more)"),
        ('{"name": "Ada", "age": -1}', False, "at age: -1 is less than the minimum of 0"),
        ('{"name": "Ada", "extra": 1}', False, None),
        ("not json", False, None),
    ],
)
def test_json_schema(text, passed, detail):
    outcome = score({"type": "json-schema", "schema": SCHEMA}, text)
    assert outcome.passed is passed
    if detail:
        assert outcome.detail == detail


def test_json_schema_uses_draft_2020_12():
    # prefixItems exists only from Draft 2020-12 on; under an older draft this schema would accept anything.
    schema = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}
    assert score({"type": "json-schema", "schema": schema}, '[1, "a"]').passed
    assert not score({"type": "json-schema", "schema": schema}, '["a", 1]').passed


def test_json_schema_patterns_run_in_linear_time():
    """(a+)+$ makes a backtracking engine (Python's re, hence the jsonschema package) take exponential time on
    "aaa…b"; 5,000 characters would never finish there. The schema check uses a linear-time engine."""
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}}
    outcome = score({"type": "json-schema", "schema": schema}, '{"code": "' + "a" * 5000 + 'b"}')
    assert not outcome.passed
    assert outcome.detail.startswith("at code: ")


def test_json_schema_never_fetches_remote_references():
    with pytest.raises(AssertionConfigError, match=r"schema: .*Retrieval is disabled"):
        assertion_validate({"type": "json-schema", "schema": {"$ref": "http://127.0.0.1:9/schema.json"}})


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "json-schema"},
        {"type": "json-schema", "schema": {"pattern": "(a)\\1"}},
        {"type": "json-schema", "schema": {"patternProperties": {"(?=x)": {}}}},
        {"type": "json-schema", "schema": "object"},
        {"type": "json-schema", "schema": {"type": "no-such-type"}},
        {"type": "json-schema", "schema": {"minimum": "zero"}},
    ],
)
def test_json_schema_config_errors(spec):
    assert refused(spec) == "schema"


DOCUMENT = '{"order": {"id": 7, "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}]}, "ok": true}'


@pytest.mark.parametrize(
    ("path", "value", "passed"),
    [
        ("$.order.id", 7, True),
        ("$.order.id", 7.0, True),
        ("$.order.id", "7", False),
        ("$.ok", True, True),
        ("$.ok", 1, False),
        ("$.order.items[0].sku", "A", True),
        ("$.order.items[*].sku", ["A", "B"], True),
        ("$.order.items[*].sku", ["B", "A"], False),
        ("$.order.items[?qty > 1].sku", "A", True),
        ("$.order.items", [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}], True),
    ],
)
def test_json_path_equals(path, value, passed):
    assert score({"type": "json-path-equals", "path": path, "value": value}, DOCUMENT).passed is passed


def test_json_path_equals_details():
    assert score({"type": "json-path-equals", "path": "$.missing", "value": 1}, DOCUMENT).detail == (
        "$.missing matched nothing"
    )
    assert score({"type": "json-path-equals", "path": "$.order.id", "value": 8}, DOCUMENT).detail == (
        "$.order.id is 7, expected 8"
    )
    assert score({"type": "json-path-equals", "path": "$.a", "value": 1}, "nope").detail.startswith("not JSON")


def test_json_path_equals_null_and_expected():
    assert score({"type": "json-path-equals", "path": "$.a", "value": None}, '{"a": null}').passed
    spec = {"type": "json-path-equals", "path": "$.answer", "value": "{{expected}}"}
    assert score(spec, '{"answer": "Paris"}', {"expected": "Paris"}).passed


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "json-path-equals", "value": 1}, "path"),
        ({"type": "json-path-equals", "path": "$.a"}, "value"),
        ({"type": "json-path-equals", "path": "$.[[", "value": 1}, "path"),
        ({"type": "json-path-equals", "path": 3, "value": 1}, "path"),
    ],
)
def test_json_path_equals_config_errors(spec, field):
    assert refused(spec) == field
