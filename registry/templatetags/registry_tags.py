"""Template filters of the registry pages."""

from __future__ import annotations

import json

from django import template

register = template.Library()

# Values longer than this on one line are indented over several lines instead.
ONE_LINE_LIMIT = 60


@register.filter
def json_pretty(value) -> str:
    """A stored JSON value (variable schema, parameter, default) as JSON, not as a Python literal:
    `true`, `null`, double quotes. Short values stay on one line; longer ones are indented (show them
    in an element that keeps line breaks). Autoescaped like any other text."""
    try:
        compact = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return str(value)
    if len(compact) <= ONE_LINE_LIMIT or not isinstance(value, dict | list):
        return compact
    return json.dumps(value, ensure_ascii=False, indent=2)
