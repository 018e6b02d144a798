"""Differences between two versions: messages aligned and diffed word by word, parameter and variable changes."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from django.utils.html import escape

_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    return _TOKENS.findall(text)


@dataclass
class MessageDiff:
    status: str  # equal | changed | added | removed
    left_role: str | None
    right_role: str | None
    left_html: str
    right_html: str
    ops: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "left_role": self.left_role,
            "right_role": self.right_role,
            "ops": self.ops,
        }


@dataclass
class VersionDiff:
    messages: list[MessageDiff]
    model: tuple[str, str] | None
    params: list[dict]
    variables: list[dict]

    @property
    def changed(self) -> bool:
        return bool(self.model or self.params or self.variables or any(m.status != "equal" for m in self.messages))

    def as_dict(self) -> dict:
        return {
            "changed": self.changed,
            "model": {"from": self.model[0], "to": self.model[1]} if self.model else None,
            "messages": [m.as_dict() for m in self.messages],
            "params": self.params,
            "variables": self.variables,
        }


def words_diff(left: str, right: str) -> tuple[str, str, list[dict]]:
    """HTML for each side, with removed words in <del> on the left and added words in <ins> on the right."""
    a, b = _tokens(left), _tokens(right)
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    left_html: list[str] = []
    right_html: list[str] = []
    ops = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = "".join(a[i1:i2]), "".join(b[j1:j2])
        if tag == "equal":
            left_html.append(escape(old))
            right_html.append(escape(new))
            ops.append({"op": "equal", "text": old})
            continue
        if old:
            left_html.append(f'<del class="diff-del">{escape(old)}</del>')
        if new:
            right_html.append(f'<ins class="diff-add">{escape(new)}</ins>')
        ops.append({"op": {"replace": "replace", "delete": "delete", "insert": "insert"}[tag], "old": old, "new": new})
    return "".join(left_html), "".join(right_html), ops


def _messages_diff(left: list[dict], right: list[dict]) -> list[MessageDiff]:
    keys_a = [(m["role"], m["content"]) for m in left]
    keys_b = [(m["role"], m["content"]) for m in right]
    matcher = difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False)
    result: list[MessageDiff] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for m in left[i1:i2]:
                text = escape(m["content"])
                result.append(
                    MessageDiff("equal", m["role"], m["role"], text, text, [{"op": "equal", "text": m["content"]}])
                )
            continue
        olds, news = left[i1:i2], right[j1:j2]
        for k in range(max(len(olds), len(news))):
            old = olds[k] if k < len(olds) else None
            new = news[k] if k < len(news) else None
            if old and new:
                lh, rh, ops = words_diff(old["content"], new["content"])
                result.append(MessageDiff("changed", old["role"], new["role"], lh, rh, ops))
            elif old:
                result.append(
                    MessageDiff(
                        "removed",
                        old["role"],
                        None,
                        f'<del class="diff-del">{escape(old["content"])}</del>',
                        "",
                        [{"op": "delete", "old": old["content"], "new": ""}],
                    )
                )
            else:
                result.append(
                    MessageDiff(
                        "added",
                        None,
                        new["role"],
                        "",
                        f'<ins class="diff-add">{escape(new["content"])}</ins>',
                        [{"op": "insert", "old": "", "new": new["content"]}],
                    )
                )
    return result


def _show(value: Any) -> Any:
    return value


def _dict_changes(left: dict, right: dict) -> list[dict]:
    changes = []
    for key in sorted(set(left) | set(right)):
        if key not in right:
            changes.append({"name": key, "change": "removed", "from": _show(left[key]), "to": None})
        elif key not in left:
            changes.append({"name": key, "change": "added", "from": None, "to": _show(right[key])})
        elif json.dumps(left[key], sort_keys=True) != json.dumps(right[key], sort_keys=True):
            changes.append({"name": key, "change": "changed", "from": _show(left[key]), "to": _show(right[key])})
    return changes


# A variable's fields in the order people read a schema (stored JSON keeps no order: jsonb sorts keys).
_VARIABLE_FIELDS = ("type", "required", "default", "description")


def _variable_fields(variable: dict) -> dict:
    known = [k for k in _VARIABLE_FIELDS if k in variable]
    others = sorted(k for k in variable if k != "name" and k not in _VARIABLE_FIELDS)
    return {k: variable[k] for k in [*known, *others]}


def versions_diff(*, left: dict, right: dict) -> VersionDiff:
    """`left` and `right` are version contents: {messages, model, params, variables}."""
    model = (left.get("model") or "", right.get("model") or "")
    variables_left = {v["name"]: _variable_fields(v) for v in left.get("variables") or []}
    variables_right = {v["name"]: _variable_fields(v) for v in right.get("variables") or []}
    return VersionDiff(
        messages=_messages_diff(left.get("messages") or [], right.get("messages") or []),
        model=model if model[0] != model[1] else None,
        params=_dict_changes(left.get("params") or {}, right.get("params") or {}),
        variables=_dict_changes(variables_left, variables_right),
    )
