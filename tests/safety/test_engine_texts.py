"""Which texts of a request and a response the stages check, and how redactions go back into each part."""

from __future__ import annotations

import asyncio
import copy

from safety import services
from safety.filters.base import Direction
from safety.models import SafetyPolicy
from safety.policies import policy_compile

POLICY = policy_compile(SafetyPolicy(pk=1, name="p", filters=[{"filter": "pii"}], actions={"*": "redact"}))
CONTEXT = {"organisation_id": 1, "model": "m", "api_key_id": None, "prompt_version_id": None, "request_id": "r"}


def pre(endpoint, body):
    context = services.check_context(policy_context=CONTEXT, direction=Direction.INPUT, body=body)
    return asyncio.run(services.apre_filter(policy=POLICY, context=context, endpoint=endpoint, body=body))


def test_every_chat_text_is_checked_and_each_part_redacted_alone():
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You help ada@example.com."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "I am bob@example.org"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
            {"role": "user", "content": "Again: ada@example.com"},
        ],
    }
    original = copy.deepcopy(body)
    outcome = pre("chat.completions", body)
    messages = outcome.body["messages"]
    assert messages[0]["content"] == "You help [EMAIL_1]."
    assert messages[1]["content"][0]["text"] == "I am [EMAIL_2]"
    assert messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": "x"}}
    assert messages[2]["content"] == "Again: [EMAIL_1]"  # one value, one placeholder
    assert body == original  # the client's body is untouched
    assert outcome.stage.mapping == {"[EMAIL_1]": "ada@example.com", "[EMAIL_2]": "bob@example.org"}


def test_completion_prompts_and_embedding_inputs_are_checked():
    assert pre("completions", {"prompt": "mail ada@example.com"}).body["prompt"] == "mail [EMAIL_1]"
    embedded = pre("embeddings", {"input": ["ada@example.com", [1, 2, 3], "plain"]}).body["input"]
    assert embedded == ["[EMAIL_1]", [1, 2, 3], "plain"]


def test_a_response_is_checked_after_the_requests_placeholders_are_restored():
    context = services.check_context(policy_context=CONTEXT, direction=Direction.OUTPUT, body={})
    policy = policy_compile(SafetyPolicy(pk=1, name="p", filters=[{"filter": "pii"}], actions={"*": "flag"}))
    response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi [EMAIL_1]"}}]}
    outcome = asyncio.run(
        services.apost_filter(
            policy=policy, context=context, endpoint="chat.completions", response=response,
            mapping={"[EMAIL_1]": "ada@example.com"},
        )
    )  # fmt: skip
    assert outcome.response["choices"][0]["message"]["content"] == "Hi ada@example.com"
    assert outcome.stage.action == "flag" and outcome.stage.findings[0]["kind"] == "email"
    assert response["choices"][0]["message"]["content"] == "Hi [EMAIL_1]"


def test_the_output_schema_and_sources_come_from_the_request():
    body = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "messages": [{"role": "user", "content": "[Source: handbook]\nThe handbook says hi."}],
    }
    context = services.check_context(policy_context=CONTEXT, direction=Direction.OUTPUT, body=body)
    assert context.output_schema == {"type": "object"}
    assert services.output_schema_of({"response_format": {"type": "json_object"}}) is None
    assert isinstance(context.sources, tuple)
