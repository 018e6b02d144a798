"""Assertions on the output as JSON: is-json, json-schema (Draft 2020-12, jsonschema-rs), json-path-equals.

The output is parsed after stripping surrounding whitespace; with `fences: true` one Markdown code fence
around it (```json ... ```) is removed first, for models that wrap JSON in a fence whatever they are told.
NaN and Infinity are refused: they are not JSON (RFC 8259) and a client parsing the output would fail on them.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonpath_ng.ext
import jsonschema_rs

from evals.assertions.fields import SpecReader
from evals.assertions.values import AssertionConfigError, CellOutput, as_text, expected_resolve

Check = tuple[bool, float, str]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def output_json_parse(text: str, *, fences: bool) -> tuple[Any, str]:
    """(value, "") when the output is JSON, else (None, the reason)."""
    body = text.strip()
    if fences and body.startswith("```") and body.endswith("```") and len(body) >= 6:
        body = body[3:-3]
        first_line, _, rest = body.partition("\n")
        # The fence's info string ("json") is the rest of its first line.
        body = rest if first_line.strip().isidentifier() or first_line.strip() == "" else body
        body = body.strip()
    try:
        return json.loads(body, parse_constant=_refuse_constant), ""
    except ValueError as exc:
        return None, str(exc)


def json_equal(left: Any, right: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1 (Python's == says it is)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and left == right


# --- is-json --------------------------------------------------------------------------------


def is_json_validate(reader: SpecReader) -> dict:
    return {"fences": reader.boolean("fences", False)}


def is_json_check(spec: dict, output: CellOutput, item: dict) -> Check:
    _, error = output_json_parse(output.text, fences=spec["fences"])
    return (False, 0.0, f"not JSON: {error}") if error else (True, 1.0, "valid JSON")


# --- json-schema (jsonschema-rs) ------------------------------------------------------------
# jsonschema-rs rather than the pure-Python jsonschema: a user's schema may carry `pattern`s, and Python's `re`
# backtracks exponentially on patterns such as (a+)+$ against model output; jsonschema-rs with RegexOptions
# uses Rust's regex crate (linear time, and no backreferences or lookaround, which it refuses at validation).
# `offline=True`: a $ref to a URL is an error, never a request from the worker.


@functools.lru_cache(maxsize=128)
def _schema_validator(schema_json: str):
    return jsonschema_rs.Draft202012Validator(
        json.loads(schema_json), offline=True, pattern_options=jsonschema_rs.RegexOptions()
    )


def _schema_key(schema: dict | bool) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def json_schema_validate(reader: SpecReader) -> dict:
    reader.read.add("schema")
    schema = reader.raw.get("schema")
    if not isinstance(schema, dict | bool):
        raise AssertionConfigError("schema", "must be a JSON Schema (an object)")
    try:
        _schema_validator(_schema_key(schema))
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AssertionConfigError("schema", f"is not a valid Draft 2020-12 schema ({first_line})") from None
    return {"schema": schema, "fences": reader.boolean("fences", False)}


def json_schema_check(spec: dict, output: CellOutput, item: dict) -> Check:
    value, error = output_json_parse(output.text, fences=spec["fences"])
    if error:
        return False, 0.0, f"not JSON: {error}"
    violations = list(_schema_validator(_schema_key(spec["schema"])).iter_errors(value))
    if not violations:
        return True, 1.0, "matches the schema"
    first = violations[0]
    where = "/".join(str(part) for part in first.instance_path) or "(root)"
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return False, 0.0, f"at {where}: {first.message}{more}"


# --- json-path-equals -----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _path_parse(path: str):
    return jsonpath_ng.ext.parse(path)


def json_path_equals_validate(reader: SpecReader) -> dict:
    fields = {
        "path": reader.string("path", max_length=1_000),
        "value": reader.json_value("value"),
        "fences": reader.boolean("fences", False),
    }
    try:
        _path_parse(fields["path"])
    # jsonpath-ng's lexer raises plain Exception for some inputs, not only JSONPathError.
    except Exception as exc:
        raise AssertionConfigError("path", f"is not a valid JSONPath ({exc})") from None
    return fields


def json_path_equals_check(spec: dict, output: CellOutput, item: dict) -> Check:
    """One match is compared with `value`; several matches are compared as a list (in document order)."""
    document, error = output_json_parse(output.text, fences=spec["fences"])
    if error:
        return False, 0.0, f"not JSON: {error}"
    expected = expected_resolve(spec["value"], item)
    matches = [match.value for match in _path_parse(spec["path"]).find(document)]
    if not matches:
        return False, 0.0, f"{spec['path']} matched nothing"
    actual = matches[0] if len(matches) == 1 else matches
    if json_equal(actual, expected):
        return True, 1.0, "equal"
    return False, 0.0, f"{spec['path']} is {as_text(actual)[:80]}, expected {as_text(expected)[:80]}"
