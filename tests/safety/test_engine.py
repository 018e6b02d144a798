"""The policy engine on texts (no proxy): actions, redaction, fail-closed, timeouts, deadlines, skips."""

from __future__ import annotations

import asyncio

import pytest

from safety.engine import arun_policy
from safety.filters.base import Action, CheckContext, Direction
from safety.models import SafetyPolicy
from safety.policies import policy_compile
from safety.redaction import restore
from tests.safety.filterkit import SleepingFilter, words

INPUT = CheckContext(organisation_id=1, direction=Direction.INPUT)
OUTPUT = CheckContext(organisation_id=1, direction=Direction.OUTPUT)


def compiled(filters, actions=None, **fields):
    return policy_compile(SafetyPolicy(pk=7, name="p", filters=filters, actions=actions or {}, **fields))


def run(policy, text, context=INPUT):
    return asyncio.run(arun_policy(policy, text, context))


def test_no_finding_passes_and_every_run_is_recorded():
    result = run(compiled([words({"bad": "bad"}), {"filter": "injection"}]), "a harmless question")
    assert result.action == Action.ALLOW and result.text == "a harmless question" and not result.findings
    assert [(r["filter"], r["status"]) for r in result.runs] == [("test_words", "passed"), ("injection", "passed")]
    assert all(r["ms"] >= 0 for r in result.runs)
    assert (result.policy_id, result.policy_name) == (7, "p")


@pytest.mark.parametrize("action", ["allow", "flag", "redact", "hold", "block"])
def test_a_kind_takes_the_policy_action_named_for_it(action):
    result = run(compiled([words({"bad": "bad"})], {"bad": action}), "this is bad")
    assert result.action == action
    assert result.runs[0]["status"] == "triggered" and result.runs[0]["findings"] == 1
    assert result.findings == [
        {
            "kind": "bad",
            "start": 8,
            "end": 11,
            "score": 1.0,
            "detail": "the word bad",
            "filter": "test_words",
            "action": action,
        }
    ]


def test_unnamed_kinds_take_star_then_the_filters_proposal_and_the_strongest_wins():
    policy = compiled(
        [words({"meh": "meh", "bad": "bad"}, settings={"words": {"meh": "meh", "bad": "bad"}, "proposed": "hold"})],
        {"meh": "flag"},
    )
    assert run(policy, "meh").action == Action.FLAG
    assert run(policy, "meh and bad").action == Action.HOLD  # bad: the filter proposes hold
    starred = compiled([words({"meh": "meh", "bad": "bad"})], {"meh": "flag", "*": "block"})
    assert run(starred, "meh and bad").action == Action.BLOCK
    assert {f["kind"]: f["action"] for f in run(starred, "meh and bad").findings} == {"meh": "flag", "bad": "block"}


def test_redact_replaces_spans_with_typed_placeholders_the_mapping_restores():
    policy = compiled([{"filter": "pii", "settings": {}}], {"*": "redact"})
    text = "Write to ada@example.com or bob@example.org today"
    result = run(policy, text)
    assert result.action == Action.REDACT and result.changed
    assert "ada@example.com" not in result.text and "[EMAIL_1]" in result.text and "[EMAIL_2]" in result.text
    assert restore(result.text, result.mapping) == text


def test_a_rewrite_applies_whatever_the_action_and_keeps_redactions():
    policy = compiled([{"filter": "test_rewrite"}, words({"secret": "s"})], {"s": "redact"})
    result = run(policy, "the secret is here [Source: x]", OUTPUT)
    assert result.text == "the [S_1] is here [1]"
    assert result.extra == {"citations": [{"n": 1, "source": "x"}]}


def test_an_erroring_filter_fails_closed():
    result = run(compiled([{"filter": "test_raises"}, words({"x": "x"})]), "fine text")
    assert result.action == Action.BLOCK and result.failed == "test_raises"
    assert result.runs[0]["status"] == "errored" and "this filter always fails" in result.runs[0]["reason"]


def test_on_error_allow_lets_the_text_through_and_records_it():
    result = run(compiled([{"filter": "test_raises", "on_error": "allow"}]), "fine text")
    assert result.action == Action.ALLOW and not result.failed
    assert result.runs[0]["status"] == "errored" and "on_error allow" in result.runs[0]["reason"]


def test_a_filter_over_its_timeout_times_out_and_fails_closed():
    policy = compiled([{"filter": "test_sleeps", "settings": {"seconds": 5}, "timeout_ms": 20}])
    result = run(policy, "text")
    assert result.action == Action.BLOCK and result.failed == "test_sleeps"
    assert result.runs[0]["status"] == "timed_out" and "20 ms" in result.runs[0]["reason"]


def test_the_policy_deadline_bounds_the_stage_and_filters_run_concurrently():
    SleepingFilter.log.clear()
    policy = compiled(
        [
            {"filter": "test_sleeps", "settings": {"seconds": 0.05, "tag": "a", "kind": "a"}, "timeout_ms": 5000},
            {"filter": "test_sleeps", "settings": {"seconds": 0.05, "tag": "b"}, "timeout_ms": 5000},
            {
                "filter": "test_sleeps",
                "settings": {"seconds": 10, "tag": "slow"},
                "timeout_ms": 20000,
                "on_error": "allow",
            },
        ],
        deadline_ms=1000,
    )
    result = run(policy, "text")
    # Both short filters started before either ended: they ran together.
    assert SleepingFilter.log[:3] == [("start", "a"), ("start", "b"), ("start", "slow")]
    assert [r["status"] for r in result.runs] == ["triggered", "passed", "timed_out"]
    assert result.runs[2]["reason"].startswith("policy deadline reached")
    assert result.action == Action.FLAG  # the slow one fails open


def test_filters_not_for_the_direction_or_without_a_schema_are_skipped_with_the_reason():
    policy = compiled([words({"x": "x"}, directions=["output"]), {"filter": "json_schema"}])
    result = run(policy, "x", INPUT)
    assert [(r["status"], r["reason"]) for r in result.runs] == [
        ("skipped", "does not check input text"),
        ("skipped", "does not check input text"),
    ]
    assert run(policy, "x", OUTPUT).runs[1] == {
        "filter": "json_schema",
        "status": "skipped",
        "ms": 0.0,
        "findings": 0,
        "reason": "no output schema declared",
    }


def test_stream_modes_are_settled_at_compile_time():
    assert compiled([words({"x": "x"})], {"*": "flag"}, stream_mode="observe").stream_mode == "observe"
    observe_block = compiled([words({"x": "x"})], {"*": "block"}, stream_mode="observe")
    assert observe_block.stream_mode == "buffer" and "observe" in observe_block.stream_mode_reason
    # A kind left to the filter may be proposed as anything: observe is refused.
    assert compiled([words({"x": "x"})], {}, stream_mode="observe").stream_mode == "buffer"
    hold = compiled([words({"x": "x"})], {"*": "hold"}, stream_mode="window")
    assert hold.stream_mode == "buffer" and "hold" in hold.stream_mode_reason
    assert compiled([words({"x": "x"})], {"*": "block"}, stream_mode="window").stream_mode == "window"
