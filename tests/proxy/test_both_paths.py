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
from registry import services as registry
from safety import services as safety
from safety.policies import FilterAction, FilterDecision, hold_decision
from tests.helpers import ACTOR, hang_up_mid_stream, log_of, parked_on_hold, route_with_deployments, wait_until

DEPLOYMENTS = {
    "direct": {"kind": "openai_compatible", "model": "dev-small"},
    "litellm": {"kind": "litellm", "model": "openai/dev-small", "credential_secret": "upstream-key"},
}
# dev-small's seeded price, per token.
PROMPT_PRICE, COMPLETION_PRICE = Decimal("0.0000005"), Decimal("0.0000015")


class Policy:
    """Pre: redacts the word "secret". Post: blocks a reply that echoes "BLOCKME" and holds one that
    echoes "HOLDME" until the test releases it."""

    name = "both-paths"

    def __init__(self):
        self.holds = []

    async def pre(self, *, context, body):
        if "messages" not in body:
            return FilterDecision(FilterAction.ALLOW, self.name)
        messages = [
            {**m, "content": m["content"].replace("secret", "[redacted]")} if isinstance(m.get("content"), str) else m
            for m in body.get("messages", [])
        ]
        return FilterDecision(FilterAction.ALLOW, self.name, body={**body, "messages": messages})

    async def post(self, *, context, response, streamed):
        text = str(response)
        if "BLOCKME" in text:
            return FilterDecision(FilterAction.BLOCK, self.name, reason="echoed BLOCKME")
        if "HOLDME" in text:
            decision = hold_decision(policy=self.name, reason="echoed HOLDME")
            self.holds.append(decision.hold_id)
            return decision
        return FilterDecision(FilterAction.ALLOW, self.name)


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
    policy = Policy()
    safety.policy_install(organisation_id=organisation.id, policy=policy)
    yield policy, version
    safety.policy_install(organisation_id=organisation.id, policy=None)


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
        {"role": "user", "content": "my [redacted] question"},
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


def test_post_filter_block_and_hold(proxy, governed):
    policy, _ = governed
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
    wait_until(lambda: policy.holds, timeout=5)
    # Parked: blocked on its hold in Redis, and not answered (the event is set when the answer comes).
    wait_until(parked_on_hold, timeout=5)
    assert not answered.is_set()
    safety.hold_resolve(hold_id=policy.holds[0], allow=True)
    caller.join(10)
    assert result["held"].status_code == 200 and "HOLDME" in result["held"].text


def test_a_hang_up_cancels_the_upstream_and_is_logged(proxy, dev_upstream, governed):
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
