"""The LLM moderation filter asks its model through Steward itself (the caller the proxy registers)."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import log_of
from tests.proxy.safetykit import ask
from tests.safety.filterkit import policy_store

MODERATION = {
    "filter": "llm_moderation",
    "settings": {"model": "dev-small"},
    "directions": ["input"],
    "timeout_ms": 5000,
}


def test_a_flagged_verdict_from_the_moderation_model_blocks(proxy, dev_upstream):
    policy_store(proxy.organisation, filters=[MODERATION], actions={"*": "block"})
    dev_upstream.control(reply='{"flagged": true, "categories": {"violence": 0.9}}')
    with pytest.raises(openai.BadRequestError) as caught:
        ask(proxy, "a violent text", stream=False)
    assert "moderation:violence" in caught.value.message
    assert dev_upstream.stats()["requests"] == 1  # only the moderation call reached the upstream
    row = log_of(caught.value.response.headers["x-request-id"])
    assert row.safety["input"]["runs"][0]["status"] == "triggered"


def test_a_clean_verdict_lets_the_request_through(proxy, dev_upstream):
    policy_store(proxy.organisation, filters=[MODERATION], actions={"*": "block"})
    dev_upstream.control(reply='{"flagged": false, "categories": {"violence": 0.0}}')
    answer = ask(proxy, "a kind text", stream=False)
    assert dev_upstream.stats()["requests"] == 2  # the moderation call, then the request
    assert log_of(answer.request_id).safety["input"]["runs"][0]["status"] == "passed"
