"""Validation, normalisation and hashing of a version's content (messages, model, params, variables).

Used by services before anything is stored, and by the editor to show errors next to the input.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import jinja2
import jsonschema
from django.conf import settings

from core.errors import ValidationFailed
from registry.rendering import VARIABLE_TYPES, template_parse, value_type_ok

ROLES = ("system", "developer", "user", "assistant")
MAX_MESSAGES = 100
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PROMPT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
LABEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
PARAM_KEYS = (
    "temperature",
    "max_tokens",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
)


@dataclass(frozen=True)
class VersionContent:
    messages: list[dict]
    model: str
    params: dict
    variables: list[dict]

    def as_dict(self) -> dict:
        return {"messages": self.messages, "model": self.model, "params": self.params, "variables": self.variables}

    @property
    def content_hash(self) -> str:
        return content_hash(self.as_dict())


def content_hash(content: dict) -> str:
    canonical = json.dumps(
        {k: content.get(k) for k in ("messages", "model", "params", "variables")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# Path segments of the web UI and API that sit next to prompt names.
RESERVED_NAMES = frozenset({"new", "import", "promotions"})


def name_validate(value: Any, *, what: str = "Prompt name", param: str = "name") -> str:
    if not isinstance(value, str) or not PROMPT_NAME.match(value):
        raise ValidationFailed(
            f"{what} must be 1-100 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
            param=param,
        )
    if what == "Prompt name" and value in RESERVED_NAMES:
        raise ValidationFailed(f"{value!r} is reserved; choose another prompt name.", param=param)
    return value


def label_validate(value: Any) -> str:
    return name_validate(value, what="Label name", param="label")


def _fail(message: str, param: str) -> None:
    raise ValidationFailed(message, param=param, code="invalid_version")


def messages_validate(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        _fail("A version needs at least one message.", "messages")
    if len(messages) > MAX_MESSAGES:
        _fail(f"At most {MAX_MESSAGES} messages.", "messages")
    limit = settings.STEWARD_MAX_TEMPLATE_CHARS
    total = 0
    clean = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            _fail(f"Message {index + 1} must be an object with 'role' and 'content'.", param)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            _fail(f"Message {index + 1} has unknown role {role!r}; use one of {', '.join(ROLES)}.", f"{param}.role")
        if not isinstance(content, str):
            _fail(f"Message {index + 1} content must be text.", f"{param}.content")
        total += len(content)
        if len(content) > limit or total > limit:
            _fail(
                f"Templates are limited to {limit} characters in total (message {index + 1} reaches {total}).",
                f"{param}.content",
            )
        try:
            template_parse(content)
        except jinja2.TemplateSyntaxError as exc:
            _fail(f"Message {index + 1} has a template error on line {exc.lineno}: {exc.message}", f"{param}.content")
        clean.append({"role": role, "content": content})
    return clean


def _number(value: Any, key: str, *, low: float, high: float, integer: bool = False) -> int | float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        _fail(f"{key} must be {kind} between {low:g} and {high:g}.", f"params.{key}")
    return value


def response_format_validate(value: Any) -> dict:
    param = "params.response_format"
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        _fail("response_format must be an object with type text, json_object or json_schema.", param)
    if value["type"] != "json_schema":
        if set(value) != {"type"}:
            _fail(f"response_format of type {value['type']} takes no other fields.", param)
        return {"type": value["type"]}
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        _fail("response_format json_schema needs {'name': ..., 'schema': {...}}.", f"{param}.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_-]{1,64}$", name):
        _fail("response_format json_schema needs a name of 1-64 letters, digits, '_' or '-'.", f"{param}.json_schema")
    schema = spec["schema"]
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        _fail(f"response_format JSON schema is invalid at {where}: {exc.message}", f"{param}.json_schema.schema")
    clean = {"name": name, "schema": schema}
    if "strict" in spec:
        if not isinstance(spec["strict"], bool):
            _fail("response_format json_schema.strict must be true or false.", f"{param}.json_schema.strict")
        clean["strict"] = spec["strict"]
    if "description" in spec:
        clean["description"] = str(spec["description"])
    return {"type": "json_schema", "json_schema": clean}


def params_validate(params: Any) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        _fail("params must be an object.", "params")
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        _fail(f"Unknown parameters: {', '.join(unknown)}. Allowed: {', '.join(PARAM_KEYS)}.", "params")
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key == "temperature":
            clean[key] = _number(value, key, low=0, high=2)
        elif key == "top_p":
            clean[key] = _number(value, key, low=0, high=1)
        elif key in ("presence_penalty", "frequency_penalty"):
            clean[key] = _number(value, key, low=-2, high=2)
        elif key == "max_tokens":
            clean[key] = _number(value, key, low=1, high=1_000_000, integer=True)
        elif key == "seed":
            clean[key] = _number(value, key, low=-(2**63), high=2**63 - 1, integer=True)
        elif key == "stop":
            stops = [value] if isinstance(value, str) else value
            if (
                not isinstance(stops, list)
                or not (1 <= len(stops) <= 4)
                or not all(isinstance(s, str) and s for s in stops)
            ):
                _fail("stop must be a non-empty string or a list of 1-4 non-empty strings.", "params.stop")
            clean[key] = stops
        elif key == "response_format":
            clean[key] = response_format_validate(value)
    return {k: clean[k] for k in PARAM_KEYS if k in clean}


def variables_validate(variables: Any) -> list[dict]:
    if variables is None:
        return []
    if not isinstance(variables, list):
        _fail("variables must be a list of {name, type, required, default, description}.", "variables")
    seen: set[str] = set()
    clean = []
    for index, spec in enumerate(variables):
        param = f"variables[{index}]"
        if not isinstance(spec, dict):
            _fail(f"Variable {index + 1} must be an object.", param)
        unknown = sorted(set(spec) - {"name", "type", "required", "default", "description"})
        if unknown:
            _fail(f"Variable {index + 1} has unknown fields: {', '.join(unknown)}.", param)
        name = spec.get("name")
        if not isinstance(name, str) or not VARIABLE_NAME.match(name):
            _fail(
                f"Variable {index + 1} needs a name made of letters, digits and '_' (not starting with a digit).", param
            )
        if name in seen:
            _fail(f"Variable {name!r} is declared twice.", f"{param}.name")
        seen.add(name)
        kind = spec.get("type", "string")
        if kind not in VARIABLE_TYPES:
            _fail(f"Variable {name!r} has unknown type {kind!r}; use one of {', '.join(VARIABLE_TYPES)}.", param)
        required = spec.get("required", True)
        if not isinstance(required, bool):
            _fail(f"Variable {name!r}: required must be true or false.", f"{param}.required")
        item: dict[str, Any] = {"name": name, "type": kind, "required": required}
        if spec.get("default") is not None:
            if not value_type_ok(kind, spec["default"]):
                _fail(f"Variable {name!r}: the default must be a {kind}.", f"{param}.default")
            item["default"] = spec["default"]
        description = spec.get("description") or ""
        if not isinstance(description, str) or len(description) > 1000:
            _fail(f"Variable {name!r}: description must be text up to 1000 characters.", f"{param}.description")
        if description:
            item["description"] = description
        clean.append(item)
    return clean


def version_content_validate(*, messages: Any, model: Any, params: Any, variables: Any) -> VersionContent:
    """Checks everything and returns the normalised content that is hashed and stored; raises ValidationFailed."""
    clean_messages = messages_validate(messages)
    model = model or ""
    if not isinstance(model, str) or len(model) > 200:
        _fail("model must be a model name up to 200 characters.", "model")
    return VersionContent(
        messages=clean_messages,
        model=model.strip(),
        params=params_validate(params),
        variables=variables_validate(variables),
    )
