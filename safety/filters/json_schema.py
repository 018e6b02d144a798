"""Structured output: the model's text must be JSON satisfying a JSON Schema (Draft 2020-12).

The schema is the filter's own `schema` setting or, failing that, the one the request supplied
(`CheckContext.output_schema`, from the prompt version or `response_format`). With neither the
filter has nothing to check against and says so (`FilterResult.skipped`), rather than passing.
Validators are cached per schema, since building one costs far more than validating a small answer.
A valid document is confirmed by jsonschema-rs (~20 us for a 4 KB array, where the jsonschema
package takes ~900 us); only an invalid one goes through jsonschema, whose errors give the JSON
paths and messages the findings carry.
"""

from __future__ import annotations

import functools
import json
from typing import Any, ClassVar

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from safety.filters.base import Action, CheckContext, Direction, Filter, FilterConfigError, FilterResult, Finding, skip
from safety.filters.settings import setting_number, unknown_settings_refuse

MAX_ERRORS_DEFAULT = 10


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


@functools.lru_cache(maxsize=256)
def _fast_validator(schema_json: str) -> jsonschema_rs.Draft202012Validator | None:
    try:
        # offline: a schema (possibly the request's own) must never make Steward fetch a URL.
        return jsonschema_rs.Draft202012Validator(json.loads(schema_json), offline=True)
    except (ValueError, jsonschema_rs.ValidationError):  # a schema it cannot compile: jsonschema alone
        return None


def _path(error) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _strip_fence(text: str) -> tuple[str, int]:
    """The text inside a Markdown code fence (```json ... ```), and its offset; models often add one."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6:
        newline = stripped.find("\n")
        if newline != -1:
            inner = stripped[newline + 1 : -3]
            return inner, text.find(inner)
    return text, 0


class JsonSchemaFilter(Filter):
    name = "json_schema"
    kinds = ("invalid_json", "schema_violation")
    directions = (Direction.OUTPUT,)
    description = "The answer must be JSON valid against a JSON Schema (the setting's, or the request's)."
    settings_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "schema": {
            "type": "object",
            "default": None,
            "description": "a JSON Schema (Draft 2020-12); without it the request's output schema is used",
        },
        "max_errors": {"type": "integer", "default": MAX_ERRORS_DEFAULT, "description": "findings reported at most"},
    }

    def __init__(self, settings: dict[str, Any] | None = None):
        super().__init__(settings)
        s = self.settings
        unknown_settings_refuse(self.name, s, self.settings_schema)
        self.max_errors = setting_number(self.name, s, "max_errors", MAX_ERRORS_DEFAULT, minimum=1, integer=True)
        self.schema_json = None
        schema = s.get("schema")
        if schema is not None:
            if not isinstance(schema, dict | bool):
                raise FilterConfigError("json_schema: setting 'schema' must be a JSON object", setting="schema")
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise FilterConfigError(
                    f"json_schema: setting 'schema' is not a valid JSON Schema: {exc.message}", setting="schema"
                ) from None
            self.schema_json = json.dumps(schema, sort_keys=True)

    def check(self, text: str, context: CheckContext) -> FilterResult:
        schema_json = self.schema_json
        if schema_json is None:
            if context.output_schema is None:
                return skip("no JSON schema in the filter's settings or the request")
            try:
                Draft202012Validator.check_schema(context.output_schema)
            except SchemaError as exc:
                return skip(f"the request's JSON schema is invalid: {exc.message}")
            schema_json = json.dumps(context.output_schema, sort_keys=True)
        body, offset = _strip_fence(text)
        try:
            document = json.loads(body)
        except ValueError as exc:
            position = offset + (getattr(exc, "pos", 0) or 0)
            detail = f"not JSON: {getattr(exc, 'msg', str(exc))} at character {position}"
            return FilterResult(findings=(Finding("invalid_json", 0, 0, 1.0, detail),), proposed=Action.FLAG)
        fast = _fast_validator(schema_json)
        if fast is not None and fast.is_valid(document):
            return FilterResult()
        findings = []
        try:
            errors = sorted(
                _validator(schema_json).iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]
            )
        except Unresolvable as exc:  # jsonschema fetches nothing either; a remote $ref stays unresolved
            return skip(f"the JSON schema has a reference that is not resolved: {exc}")
        for error in errors[: self.max_errors]:
            message = error.message if len(error.message) <= 200 else error.message[:197] + "..."
            findings.append(Finding("schema_violation", 0, 0, 1.0, f"{_path(error)}: {message}"))
        return FilterResult(findings=tuple(findings), proposed=Action.FLAG) if findings else FilterResult()
