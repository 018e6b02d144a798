"""The registry: every built-in filter by name, built from settings, and the catalogue the policy UI shows."""

from __future__ import annotations

import pytest

from safety.filters import DEFAULT_FILTERS, FILTERS, filter_build, filter_catalogue
from safety.filters.base import CheckContext, Direction, Filter, FilterConfigError

MINIMAL = {
    "pii": {},
    "secrets": {},
    "regex": {"patterns": [{"name": "n", "pattern": "x"}]},
    "blocklist": {"lists": {"l": ["t"]}},
    "injection": {},
    "size": {"max_chars": 10},
    "json_schema": {},
    "llm_moderation": {"model": "m"},
    "citations": {},
}


def test_every_filter_builds_from_minimal_settings():
    assert set(FILTERS) == set(MINIMAL)
    for name, settings in MINIMAL.items():
        built = filter_build(name, settings)
        assert isinstance(built, Filter) and built.name == name


def test_unknown_filter_and_non_object_settings_are_refused():
    with pytest.raises(FilterConfigError, match="unknown filter 'nope'"):
        filter_build("nope", {})
    with pytest.raises(FilterConfigError, match="settings must be a JSON object"):
        filter_build("pii", ["x"])


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_unknown_settings_are_refused_by_every_filter(name):
    with pytest.raises(FilterConfigError) as error:
        filter_build(name, {**MINIMAL[name], "typo_setting": 1})
    assert error.value.setting == "typo_setting"


def test_catalogue_describes_every_filter():
    catalogue = {entry["name"]: entry for entry in filter_catalogue()}
    assert set(catalogue) == set(FILTERS)
    assert catalogue["pii"]["kinds"] == ["email", "phone", "credit_card", "iban", "national_id", "ip_address"]
    assert catalogue["json_schema"]["directions"] == ["output"]
    assert catalogue["llm_moderation"]["is_async"] and not catalogue["llm_moderation"]["deterministic"]
    assert "national_ids" in catalogue["pii"]["settings"]
    assert all(entry["description"] for entry in catalogue.values())


def test_default_filters_check_empty_text_without_findings():
    for name in DEFAULT_FILTERS:
        assert filter_build(name, {}).check("", CheckContext(1, Direction.INPUT)).findings == ()


def test_finding_kinds_apply_the_settings():
    assert filter_build("pii", {"kinds": ["phone", "email"]}).finding_kinds() == ("email", "phone")
    regex = filter_build(
        "regex", {"patterns": [{"name": "a", "pattern": "a"}, {"name": "b", "pattern": "b", "kind": "order_id"}]}
    )
    assert regex.finding_kinds() == ("regex:a", "order_id")
    assert filter_build("blocklist", {"lists": {"weapons": ["x"], "drugs": ["y"]}}).finding_kinds() == (
        "topic:weapons",
        "topic:drugs",
    )
    moderation = filter_build("llm_moderation", {"model": "m", "categories": ["hate"]})
    assert moderation.finding_kinds() == ("moderation:hate", "moderation:flagged")
    assert filter_build("injection", {"hidden_text": False}).finding_kinds() == ("prompt_injection",)
    assert filter_build("size", {"max_chars": 1}).finding_kinds() == ("too_large",)
