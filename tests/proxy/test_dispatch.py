"""Dispatch (proxy.dispatch) on its own: the attempt loop with real Redis (admission, circuits,
budget reservations) and PostgreSQL, the upstream replaced by the attempt function it is given."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from core.errors import PermanentUpstreamError, TransientUpstreamError
from proxy import dispatch, upstream
from proxy.errors import ProxyError
from proxy.pipeline import ProxyRequest
from proxy.selectors import DeploymentTarget
from tests.helpers import route_with_deployments

pytestmark = pytest.mark.usefixtures("transactional_db", "redis_clean")

BODY = {"model": "pair", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}], "usage": None}


def request_for(key_secret: str, model: str = "pair") -> ProxyRequest:
    """A request past its earlier stages (authenticated, body read, route resolved)."""
    from accounts.selectors import api_key_authenticate
    from proxy.selectors import routing_table

    r = ProxyRequest({"type": "http", "headers": []}, None, None, "chat.completions")
    r.principal = api_key_authenticate(key_secret)
    r.raw_body = orjson.dumps({**BODY, "model": model})
    r.client_body = r.body = orjson.loads(r.raw_body)
    r.model = model
    r.table = routing_table(organisation_id=r.principal.organisation_id)
    r.route = r.table.routes[model]
    return r


def answering(script: dict[str, BaseException | None]):
    """An attempt function: deployment name -> the error it raises (None: it answers)."""
    calls = []

    async def attempt(r, deployment: DeploymentTarget, timeout: float):
        calls.append(deployment.name)
        error = script[deployment.name]
        if error is not None:
            raise error
        return upstream.UpstreamResponse(status=200, body=orjson.dumps(ANSWER), data=ANSWER)

    attempt.calls = calls
    return attempt


@pytest.fixture
def pair(organisation, api_key_factory):
    route_with_deployments(
        organisation,
        "pair",
        [
            {"api_base": "http://127.0.0.1:9/v1", "name": "first", "weight": 10_000},
            {"api_base": "http://127.0.0.1:9/v1", "name": "second", "weight": 1},
        ],
    )
    return api_key_factory(max_in_flight=5)[1]


def test_a_transient_failure_moves_on_to_another_deployment_and_the_answer_comes_back_typed(pair, settings):
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    r = request_for(pair)
    attempt = answering({"first": TransientUpstreamError("upstream down"), "second": None})
    result = asyncio.run(dispatch.attempts_run(r, attempt))

    assert type(result) is upstream.UpstreamResponse and result.data == ANSWER
    assert attempt.calls == ["first", "second"]
    assert [(a["deployment"], a["status"]) for a in r.attempts] == [("first", "error"), ("second", "ok")]
    assert r.attempts[0]["circuit"] == "opened"  # the failure counted towards the first deployment's circuit
    assert r.deployment.name == "second"
    assert r.reservation is not None  # reserved with the admission, settled by the settle stage
    assert r.key_admitted  # the key's in-flight slot is held until FINISH gives it back
    assert set(r.timings) >= {"admit", "reserve_budget"}


def test_a_permanent_failure_ends_the_request_without_another_attempt(pair):
    r = request_for(pair)
    attempt = answering({"first": PermanentUpstreamError("bad request"), "second": None})
    with pytest.raises(ProxyError) as raised:
        asyncio.run(dispatch.attempts_run(r, attempt))
    assert raised.value.outcome == "error"
    assert attempt.calls == ["first"]


def test_when_every_deployment_fails_the_last_error_is_the_clients(pair):
    r = request_for(pair)
    attempt = answering({"first": TransientUpstreamError("down"), "second": TransientUpstreamError("down too")})
    with pytest.raises(ProxyError) as raised:
        asyncio.run(dispatch.attempts_run(r, attempt))
    assert raised.value.status == 502 and raised.value.outcome == "error"
    assert sorted(attempt.calls) == ["first", "second"]


def test_a_cached_answer_is_a_cache_hit_with_no_attempt(pair):
    from core.redis import redis_client

    r = request_for(pair)
    r.cache_key = "stw:cache:test:dispatch"
    redis_client().set(r.cache_key, b'{"cached": true}', ex=60)
    attempt = answering({"first": None, "second": None})
    result = asyncio.run(dispatch.attempts_run(r, attempt))
    assert result == dispatch.CacheHit(b'{"cached": true}')
    assert attempt.calls == [] and r.attempts == [] and r.reservation is None


def test_weighted_order_puts_each_deployment_first_in_proportion_to_its_weight():
    def target(id: int, weight: int) -> DeploymentTarget:
        return DeploymentTarget(id, 1, "r", f"d{id}", "openai_compatible", "m", "", None, weight, None, None, 30.0)

    heavy, light = target(1, 3), target(2, 1)
    firsts = Counter(dispatch.weighted_order([heavy, light])[0] is heavy for _ in range(4000))
    assert 0.70 < firsts[True] / 4000 < 0.80
