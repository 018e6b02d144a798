"""Redaction: typed placeholders, the same value keeping its placeholder, restoring (also across stream chunks)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from safety.filters import filter_build
from safety.filters.base import CheckContext, Direction, Finding
from safety.redaction import StreamRestorer, placeholder_label, redact, restore

CONTEXT = CheckContext(organisation_id=1, direction=Direction.INPUT)


def test_spans_become_typed_numbered_placeholders_and_repeat_values_share_one():
    text = "mail bob@x.org, then bob@x.org again, or al@y.com; card 4111 1111 1111 1111."
    findings = filter_build("pii", {}).check(text, CONTEXT).findings
    redacted, mapping = redact(text, findings)
    assert redacted == "mail [EMAIL_1], then [EMAIL_1] again, or [EMAIL_2]; card [CREDIT_CARD_1]."
    assert mapping == {"[EMAIL_1]": "bob@x.org", "[EMAIL_2]": "al@y.com", "[CREDIT_CARD_1]": "4111 1111 1111 1111"}
    assert restore(redacted, mapping) == text


def test_labels_from_kinds():
    assert placeholder_label("credit_card") == "CREDIT_CARD"
    assert placeholder_label("topic:weapons") == "TOPIC_WEAPONS"
    assert placeholder_label("moderation:self-harm") == "MODERATION_SELF_HARM"
    assert placeholder_label("9lives") == "X_9LIVES"
    assert placeholder_label("::") == "REDACTED"


def test_overlapping_findings_merge_and_the_longest_kind_wins():
    text = "key sk-abc123 end"
    findings = [Finding("secret", 4, 13), Finding("regex:x", 7, 10), Finding("email", 10, 16)]
    redacted, mapping = redact(text, findings)
    assert redacted == "key [SECRET_1]d" and mapping == {"[SECRET_1]": "sk-abc123 en"}


def test_whole_text_findings_are_not_redacted():
    assert redact("abc", [Finding("too_large", 0, 0)]) == ("abc", {})


def test_a_mapping_from_earlier_messages_is_continued():
    first, mapping = redact("a@b.co", [Finding("email", 0, 6)])
    second, mapping = redact("c@d.co and a@b.co", [Finding("email", 0, 6), Finding("email", 11, 17)], mapping)
    assert (first, second) == ("[EMAIL_1]", "[EMAIL_2] and [EMAIL_1]")


def test_a_placeholder_already_in_the_text_is_never_issued():
    text = "literal [EMAIL_1] and a@b.co"
    redacted, mapping = redact(text, [Finding("email", 22, 28)])
    assert redacted == "literal [EMAIL_1] and [EMAIL_2]"
    assert restore(redacted, mapping) == text


def test_restore_leaves_unknown_placeholders_and_lookalikes():
    assert restore("[EMAIL_9] [email_1] [EMAIL_1]", {"[EMAIL_1]": "x@y.z"}) == "[EMAIL_9] [email_1] x@y.z"


def test_stream_restorer_restores_placeholders_split_across_chunks_and_holds_back_only_prefixes():
    mapping = {"[EMAIL_1]": "bob@x.org", "[PHONE_12]": "+1 212 555 0123"}
    restorer = StreamRestorer(mapping)
    assert restorer.feed("Hi [EM") == "Hi "
    assert restorer.feed("AIL_1] call [PHO") == "bob@x.org call "
    assert restorer.feed("NE_1") == ""
    assert restorer.feed("2] [x] [") == "+1 212 555 0123 [x] "
    assert restorer.feed("not a placeholder") == "[not a placeholder"
    assert restorer.feed(" [EMAIL_") == " "
    assert restorer.flush() == "[EMAIL_"
    assert StreamRestorer({}).feed("[EMA") == "[EMA"


KINDS = st.sampled_from(["email", "phone", "credit_card", "topic:x", "secret"])


@st.composite
def texts_with_findings(draw):
    text = draw(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=80))
    spans = draw(
        st.lists(
            st.tuples(st.integers(0, len(text)), st.integers(0, len(text)), KINDS),
            max_size=6,
        )
    )
    findings = [Finding(kind, min(a, b), max(a, b)) for a, b, kind in spans]
    return text, findings


@settings(max_examples=300, deadline=None)
@given(texts_with_findings())
def test_restore_inverts_redact(case):
    text, findings = case
    redacted, mapping = redact(text, findings)
    assert restore(redacted, mapping) == text
    for start, end in ((f.start, f.end) for f in findings if f.end > f.start):
        assert any(value == text[start:end] or text[start:end] in value for value in mapping.values())


@settings(max_examples=300, deadline=None)
@given(texts_with_findings(), st.lists(st.integers(1, 7), min_size=1, max_size=30))
def test_stream_restoring_in_any_chunking_equals_restoring_at_once(case, sizes):
    text, findings = case
    redacted, mapping = redact(text, findings)
    restorer = StreamRestorer(mapping)
    out, position, index = [], 0, 0
    while position < len(redacted):
        size = sizes[index % len(sizes)]
        out.append(restorer.feed(redacted[position : position + size]))
        position += size
        index += 1
    out.append(restorer.flush())
    assert "".join(out) == text
