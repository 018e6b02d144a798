"""The citation cleaner: [Source: name] -> [n] by first appearance, unknown sources flagged; sources_from_request."""

from __future__ import annotations

from safety.filters import filter_build
from safety.filters.base import Action, CheckContext, Direction
from safety.filters.citations import sources_from_request


def context(*sources: str) -> CheckContext:
    return CheckContext(organisation_id=1, direction=Direction.OUTPUT, sources=sources)


def test_markers_are_numbered_by_first_appearance_and_listed():
    text = "Leave is 25 days [Source: HR Handbook]. Claims [source:  faq ] go to HR [Source: hr handbook]."
    result = filter_build("citations", {}).check(text, context("HR handbook", "FAQ"))
    assert result.rewrite == "Leave is 25 days [1]. Claims [2] go to HR [1]."
    assert result.extra == {"citations": [{"index": 1, "source": "HR Handbook"}, {"index": 2, "source": "faq"}]}
    assert result.findings == () and result.proposed == Action.ALLOW


def test_a_source_the_request_did_not_supply_is_a_finding_on_the_original_span():
    text = "See [Source: handbook] and [Source: Secret Memo]."
    result = filter_build("citations", {}).check(text, context("handbook"))
    assert result.rewrite == "See [1] and [2]."
    (finding,) = result.findings
    assert (finding.kind, text[finding.start : finding.end]) == ("citation_unknown_source", "[Source: Secret Memo]")
    assert result.proposed == Action.FLAG
    none_supplied = filter_build("citations", {}).check(text, context())
    assert len(none_supplied.findings) == 2 and "supplied no sources" in none_supplied.findings[0].detail


def test_text_without_markers_is_left_alone():
    result = filter_build("citations", {}).check("No citations [1] here [see note].", context("a"))
    assert result.rewrite is None and result.extra == {} and result.findings == ()


def test_unicode_source_names():
    text = "Voir [Source: Règlement intérieur] 😀"
    result = filter_build("citations", {}).check(text, context("règlement  intérieur"))
    assert result.rewrite == "Voir [1] 😀" and result.findings == ()


def test_sources_from_request_reads_the_body_list_and_source_lines_of_non_assistant_messages():
    body = {
        "model": "m",
        "steward": {"sources": ["Policy", {"name": "FAQ"}, 3]},
        "messages": [
            {"role": "system", "content": "[Source: HR Handbook]\nLeave is 25 days.\n  [Source: faq]\nrepeat"},
            {"role": "user", "content": [{"type": "text", "text": "[Source: Contract]\nterms"}, {"type": "image_url"}]},
            {"role": "assistant", "content": "[Source: Invented]\n"},
            {"role": "user", "content": "What about [Source: inline mention]?"},
        ],
    }
    assert sources_from_request(body) == ("Policy", "FAQ", "HR Handbook", "Contract")
    assert sources_from_request({}) == ()
    assert sources_from_request({"messages": "nope", "steward": []}) == ()
