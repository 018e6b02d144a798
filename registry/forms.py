"""Forms of the registry pages. The editor is a plain POST parser: its lists of messages and variables
change shape (add, remove, reorder) on the server, and everything typed survives a validation error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django import forms

from core.errors import ValidationFailed
from registry.content import ROLES
from registry.rendering import VARIABLE_TYPES, variables_detect


class PromptCreateForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Lowercase letters, digits, '-' and '_'; used by the proxy.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    tags = forms.CharField(required=False, help_text="Comma-separated")
    protect_production = forms.BooleanField(
        required=False, initial=True, label="Protect the production label (moves need a second engineer's approval)"
    )


class LabelMoveForm(forms.Form):
    label = forms.SlugField(max_length=100)
    version = forms.IntegerField(min_value=1)
    reason = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class DecisionForm(forms.Form):
    reason = forms.CharField(max_length=2000, required=False)


class ImportForm(forms.Form):
    file = forms.FileField(required=False)
    text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}), label="…or paste YAML")


@dataclass
class DraftVariable:
    name: str = ""
    type: str = "string"
    required: bool = True
    default: str = ""
    description: str = ""


@dataclass
class Draft:
    """What the editor shows: raw text exactly as typed."""

    messages: list[dict] = field(default_factory=list)
    model: str = ""
    temperature: str = ""
    max_tokens: str = ""
    top_p: str = ""
    stop: str = ""
    response_format: str = ""
    variables: list[DraftVariable] = field(default_factory=list)
    commit_message: str = ""

    roles = ROLES
    variable_types = VARIABLE_TYPES

    @classmethod
    def from_version(cls, version) -> Draft:
        if version is None:
            return cls(messages=[{"role": "system", "content": ""}, {"role": "user", "content": ""}])
        params = version.params
        return cls(
            messages=[dict(m) for m in version.messages],
            model=version.model,
            temperature=_text(params.get("temperature")),
            max_tokens=_text(params.get("max_tokens")),
            top_p=_text(params.get("top_p")),
            stop="\n".join(params.get("stop") or []),
            response_format=json.dumps(params["response_format"], indent=2) if "response_format" in params else "",
            variables=[
                DraftVariable(
                    name=v["name"],
                    type=v.get("type", "string"),
                    required=v.get("required", True),
                    default=_default_text(v.get("type", "string"), v.get("default")),
                    description=v.get("description", ""),
                )
                for v in version.variables
            ],
        )

    @classmethod
    def from_post(cls, data) -> Draft:
        roles, contents = data.getlist("message_role"), data.getlist("message_content")
        names = data.getlist("var_name")
        types, required = data.getlist("var_type"), data.getlist("var_required")
        defaults, descriptions = data.getlist("var_default"), data.getlist("var_description")

        def pick(values, i, default=""):
            return values[i] if i < len(values) else default

        return cls(
            messages=[
                {"role": pick(roles, i, "user"), "content": c.replace("\r\n", "\n")} for i, c in enumerate(contents)
            ],
            model=data.get("model", "").strip(),
            temperature=data.get("temperature", "").strip(),
            max_tokens=data.get("max_tokens", "").strip(),
            top_p=data.get("top_p", "").strip(),
            stop=data.get("stop", "").replace("\r\n", "\n"),
            response_format=data.get("response_format", "").strip(),
            variables=[
                DraftVariable(
                    name=n.strip(),
                    type=pick(types, i, "string"),
                    required=pick(required, i, "yes") == "yes",
                    default=pick(defaults, i),
                    description=pick(descriptions, i),
                )
                for i, n in enumerate(names)
                if n.strip() or pick(defaults, i) or pick(descriptions, i)
            ],
            commit_message=data.get("commit_message", "").strip(),
        )

    def apply(self, op: str) -> None:
        """Change the shape of the draft: add, remove-N, up-N, down-N, addvar, removevar-N, detect (variables
        from templates). Anything else (the editor's "peek" while typing) changes nothing."""
        action, _, index_text = op.partition("-")
        index = int(index_text) if index_text.isdigit() else -1
        if action == "add":
            self.messages.append({"role": "user", "content": ""})
        elif action == "remove" and 0 <= index < len(self.messages):
            del self.messages[index]
        elif action == "up" and 0 < index < len(self.messages):
            self.messages[index - 1], self.messages[index] = self.messages[index], self.messages[index - 1]
        elif action == "down" and 0 <= index < len(self.messages) - 1:
            self.messages[index + 1], self.messages[index] = self.messages[index], self.messages[index + 1]
        elif action == "addvar":
            self.variables.append(DraftVariable())
        elif action == "removevar" and 0 <= index < len(self.variables):
            del self.variables[index]
        elif action == "detect":
            self.detect_variables()

    def detect_variables(self) -> list[str]:
        """Add a schema row for every name the templates use that has none yet; returns the names added."""
        known = {v.name for v in self.variables}
        added = [n for n in variables_detect([m["content"] for m in self.messages]) if n not in known]
        self.variables.extend(DraftVariable(name=n) for n in added)
        return added

    def content(self) -> dict[str, Any]:
        """The draft as service input; raises ValidationFailed for text that is not a number, JSON, ..."""
        params: dict[str, Any] = {}
        for key, kind in (("temperature", float), ("top_p", float), ("max_tokens", int)):
            raw = getattr(self, key)
            if raw:
                try:
                    params[key] = kind(raw)
                except ValueError:
                    noun = "a whole number" if kind is int else "a number"
                    raise ValidationFailed(f"{key} must be {noun}.", param=f"params.{key}") from None
        stops = [s for s in self.stop.split("\n") if s.strip()]
        if stops:
            params["stop"] = stops
        if self.response_format:
            try:
                params["response_format"] = json.loads(self.response_format)
            except json.JSONDecodeError as exc:
                raise ValidationFailed(
                    f"response_format is not valid JSON: {exc.msg} (line {exc.lineno}).", param="params.response_format"
                ) from None
        variables = []
        for index, v in enumerate(self.variables):
            item: dict[str, Any] = {"name": v.name, "type": v.type, "required": v.required}
            if v.description.strip():
                item["description"] = v.description.strip()
            if v.default != "":
                if v.type == "string":
                    item["default"] = v.default
                else:
                    try:
                        item["default"] = json.loads(v.default)
                    except json.JSONDecodeError:
                        raise ValidationFailed(
                            f"Variable {v.name!r}: the default of a {v.type} must be written as JSON.",
                            param=f"variables[{index}].default",
                        ) from None
            variables.append(item)
        return {"messages": self.messages, "model": self.model, "params": params, "variables": variables}


def _text(value) -> str:
    return "" if value is None else str(value)


def _default_text(kind: str, value) -> str:
    if value is None:
        return ""
    return value if kind == "string" else json.dumps(value)


def playground_values(*, data, specs: list[dict]) -> dict:
    """Variables typed into the playground, converted per the schema (text for undeclared names)."""
    values: dict[str, Any] = {}
    for spec in specs:
        name, kind = spec["name"], spec.get("type", "string")
        raw = data.get(f"var_{name}", "")
        if raw == "":
            continue
        if kind == "string":
            values[name] = raw.replace("\r\n", "\n")
        elif kind == "boolean":
            values[name] = raw in ("true", "yes", "on", "1")
        else:
            try:
                values[name] = json.loads(raw)
            except json.JSONDecodeError:
                raise ValidationFailed(
                    f"{name} must be written as JSON ({kind}).", code="prompt_render_error", param="prompt.variables"
                ) from None
    return values
