"""The pre- and post-filter stages: the default pass-through policy, and block / hold outcomes through the proxy."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import requests

from safety import services as safety
from safety.policies import FilterAction, FilterContext, FilterDecision, PassThroughPolicy, hold_decision
from tests.helpers import log_of, parked_on_hold, wait_until

CONTEXT = FilterContext(
    request_id="r1", organisation_id=1, api_key_id=None, team_id=None, endpoint="chat.completions", model="m"
)
BODY = {"model": "dev-small", "messages": [{"role": "user", "content": "filter me"}]}


def test_pass_through_policy_allows_everything_unchanged():
    policy = PassThroughPolicy()
    body = {"messages": [{"role": "user", "content": "anything"}]}
    pre = asyncio.run(policy.pre(context=CONTEXT, body=body))
    post = asyncio.run(policy.post(context=CONTEXT, response={"choices": []}, streamed=False))
    assert pre.allowed and pre.body is None and post.allowed and post.body is None
    assert safety.policy_for(organisation_id=12345).name == "pass_through"


class Scripted:
    """A policy whose answers a test chooses (the moderation issue will store real ones)."""

    name = "scripted"

    def __init__(self, pre=None, post=None):
        self._pre, self._post = pre, post

    async def pre(self, *, context, body):
        return self._pre(body) if self._pre else FilterDecision(FilterAction.ALLOW, self.name)

    async def post(self, *, context, response, streamed):
        return self._post(response) if self._post else FilterDecision(FilterAction.ALLOW, self.name)


@pytest.fixture
def installed(proxy):
    def install(policy):
        safety.policy_install(organisation_id=proxy.organisation.id, policy=policy)

    yield install
    safety.policy_install(organisation_id=proxy.organisation.id, policy=None)


def post(proxy, body=BODY):
    return requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(), timeout=15)


def test_pre_filter_block_stops_the_request_before_the_upstream(proxy, dev_upstream, installed):
    installed(Scripted(pre=lambda body: FilterDecision(FilterAction.BLOCK, "scripted", reason="no secrets")))
    response = post(proxy)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert "no secrets" in response.json()["error"]["message"]
    assert dev_upstream.stats()["requests"] == 0
    assert log_of(response.headers["x-request-id"]).status == "rejected"


def test_pre_filter_may_rewrite_the_request(proxy, dev_upstream, installed):
    def redact(body):
        return FilterDecision(
            FilterAction.ALLOW, "scripted", body={**body, "messages": [{"role": "user", "content": "[redacted]"}]}
        )

    installed(Scripted(pre=redact))
    assert post(proxy).status_code == 200
    assert dev_upstream.stats()["last_request"]["messages"] == [{"role": "user", "content": "[redacted]"}]


def test_post_filter_block_withholds_the_response(proxy, installed):
    installed(Scripted(post=lambda response: FilterDecision(FilterAction.BLOCK, "scripted", reason="leak")))
    response = post(proxy)
    assert response.status_code == 400 and "withheld" in response.json()["error"]["message"]
    row = log_of(response.headers["x-request-id"])
    # The upstream was called and its tokens are still accounted.
    assert row.status == "rejected" and row.completion_tokens > 0


@pytest.mark.parametrize("allow", [True, False])
def test_hold_parks_the_response_until_a_reviewer_decides(proxy, installed, allow):
    holds = []

    def hold(response):
        decision = hold_decision(policy="scripted", reason="needs review")
        holds.append(decision.hold_id)
        return decision

    installed(Scripted(post=hold))
    result = {}
    answered = threading.Event()

    def call():
        result["r"] = post(proxy)
        answered.set()

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: holds, timeout=5)
    # Parked: blocked on its hold in Redis, and not answered (the event is set when the answer comes).
    wait_until(parked_on_hold, timeout=5)
    assert not answered.is_set()
    safety.hold_resolve(hold_id=holds[0], allow=allow)
    caller.join(10)
    assert result["r"].status_code == (200 if allow else 400)


def test_a_stream_blocked_once_it_has_run_ends_with_an_error_event(proxy, installed):
    """The content went out as it came; the post-filter's decision closes the stream with an error
    event (not a JSON error: the client is already reading events) and is logged."""
    installed(Scripted(post=lambda response: FilterDecision(FilterAction.BLOCK, "scripted", reason="leak")))
    response = post(proxy, {**BODY, "stream": True})
    assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][6:])["error"]["code"] == "content_policy_violation"
    assert any(json.loads(e[6:]).get("choices") for e in events[:-2])
    assert log_of(response.headers["x-request-id"]).status == "rejected"
