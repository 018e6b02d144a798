"""The built-in filters by name, built from an admin's settings, and their catalogue for the policy UI.

    filter_build("pii", {"kinds": ["email", "phone"]})   # -> a PiiFilter, or FilterConfigError

The contract every filter keeps is in `safety.filters.base`; each filter is one module here.
"""

from __future__ import annotations

from typing import Any

from safety.filters.base import Filter, FilterConfigError
from safety.filters.blocklist import BlocklistFilter
from safety.filters.citations import CitationsFilter
from safety.filters.injection import InjectionFilter
from safety.filters.json_schema import JsonSchemaFilter
from safety.filters.llm_moderation import LlmModerationFilter
from safety.filters.pii import PiiFilter
from safety.filters.regex import RegexFilter
from safety.filters.secrets import SecretsFilter
from safety.filters.size import SizeFilter

FILTERS: dict[str, type[Filter]] = {
    cls.name: cls
    for cls in (
        PiiFilter,
        SecretsFilter,
        RegexFilter,
        BlocklistFilter,
        InjectionFilter,
        SizeFilter,
        JsonSchemaFilter,
        LlmModerationFilter,
        CitationsFilter,
    )
}

# What a policy gets when it names no filters: cheap, deterministic, useful on every request.
DEFAULT_FILTERS = ("pii", "injection")


def filter_build(name: str, settings: dict[str, Any] | None) -> Filter:
    """A filter built from its settings. Raises FilterConfigError naming the filter or the bad setting."""
    cls = FILTERS.get(name)
    if cls is None:
        raise FilterConfigError(f"unknown filter '{name}' (known: {', '.join(sorted(FILTERS))})", setting="name")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise FilterConfigError(f"{name}: settings must be a JSON object", setting="settings")
    return cls(settings)


def filter_catalogue() -> list[dict[str, Any]]:
    """Every filter's name, description, kinds, directions, flags and settings, for the policy UI."""
    return [
        {
            "name": cls.name,
            "description": cls.description,
            "kinds": list(cls.kinds),
            "directions": [direction.value for direction in cls.directions],
            "is_async": cls.is_async,
            "deterministic": cls.deterministic,
            "settings": {key: dict(value) for key, value in cls.settings_schema.items()},
        }
        for cls in FILTERS.values()
    ]


__all__ = ["DEFAULT_FILTERS", "FILTERS", "filter_build", "filter_catalogue"]
