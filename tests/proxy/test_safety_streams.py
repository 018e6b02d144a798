"""Stream modes with the development upstream streaming through the real proxy: window, observe, buffer."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.helpers import log_of
from tests.proxy.safetykit import ask
from tests.safety.filterkit import policy_store, words

WORDS = [f"w{i}" for i in range(40)]


def events(proxy, text="go"):
    body = {"model": "dev-small", "messages": [{"role": "user", "content": text}], "stream": True}
    response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=20)
    assert response.status_code == 200, response.text
    raw = [e for e in response.content.split(b"\n\n") if e and not e.startswith(b":")]
    return response.headers["x-request-id"], raw


def test_window_passes_text_until_a_violation_then_ends_with_content_filter(proxy, dev_upstream):
    policy_store(
        proxy.organisation,
        filters=[words({"plutonium": "weapons"})],
        actions={"*": "block"},
        stream_mode="window",
        window_chars=30,
    )
    # One word per upstream write, so the window moves as the text comes.
    dev_upstream.control(reply=" ".join([*WORDS[:30], "plutonium", *WORDS[30:]]), chunk_delay_ms=3)
    request_id, raw = events(proxy)
    assert raw[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in raw[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    # Nothing after the content_filter chunk but [DONE], and no other finish.
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("content_filter") == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "plutonium" not in text
    assert text.startswith("w0 w1 w2") and len(text) > 30  # the text before the violation streamed
    row = log_of(request_id)
    assert row.safety["output"]["action"] == "block" and row.safety["stream_mode"] == "window"
    assert row.status == "rejected"


def test_window_holds_back_enough_to_redact(proxy, dev_upstream):
    policy_store(
        proxy.organisation,
        filters=[{"filter": "pii", "directions": ["output"]}],
        actions={"*": "redact"},
        stream_mode="window",
        window_chars=20,
    )
    reply = " ".join([*WORDS[:12], "ada@example.com", *WORDS[12:]])
    dev_upstream.control(reply=reply)
    answer = ask(proxy, "go", stream=True)
    assert answer.content == reply.replace("ada@example.com", "[EMAIL_1]")
    assert answer.chunks > 3


def test_window_blocking_before_any_text_went_out_is_an_error(proxy, dev_upstream):
    policy_store(
        proxy.organisation, filters=[words({"w1": "w"})], actions={"*": "block"}, stream_mode="window", window_chars=30
    )
    dev_upstream.control(reply=" ".join(WORDS))
    with pytest.raises(openai.BadRequestError) as caught:
        ask(proxy, "go", stream=True)
    assert caught.value.code == "content_policy_violation"


def test_observe_streams_at_once_and_records(proxy, dev_upstream):
    policy_store(proxy.organisation, filters=[words({"banana": "fruit"})], actions={"*": "flag"}, stream_mode="observe")
    dev_upstream.control(reply="one banana two")
    answer = ask(proxy, "go", stream=True)
    assert answer.content == "one banana two"
    row = log_of(answer.request_id)
    assert row.safety["stream_mode"] == "observe" and row.safety["output"]["action"] == "flag"
    assert row.safety["output"]["findings"][0]["kind"] == "fruit"


def test_observe_with_a_blocking_action_buffers_and_says_why(proxy, dev_upstream):
    policy_store(
        proxy.organisation, filters=[words({"banana": "fruit"})], actions={"*": "block"}, stream_mode="observe"
    )
    dev_upstream.control(reply="one banana two")
    with pytest.raises(openai.BadRequestError) as caught:
        ask(proxy, "go", stream=True)
    row = log_of(caught.value.response.headers["x-request-id"])
    assert row.safety["stream_mode"] == "buffer" and "observe" in row.safety["stream_mode_reason"]


def test_buffer_releases_the_checked_text_as_chunks_with_the_usage(proxy, dev_upstream):
    policy_store(proxy.organisation, filters=[words({"banana": "fruit"})], actions={"*": "flag"})
    dev_upstream.control(reply=" ".join(WORDS))
    answer = ask(proxy, "go", stream=True, stream_options={"include_usage": True})
    assert answer.content == " ".join(WORDS) and answer.chunks > 5 and answer.finish_reason == "stop"
    row = log_of(answer.request_id)
    assert row.safety["stream_mode"] == "buffer" and row.completion_tokens == len(WORDS)


def test_several_streamed_choices_are_refused_under_an_output_policy(proxy, dev_upstream):
    policy_store(proxy.organisation, filters=[words({"banana": "fruit"})], actions={"*": "flag"})
    with pytest.raises(openai.BadRequestError) as caught:
        ask(proxy, "go", stream=True, n=2)
    assert caught.value.param == "n" and dev_upstream.stats()["requests"] == 0
