"""The blocklist filter: named term lists in one Aho-Corasick automaton, kind topic:<list>."""

from __future__ import annotations

import pytest

from safety.filters import filter_build
from safety.filters.base import Action, CheckContext, Direction, FilterConfigError

CONTEXT = CheckContext(organisation_id=1, direction=Direction.INPUT)
LISTS = {"weapons": ["assault rifle", "arms"], "competitors": ["Acme Corp", "Globex"]}


def found(text: str, **settings) -> list[tuple[str, str]]:
    result = filter_build("blocklist", {"lists": LISTS, **settings}).check(text, CONTEXT)
    return [(f.kind, text[f.start : f.end]) for f in result.findings]


def test_terms_are_found_case_insensitively_as_whole_words_by_default():
    text = "Compare ACME corp with globex on arms sales; the farms and Globexia are fine."
    assert found(text) == [
        ("topic:competitors", "ACME corp"),
        ("topic:competitors", "globex"),
        ("topic:weapons", "arms"),
    ]


def test_whole_words_off_matches_inside_words():
    assert ("topic:weapons", "arms") in found("the farms", whole_words=False)


def test_case_sensitive_on():
    assert found("acme corp and Acme Corp", case_sensitive=True) == [("topic:competitors", "Acme Corp")]


def test_a_term_in_two_lists_reports_both_and_proposes_block():
    f = filter_build("blocklist", {"lists": {"a": ["x-ray"], "b": ["X-Ray"]}})
    result = f.check("an x-ray", CONTEXT)
    assert sorted(x.kind for x in result.findings) == ["topic:a", "topic:b"]
    assert result.proposed == Action.BLOCK


def test_unicode_whose_lowercase_changes_length_keeps_offsets():
    f = filter_build("blocklist", {"lists": {"places": ["İstanbul"]}})
    text = "İİ visit İstanbul"  # 'İ'.lower() is two characters
    assert [(x.start, x.end) for x in f.check(text, CONTEXT).findings] == [(9, 17)]
    assert text[9:17] == "İstanbul"


@pytest.mark.parametrize(
    "settings",
    [
        {"lists": {}},
        {"lists": {"Bad Name": ["x"]}},
        {"lists": {"a": "x"}},
        {"lists": {"a": [" "]}},
        {"lists": {"a": ["x" * 201]}},
        {"lists": {"a": ["x"]}, "whole_words": "yes"},
    ],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(FilterConfigError):
        filter_build("blocklist", settings)
