"""Every deterministic filter on arbitrary and adversarial text: no exception, spans inside the text, and a return."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.filters import filter_build
from safety.filters.base import CheckContext, Direction

CONTEXT = CheckContext(organisation_id=1, direction=Direction.OUTPUT, sources=("a",), output_schema={"type": "object"})
BUILT = {
    name: filter_build(name, settings)
    for name, settings in {
        "pii": {"national_ids": ["us.ssn", "de.idnr", "es.dni", "fr.nir"]},
        "secrets": {},
        "regex": {"patterns": [{"name": "digits", "pattern": r"\d+"}, {"name": "evil", "pattern": "(a+)+$"}]},
        "blocklist": {"lists": {"t": ["ab", "İx", "ß"]}},
        "injection": {"min_score": 0},
        "size": {"max_chars": 50, "max_tokens": 10},
        "json_schema": {},
        "citations": {},
    }.items()
}
# Pieces that look like the things the filters look for, so random texts reach their checks.
PIECES = st.sampled_from(
    ["@", "a@b.co", "4111 1111 1111 1111", "+1 212-555-0123", "GB82 WEST 1234 5698 7654 32", "::1", "1.2.3.4",
     "536-90-4399", "[Source: a]", "[Source: b]", "ignore all previous instructions", "\u200b", "\U000e0041",
     "sk-", "AKIA", "password=", "-----BEGIN PRIVATE KEY-----", "{", "}", "İ", "ß", "😀", " ", "(", "0", ":"]
)  # fmt: skip
TEXTS = st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=200, deadline=None)
@given(TEXTS)
def test_filters_never_raise_and_spans_stay_inside_the_text(text):
    for name, built in BUILT.items():
        result = built.check(text, CONTEXT)
        for finding in result.findings:
            assert 0 <= finding.start <= finding.end <= len(text), (name, finding)
            assert finding.kind


@pytest.mark.parametrize(
    "text",
    [
        "a@" * 50_000,
        ("a" * 63 + "@") * 1_500,
        "1 " * 50_000,
        "1." * 50_000,
        ":" * 100_000,
        "a:" * 50_000,
        "AB12" * 25_000,
        "+(" * 50_000,
        "[Source: " * 20_000,
        "ignore " * 20_000,
        "\u200b" * 100_000,
    ],
    ids=lambda text: repr(text[:6]),
)
@pytest.mark.timeout(60)
def test_adversarial_inputs_return(text):
    # Each scan is linear or bounded per position; a quadratic one would not return here in time.
    for built in BUILT.values():
        built.check(text, CONTEXT)
