"""The regex filter: admin patterns in RE2 (linear time), invalid or oversized patterns refused by name."""

from __future__ import annotations

import pytest

from safety.filters import filter_build
from safety.filters.base import Action, CheckContext, Direction, FilterConfigError
from safety.filters.regex import MAX_PATTERN_LENGTH, MAX_PATTERNS

CONTEXT = CheckContext(organisation_id=1, direction=Direction.INPUT)


def test_each_pattern_reports_its_kind_and_span():
    f = filter_build(
        "regex",
        {
            "patterns": [
                {"name": "order", "pattern": r"ORD-(\d{6})", "kind": "order_id"},
                {"name": "project", "pattern": r"(?P<code>project)\s+\w+"},
            ]
        },
    )
    text = "Order ORD-123456 for project apollo, ORD-12 is too short."
    result = f.check(text, CONTEXT)
    assert [(x.kind, text[x.start : x.end], x.detail) for x in result.findings] == [
        ("order_id", "ORD-123456", "pattern 'order'"),
        ("regex:project", "project apollo", "pattern 'project'"),
    ]
    assert result.proposed == Action.FLAG


def test_case_insensitive_setting_and_unicode_offsets():
    f = filter_build("regex", {"patterns": [{"name": "w", "pattern": "café"}], "case_sensitive": False})
    text = "😀 Ein CAFÉ und ein Café"
    assert [(x.start, x.end) for x in f.check(text, CONTEXT).findings] == [(6, 10), (19, 23)]


def test_a_catastrophic_backtracking_pattern_runs_in_linear_time():
    # With `re`, (a+)+$ on 'aaaa...!' backtracks exponentially; RE2 answers at once.
    f = filter_build("regex", {"patterns": [{"name": "evil", "pattern": "(a+)+$"}]})
    assert f.check("a" * 200_000 + "!", CONTEXT).findings == ()
    assert [(x.start, x.end) for x in f.check("b" + "a" * 50, CONTEXT).findings] == [(1, 51)]


def test_empty_matches_are_not_findings():
    f = filter_build("regex", {"patterns": [{"name": "star", "pattern": "x*"}]})
    assert [(x.start, x.end) for x in f.check("abxxc", CONTEXT).findings] == [(2, 4)]


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ([{"name": "back", "pattern": r"(a)\1"}], "pattern 'back' is invalid"),
        ([{"name": "look", "pattern": r"foo(?=bar)"}], "pattern 'look' is invalid"),
        ([{"name": "open", "pattern": "("}], "pattern 'open' is invalid"),
        ([{"name": "long", "pattern": "a" * (MAX_PATTERN_LENGTH + 1)}], "pattern 'long' is"),
        ([{"name": f"p{i}", "pattern": "a"} for i in range(MAX_PATTERNS + 1)], "at most"),
        ([{"name": "a", "pattern": "x"}, {"name": "a", "pattern": "y"}], "used twice"),
        ([{"name": "bad name!", "pattern": "x"}], "name must be"),
        ([{"name": "k", "pattern": "x", "kind": "Bad Kind"}], "kind must be"),
        ([{"name": "k", "pattern": "x", "flags": "i"}], "must be an object with"),
        ([], "non-empty list"),
    ],
)
def test_bad_patterns_are_refused_naming_the_pattern(patterns, message):
    with pytest.raises(FilterConfigError) as error:
        filter_build("regex", {"patterns": patterns})
    assert message in str(error.value)
    assert error.value.setting == "patterns"
