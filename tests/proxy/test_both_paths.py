"""Every governance stage applies the same whether a deployment is called directly (OpenAI-compatible
upstreams) or through litellm: the same requests, the same assertions, once per path."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import openai
import pytest
import requests

from billing.models import UsageLine
from billing.services import budget_create
from core.invalidation import invalidate
from registry import services as registry
from safety.models import ModerationItem, PolicyAttachment
from safety.moderation import item_decide, item_lease_take
from tests.helpers import ACTOR, hang_up_mid_stream, log_of, route_with_deployments, wait_until
from tests.safety.filterkit import policy_store, words

DEPLOYMENTS = {
    "direct": {"kind": "openai_compatible", "model": "dev-small"},
    "litellm": {"kind": "litellm", "model": "openai/dev-small", "credential_secret": "upstream-key"},
}
# dev-small's seeded price, per token.
PROMPT_PRICE, COMPLETION_PRICE = Decimal("0.0000005"), Decimal("0.0000015")


def policy_stored(organisation):
    """Pre: redacts the word "secret". Post: blocks a reply that echoes "BLOCKME" and holds one that
    echoes "HOLDME" until a reviewer releases it."""
    return policy_store(
        organisation,
        name="both-paths",
        filters=[
            words({"secret": "secret_word"}, directions=["input"]),
            words({"BLOCKME": "blockme", "HOLDME": "holdme"}, directions=["output"]),
        ],
        actions={"secret_word": "redact", "blockme": "block", "holdme": "hold"},
        hold_wait="wait",
        hold_wait_seconds=20,
    )


@pytest.fixture(params=sorted(DEPLOYMENTS))
def governed(request, proxy, organisation, dev_upstream, global_prices):
    route_with_deployments(
        organisation, "governed", [{"api_base": dev_upstream.url, **DEPLOYMENTS[request.param]}], cache_enabled=True
    )
    prompt = registry.prompt_create(organisation=organisation, name="governed-prompt", actor=ACTOR)
    version = registry.prompt_version_create(
        prompt=prompt,
        messages=[{"role": "system", "content": "Answer {{ who }}."}],
        model="governed",
        params={"max_tokens": 40},
        variables=[{"name": "who", "type": "string", "required": True}],
        commit_message="v1",
        actor=ACTOR,
    )
    registry.label_move(prompt=prompt, label="production", version=version, reason="ship", actor=ACTOR)
    budget_create(organisation=organisation, actor=ACTOR, name="Roomy", scope="organisation", amount=Decimal("10"))
    yield policy_stored(organisation), version


def ledger(request_id: str) -> list[UsageLine]:
    log_of(request_id)  # the ledger lines are written with the log record
    return list(UsageLine.objects.filter(request_id=request_id))


def test_prompt_filters_cost_log_and_cache(proxy, dev_upstream, governed):
    _, version = governed
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    ask = dict(
        model="governed",
        messages=[{"role": "user", "content": "my secret question"}],
        extra_body={"prompt": {"name": "governed-prompt", "label": "production", "variables": {"who": "Ada"}}},
    )
    raw = client.chat.completions.with_raw_response.create(**ask)
    completion = raw.parse()
    assert raw.headers["x-steward-prompt-version"] == "governed-prompt:1"
    sent = dev_upstream.stats()["last_request"]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer Ada."},
        {"role": "user", "content": "my [SECRET_WORD_1] question"},
    ]
    assert sent["max_tokens"] == 40
    row = log_of(raw.headers["x-request-id"])
    assert (row.status, row.prompt_version_id, row.cache_hit) == ("ok", version.id, False)
    assert (row.prompt_tokens, row.completion_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    [line] = ledger(raw.headers["x-request-id"])
    assert line.basis == "priced"
    assert line.cost == row.prompt_tokens * PROMPT_PRICE + row.completion_tokens * COMPLETION_PRICE > 0

    upstream_calls = dev_upstream.stats()["requests"]
    again = client.chat.completions.with_raw_response.create(**ask)
    assert again.headers["x-steward-cache"] == "hit"
    assert again.parse().choices[0].message.content == completion.choices[0].message.content
    assert dev_upstream.stats()["requests"] == upstream_calls
    cached = log_of(again.headers["x-request-id"])
    assert cached.status == "cached" and cached.cache_hit
    assert sum(line.cost for line in ledger(again.headers["x-request-id"])) == 0


def test_embeddings_and_completions_are_logged_and_priced(proxy, governed):
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0)
    embedded = client.embeddings.with_raw_response.create(model="governed", input=["one text", "another"])
    assert len(embedded.parse().data) == 2
    completed = client.completions.with_raw_response.create(model="governed", prompt="Once upon", max_tokens=8)
    assert completed.parse().choices[0].text
    for raw, endpoint in ((embedded, "embeddings"), (completed, "completions")):
        row = log_of(raw.headers["x-request-id"])
        assert (row.status, row.endpoint) == ("ok", endpoint) and row.prompt_tokens > 0
        [line] = ledger(raw.headers["x-request-id"])
        assert line.basis == "priced" and line.cost > 0


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_streams_are_in_the_openai_wire_format(proxy, governed, path, include_usage):
    """Every choice has its finish_reason and its delta (chat) or text string (completions); the
    usage, when asked for, comes alone in a last chunk with no choices."""
    body = {"model": "governed", "stream": True, "max_tokens": 4, "stream_options": {"include_usage": include_usage}}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == "/chat/completions" else {"prompt": "Hi"})
    response = requests.post(proxy.url + path, json=body, headers=proxy.headers(), timeout=15)
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    if include_usage:
        *chunks, usage = chunks
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4
    for chunk in chunks:
        assert "usage" not in chunk and len(chunk["choices"]) == 1
        [choice] = chunk["choices"]
        assert "finish_reason" in choice
        if path == "/completions":
            assert isinstance(choice["text"], str)
        else:
            assert isinstance(choice["delta"], dict)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_post_filter_block_and_hold(proxy, governed, reviewer):
    url, headers = f"{proxy.url}/chat/completions", proxy.headers()

    def ask(text):
        body = {"model": "governed", "messages": [{"role": "user", "content": text}]}
        return requests.post(url, json=body, headers=headers, timeout=15)

    blocked = ask("say BLOCKME")
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "content_policy_violation"
    row = log_of(blocked.headers["x-request-id"])
    assert row.status == "rejected" and row.completion_tokens > 0  # the upstream's tokens are still accounted

    result = {}
    answered = threading.Event()

    def call():
        result["held"] = ask("say HOLDME")
        answered.set()

    caller = threading.Thread(target=call)
    caller.start()
    item = wait_until(lambda: ModerationItem.objects.filter(status="pending").first(), timeout=10)
    # Held: a moderation item is waiting for its reviewer, and the client has no answer yet.
    assert not answered.is_set()
    item_lease_take(organisation=reviewer.organisation, public_id=item.public_id, reviewer=reviewer.user)
    item_decide(organisation=reviewer.organisation, public_id=item.public_id, reviewer=reviewer.user, action="approve")
    caller.join(10)
    assert result["held"].status_code == 200 and "HOLDME" in result["held"].text


def test_a_hang_up_cancels_the_upstream_and_is_logged(proxy, organisation, dev_upstream, governed):
    # The policy holds, so it buffers streams; a hang-up mid-stream needs text flowing: no policy here.
    PolicyAttachment.objects.filter(organisation=organisation).delete()
    invalidate("safety_policies")
    request_id = hang_up_mid_stream(proxy, dev_upstream, "governed")
    row = log_of(request_id, timeout=30)
    assert row.status == "cancelled" and row.completion_tokens > 0
    [line] = ledger(request_id)
    assert line.cost > 0  # what was produced before the hang-up is paid for


@pytest.mark.parametrize("stream", [False, True])
def test_refused_credentials_are_the_deployments_fault_not_the_clients(proxy, dev_upstream, governed, stream):
    dev_upstream.control(api_key="not-the-deployments-key")
    body = {"model": "governed", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_misconfigured"
    assert log_of(response.headers["x-request-id"]).attempts[0]["http_status"] == 401


@pytest.mark.parametrize("stream", [False, True])
def test_a_rate_limited_upstream_is_a_429_with_its_retry_after(proxy, dev_upstream, governed, stream):
    """The provider's 429 reaches the client as a 429 (after the retries found no other
    deployment), with the provider's Retry-After, so the client backs off as it would have."""
    dev_upstream.control(fail_status=429, retry_after=7)
    body = {"model": "governed", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert response.headers["retry-after"] == "7"
    row = log_of(response.headers["x-request-id"])
    assert row.status == "error" and row.attempts[0]["http_status"] == 429
