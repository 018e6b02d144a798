"""Sandboxed Jinja2 rendering of prompt templates.

Templates run in an immutable sandbox (no attribute access to internals, no mutation of values),
with StrictUndefined, and no autoescaping (the output is chat text, not HTML). Variable values are
passed as data: a value containing `{{ ... }}` is printed literally, never evaluated again.
Every missing variable is found before rendering, so one error names them all.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.errors import ValidationFailed

RENDER_ERROR = "prompt_render_error"
VARIABLE_TYPES = ("string", "number", "boolean", "list", "object")


def _finalize(value: Any) -> Any:
    # Optional variables without a default are None; they print as nothing rather than "None".
    return "" if value is None else value


_env = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    finalize=_finalize,
)


def template_parse(source: str) -> jinja2.nodes.Template:
    """The AST of `source`; raises jinja2.TemplateSyntaxError."""
    return _env.parse(source)


def variables_detect(sources: list[str]) -> list[str]:
    """Names the templates read from outside (loop variables and `set` names excluded), in order of first use.

    Templates with syntax errors contribute nothing (the editor shows the syntax error separately).
    """
    found: dict[str, int] = {}
    for position, source in enumerate(sources):
        try:
            names = meta.find_undeclared_variables(template_parse(source))
        except jinja2.TemplateSyntaxError:
            continue
        for name in names:
            match = re.search(r"\b" + re.escape(name) + r"\b", source)
            order = position * 10_000_000 + (match.start() if match else 0)
            found[name] = min(order, found.get(name, order))
    return sorted(found, key=lambda n: (found[n], n))


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list | tuple)
    if kind == "object":
        return isinstance(value, dict)
    return True


def value_type_ok(kind: str, value: Any) -> bool:
    return _type_ok(kind, value)


@dataclass(frozen=True)
class CompiledVersion:
    """A version's templates compiled once; rendering per call only binds variables."""

    messages: tuple[tuple[str, jinja2.Template], ...]
    declared: tuple[dict, ...]
    used: frozenset[str]

    def render(self, variables: dict | None) -> list[dict]:
        values = self._bind(variables or {})
        rendered = []
        for index, (role, template) in enumerate(self.messages):
            try:
                content = template.render(values)
            except jinja2.UndefinedError as exc:
                raise ValidationFailed(
                    f"Rendering message {index + 1} failed: {exc.message}",
                    code=RENDER_ERROR,
                    param="prompt.variables",
                ) from exc
            except jinja2.exceptions.SecurityError as exc:
                raise ValidationFailed(
                    f"Rendering message {index + 1} was refused by the sandbox: {exc}",
                    code=RENDER_ERROR,
                    param="prompt.variables",
                ) from exc
            except (TypeError, ValueError, ArithmeticError, jinja2.TemplateError) as exc:
                raise ValidationFailed(
                    f"Rendering message {index + 1} failed: {exc}", code=RENDER_ERROR, param="prompt.variables"
                ) from exc
            rendered.append({"role": role, "content": content})
        return rendered

    def _bind(self, given: dict) -> dict:
        if not isinstance(given, dict):
            raise ValidationFailed(
                "Variables must be an object of names to values.", code=RENDER_ERROR, param="prompt.variables"
            )
        values: dict[str, Any] = {}
        missing: list[str] = []
        wrong: list[str] = []
        declared_names = set()
        for spec in self.declared:
            name = spec["name"]
            declared_names.add(name)
            if name in given and given[name] is not None:
                value = given[name]
                if not _type_ok(spec.get("type", "string"), value):
                    wrong.append(f"{name} must be a {spec.get('type', 'string')}, got {_json_type(value)}")
                    continue
                values[name] = value
            elif "default" in spec and spec["default"] is not None:
                values[name] = spec["default"]
            elif spec.get("required", True):
                missing.append(name)
            else:
                values[name] = None
        for name in sorted(self.used - declared_names):
            if name in given:
                values[name] = given[name]
            else:
                missing.append(name)
        for name, value in given.items():
            if name not in values and name not in declared_names and isinstance(name, str):
                values[name] = value
        if missing:
            raise ValidationFailed(
                "Missing variables: " + ", ".join(missing) + ".",
                code=RENDER_ERROR,
                param="prompt.variables",
                extra={"missing": missing},
            )
        if wrong:
            raise ValidationFailed(
                "Wrong variable types: " + "; ".join(wrong) + ".",
                code=RENDER_ERROR,
                param="prompt.variables",
                extra={"invalid": wrong},
            )
        return values


def _json_type(value: Any) -> str:
    for kind in ("boolean", "number", "string", "list", "object"):
        if _type_ok(kind, value):
            return kind
    return "null" if value is None else type(value).__name__


def version_compile(*, messages: list[dict], variables: list[dict]) -> CompiledVersion:
    compiled = []
    used: set[str] = set()
    for message in messages:
        source = message["content"]
        ast = template_parse(source)
        used |= meta.find_undeclared_variables(ast)
        compiled.append((message["role"], _env.from_string(source)))
    return CompiledVersion(messages=tuple(compiled), declared=tuple(variables), used=frozenset(used))


class _CompiledCache:
    """Compiled templates per immutable version; keyed by (id, content hash) so a reused id cannot alias."""

    def __init__(self, max_entries: int = 2_000):
        self._data: OrderedDict[tuple[int, str], CompiledVersion] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get_or_compile(self, *, version_id: int, content_hash: str, messages: list, variables: list) -> CompiledVersion:
        key = (version_id, content_hash)
        found = self._data.get(key)
        if found is not None:
            return found
        compiled = version_compile(messages=messages, variables=variables)
        with self._lock:
            self._data[key] = compiled
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return compiled


compiled_cache = _CompiledCache()
