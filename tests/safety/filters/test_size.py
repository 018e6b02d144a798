"""The size filter: character and estimated-token caps, whole-text findings."""

from __future__ import annotations

import pytest

from safety.filters import filter_build
from safety.filters.base import Action, CheckContext, Direction, FilterConfigError
from safety.filters.size import tokens_estimate

CONTEXT = CheckContext(organisation_id=1, direction=Direction.INPUT)


def test_tokens_estimate_is_the_larger_of_chars_and_bytes_over_four():
    assert tokens_estimate("") == 0
    assert tokens_estimate("abcd" * 10) == 10
    assert tokens_estimate("日本語" * 4) == 9  # 12 chars, 36 UTF-8 bytes -> 9


def test_character_cap():
    f = filter_build("size", {"max_chars": 10})
    assert f.check("0123456789", CONTEXT).findings == ()
    result = f.check("01234567890", CONTEXT)
    assert [(x.kind, x.start, x.end, x.detail) for x in result.findings] == [
        ("too_large", 0, 0, "11 characters, limit 10")
    ]
    assert result.proposed == Action.BLOCK


def test_token_cap_counts_multibyte_text_higher():
    f = filter_build("size", {"max_tokens": 10})
    assert f.check("a" * 40, CONTEXT).findings == ()
    assert f.check("a" * 44, CONTEXT).findings[0].detail == "about 11 tokens, limit 10"
    assert f.check("日" * 20, CONTEXT).findings[0].detail == "about 15 tokens, limit 10"


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({}, "max_chars"),
        ({"max_chars": 0}, "max_chars"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_chars": 1.5}, "max_chars"),
    ],
)
def test_bad_settings_are_refused(settings, setting):
    with pytest.raises(FilterConfigError) as error:
        filter_build("size", settings)
    assert error.value.setting == setting
