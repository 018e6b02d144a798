"""core.llm's translation of litellm's stream chunks into the OpenAI wire format (the pieces the
development upstream cannot make litellm produce; the rest is covered through the proxy in
tests/proxy/test_both_paths.py)."""

from __future__ import annotations

from core.llm import _openai_chunks

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_usage_on_the_last_content_chunk_is_split_off_into_a_chunk_of_its_own():
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "end"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    content, usage = _openai_chunks(chunk, text=False)
    assert content["choices"] == [{"index": 0, "delta": {"content": "end"}, "finish_reason": "stop"}]
    assert "usage" not in content
    assert usage == {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": USAGE}


def test_an_empty_choice_carrying_the_usage_becomes_a_usage_chunk():
    [chunk] = _openai_chunks({"id": "t", "choices": [{"index": 0}], "usage": USAGE}, text=True)
    assert chunk == {"id": "t", "choices": [], "usage": USAGE}


def test_missing_fields_are_filled_and_provider_fields_dropped():
    [text] = _openai_chunks({"choices": [{"index": 0, "text": None}]}, text=True)
    assert text["choices"] == [{"index": 0, "text": "", "logprobs": None, "finish_reason": None}]
    [chat] = _openai_chunks(
        {"choices": [{"index": 0, "delta": {"content": "x", "provider_specific_fields": {}}}], "usage": None},
        text=False,
    )
    assert chat == {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
