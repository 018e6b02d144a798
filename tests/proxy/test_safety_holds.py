"""Holds through the real proxy: `respond` answers at once with a placeholder and a moderation object,
`wait` keeps the connection until a reviewer decides (or the wait is over); the held text is never
in the answer or the request log."""

from __future__ import annotations

import threading

import pytest

from proxy.models import RequestBody
from safety.models import ModerationItem
from safety.moderation import item_decide, item_lease_take
from tests.helpers import log_of, wait_until
from tests.proxy.safetykit import ask, bodies_stored
from tests.safety.filterkit import policy_store, words

STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
HELD = "the launch codes are 1234"


@STREAM
def test_a_held_output_answers_at_once_with_the_placeholder(proxy, dev_upstream, stream):
    bodies_stored(proxy.organisation)
    policy = policy_store(
        proxy.organisation, filters=[words({"launch codes": "secret_plan"})], actions={"*": "hold"}, priority=1
    )
    dev_upstream.control(reply=HELD)
    answer = ask(proxy, "tell me", stream=stream)
    assert answer.finish_reason == "content_filter" and answer.content == policy.hold_placeholder
    item = ModerationItem.objects.get(public_id=answer.moderation["id"])
    assert answer.moderation == {
        "id": item.public_id,
        "status": "pending",
        "poll_url": f"/v1/moderation/{item.public_id}",
    }
    assert item.public_id.startswith("modr_")
    assert (item.held_text, item.direction, item.stream, item.priority) == (HELD, "output", stream, 1)
    assert item.findings[0]["kind"] == "secret_plan" and item.request_id == answer.request_id
    row = log_of(answer.request_id)
    assert row.safety["moderation_id"] == item.public_id and row.safety["output"]["action"] == "hold"
    stored = RequestBody.objects.get(request_id=answer.request_id)
    assert "launch codes" not in str(stored.response) and stored.response == {"held": item.public_id}


def _approve_when_held(reviewer, edited: str = ""):
    def decide():
        item = wait_until(lambda: ModerationItem.objects.filter(status="pending").first(), timeout=10)
        item_lease_take(organisation=reviewer.organisation, public_id=item.public_id, reviewer=reviewer.user)
        item_decide(
            organisation=reviewer.organisation, public_id=item.public_id, reviewer=reviewer.user,
            action="edit" if edited else "approve", edited_text=edited,
        )  # fmt: skip

    thread = threading.Thread(target=decide)
    thread.start()
    return thread


@STREAM
def test_wait_mode_answers_with_the_reviewers_release(proxy, dev_upstream, reviewer, stream):
    policy_store(
        proxy.organisation,
        filters=[words({"launch codes": "secret_plan"})],
        actions={"*": "hold"},
        hold_wait="wait",
        hold_wait_seconds=20,
    )
    dev_upstream.control(reply=HELD)
    deciding = _approve_when_held(reviewer, "the codes are classified")
    answer = ask(proxy, "tell me", stream=stream)
    deciding.join(10)
    assert answer.content == "the codes are classified" and answer.finish_reason == "stop"
    assert answer.moderation["status"] == "approved"


@STREAM
def test_wait_mode_answers_as_respond_once_the_wait_is_over(proxy, dev_upstream, stream):
    policy = policy_store(
        proxy.organisation,
        filters=[words({"launch codes": "secret_plan"})],
        actions={"*": "hold"},
        hold_wait="wait",
        hold_wait_seconds=1,
    )
    dev_upstream.control(reply=HELD)
    answer = ask(proxy, "tell me", stream=stream)
    assert answer.content == policy.hold_placeholder and answer.moderation["status"] == "pending"


def test_a_held_input_is_answered_without_calling_the_upstream(proxy, dev_upstream):
    bodies_stored(proxy.organisation)
    policy = policy_store(proxy.organisation, filters=[words({"launch codes": "secret_plan"})], actions={"*": "hold"})
    answer = ask(proxy, "what are the launch codes?", stream=False)
    assert answer.content == policy.hold_placeholder and answer.finish_reason == "content_filter"
    assert dev_upstream.stats()["requests"] == 0
    item = ModerationItem.objects.get(public_id=answer.moderation["id"])
    assert item.direction == "input" and item.held_text == "what are the launch codes?"
    assert log_of(answer.request_id).safety["input"]["action"] == "hold"
    stored = RequestBody.objects.get(request_id=answer.request_id)
    assert "launch codes" not in str(stored.request)


def test_a_held_input_released_in_time_goes_on_to_the_upstream(proxy, dev_upstream, reviewer):
    policy_store(
        proxy.organisation,
        filters=[words({"launch codes": "secret_plan"}, directions=["input"])],
        actions={"*": "hold"},
        hold_wait="wait",
        hold_wait_seconds=20,
    )
    dev_upstream.control(echo=True)
    deciding = _approve_when_held(reviewer)
    answer = ask(proxy, "what are the launch codes?", stream=True)
    deciding.join(10)
    assert answer.content == "what are the launch codes?" and answer.finish_reason == "stop"
    assert dev_upstream.stats()["requests"] == 1
    row = log_of(answer.request_id)
    assert row.safety["input"]["action"] == "hold" and row.safety["moderation_id"]
    assert "hold_wait" in row.timings  # the reviewer's time, kept out of Steward's overhead
