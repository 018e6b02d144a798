"""The json_schema filter: invalid JSON, violations with their paths, the request's schema, skips with reasons."""

from __future__ import annotations

import pytest

from safety.filters import filter_build
from safety.filters.base import CheckContext, Direction, FilterConfigError

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name"],
    "additionalProperties": False,
}
OUTPUT = CheckContext(organisation_id=1, direction=Direction.OUTPUT)


def test_valid_output_passes():
    result = filter_build("json_schema", {"schema": SCHEMA}).check('{"name": "x", "tags": ["a"]}', OUTPUT)
    assert result.findings == () and result.skipped == ""


def test_violations_are_reported_with_json_paths():
    result = filter_build("json_schema", {"schema": SCHEMA}).check('{"tags": ["a", 3], "extra": 1}', OUTPUT)
    details = sorted(f.detail for f in result.findings)
    assert [f.kind for f in result.findings] == ["schema_violation"] * 3
    assert details == [
        "$.tags[1]: 3 is not of type 'string'",
        "$: 'name' is a required property",
        "$: Additional properties are not allowed ('extra' was unexpected)",
    ]


def test_invalid_json_is_one_whole_text_finding():
    result = filter_build("json_schema", {"schema": SCHEMA}).check('{"name": ', OUTPUT)
    assert [(f.kind, f.start, f.end) for f in result.findings] == [("invalid_json", 0, 0)]
    assert "not JSON" in result.findings[0].detail


def test_a_markdown_fence_around_the_json_is_accepted():
    text = '```json\n{"name": "x"}\n```'
    assert filter_build("json_schema", {"schema": SCHEMA}).check(text, OUTPUT).findings == ()


def test_the_requests_schema_is_used_when_the_setting_has_none():
    context = CheckContext(organisation_id=1, direction=Direction.OUTPUT, output_schema={"type": "array"})
    result = filter_build("json_schema", {}).check('{"a": 1}', context)
    assert [f.detail for f in result.findings] == ["$: {'a': 1} is not of type 'array'"]


def test_no_schema_anywhere_is_a_skip_with_a_reason():
    result = filter_build("json_schema", {}).check("anything", OUTPUT)
    assert result.findings == () and result.skipped == "no JSON schema in the filter's settings or the request"
    bad = CheckContext(organisation_id=1, direction=Direction.OUTPUT, output_schema={"type": 12})
    assert filter_build("json_schema", {}).check("{}", bad).skipped.startswith("the request's JSON schema is invalid")


def test_a_remote_reference_is_never_fetched_and_the_check_is_skipped():
    # A URL no server answers: fetching it would fail or hang; the filter does neither.
    schema = {"$ref": "http://127.0.0.1:9/schema.json"}
    context = CheckContext(organisation_id=1, direction=Direction.OUTPUT, output_schema=schema)
    result = filter_build("json_schema", {}).check("{}", context)
    assert result.findings == ()
    assert result.skipped.startswith("the JSON schema has a reference that is not resolved")


def test_local_references_work():
    schema = {"$defs": {"id": {"type": "integer"}}, "type": "object", "properties": {"id": {"$ref": "#/$defs/id"}}}
    f = filter_build("json_schema", {"schema": schema})
    assert f.check('{"id": 3}', OUTPUT).findings == ()
    assert [x.detail for x in f.check('{"id": "x"}', OUTPUT).findings] == ["$.id: 'x' is not of type 'integer'"]


@pytest.mark.parametrize("settings", [{"schema": {"type": "nonsense"}}, {"schema": "object"}, {"max_errors": 0}])
def test_bad_settings_are_refused(settings):
    with pytest.raises(FilterConfigError):
        filter_build("json_schema", settings)
