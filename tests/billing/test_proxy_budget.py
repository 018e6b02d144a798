"""Budgets and costs through Steward's proxy (/v1/chat/completions) against the development upstream."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal

import pytest
import requests
from django.conf import settings
from django.db.models import Sum

from billing.models import UsageLine
from billing.services import budget_create
from tests.helpers import ledger_lines, subprocess_env, wait_until


@pytest.fixture
def gateway(steward_server, organisation, dev_upstream, api_key_factory):
    from tests.helpers import route_with_deployments

    route_with_deployments(organisation, "dev-small", [dev_upstream])
    key, secret = api_key_factory()
    return {"url": f"{steward_server.url}/v1", "key": key, "headers": {"Authorization": f"Bearer {secret}"}}


def chat(gateway, **body):
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hello budget"}], "max_tokens": 50, **body}
    return requests.post(f"{gateway['url']}/chat/completions", json=body, headers=gateway["headers"], timeout=15)


def test_budget_exceeded_is_a_429_envelope_before_any_upstream_call(gateway, organisation, system_actor, dev_upstream):
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Frozen",
        scope="api_key",
        api_key_id=gateway["key"].pk,
        amount=Decimal("0"),
        period="day",
    )
    response = chat(gateway)
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"]
    assert error["budget"] == "Frozen" and error["resets_at"]
    assert "Frozen" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert dev_upstream.stats()["requests"] == 0


def test_non_streamed_and_streamed_calls_are_charged_exactly(gateway, organisation, system_actor):
    budget_create(
        organisation=organisation, actor=system_actor, name="Roomy", scope="organisation", amount=Decimal("10")
    )
    plain = chat(gateway)
    assert plain.status_code == 200, plain.text
    usage = plain.json()["usage"]
    [line] = ledger_lines(plain.headers["x-request-id"])
    assert line.cost == usage["prompt_tokens"] * Decimal("0.0000005") + usage["completion_tokens"] * Decimal(
        "0.0000015"
    )
    assert line.cost > 0 and line.basis == "priced"

    streamed = requests.post(
        f"{gateway['url']}/chat/completions",
        json={
            "model": "dev-small",
            "messages": [{"role": "user", "content": "stream me"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=gateway["headers"],
        stream=True,
        timeout=15,
    )
    stream_usage = None
    for raw in streamed.iter_lines():
        if raw.startswith(b"data: ") and raw != b"data: [DONE]":
            chunk = json.loads(raw[6:])
            stream_usage = chunk.get("usage") or stream_usage
    assert stream_usage and stream_usage["completion_tokens"] > 0
    [sline] = ledger_lines(streamed.headers["x-request-id"])
    assert sline.cost == stream_usage["prompt_tokens"] * Decimal("0.0000005") + stream_usage[
        "completion_tokens"
    ] * Decimal("0.0000015")


CLIENT = r"""
import json, sys, time, concurrent.futures, requests
url, secret, count, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
body = {"model": "dev-small", "messages": [{"role": "user", "content": "hello budget"}], "max_tokens": 50}
def one(_):
    r = requests.post(url, json=body, headers={"Authorization": "Bearer " + secret}, timeout=60)
    return r.status_code, (r.json().get("error") or {}).get("code")
time.sleep(max(0, start_at - time.time()))
with concurrent.futures.ThreadPoolExecutor(count) as pool:
    print(json.dumps(list(pool.map(one, range(count)))))
"""


def test_200_concurrent_requests_through_the_proxy_never_overspend(gateway, organisation, system_actor, dev_upstream):
    from django.utils import timezone

    from billing.services import price_resolve, worst_case_cost

    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hello budget"}], "max_tokens": 50}
    raw_len = len(json.dumps(body).encode())
    price = price_resolve(organisation_id=organisation.pk, model="dev-small", deployment_id=None, at=timezone.now())
    # Twenty worst cases (with a few bytes of slack for the client's JSON spacing).
    worst = worst_case_cost(price=price, input_text_bytes=raw_len + 8, max_output_tokens=50)
    limit = worst * 20
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Twenty",
        scope="api_key",
        api_key_id=gateway["key"].pk,
        amount=limit,
        period="day",
    )
    dev_upstream.control(delay_ms=50)
    secret = gateway["headers"]["Authorization"].split()[1]
    start_at = time.time() + 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, f"{gateway['url']}/chat/completions", secret, "50", str(start_at)],
            env=subprocess_env(),
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outcomes.extend(tuple(o) for o in json.loads(out))
    ok = sum(1 for status, _ in outcomes if status == 200)
    over = sum(1 for status, code in outcomes if status == 429 and code == "budget_exceeded")
    assert ok + over == 200, set(outcomes)
    assert ok >= 20  # actual calls cost less than their worst case, so at least 20 fit
    assert dev_upstream.stats()["requests"] == ok  # nothing rejected reached the upstream
    from proxy.requestlog import request_log_drain

    def all_written() -> bool:
        request_log_drain()
        return UsageLine.objects.filter(api_key_id=gateway["key"].pk).count() >= ok

    wait_until(all_written, timeout=20, interval=0.1)
    total = UsageLine.objects.filter(api_key_id=gateway["key"].pk).aggregate(s=Sum("cost"))["s"]
    assert UsageLine.objects.filter(api_key_id=gateway["key"].pk).count() == ok
    assert total <= limit
    # Admissions never outran the money: even if every admitted call had cost its worst case,
    # the reservations held at any instant fit the limit, and what was really spent fits too.
    cheapest = UsageLine.objects.filter(api_key_id=gateway["key"].pk).order_by("cost").first().cost
    assert ok <= limit // cheapest


def test_per_key_ceiling_rejects_an_expensive_request_through_the_proxy(gateway, system_actor, dev_upstream):
    from billing.services import key_cost_ceiling_set

    key_cost_ceiling_set(api_key=gateway["key"], actor=system_actor, max_request_cost=Decimal("0.001"))
    assert chat(gateway, max_tokens=50).status_code == 200
    response = chat(gateway, max_tokens=4000)  # 4000 × 1.5e-6 = 0.006 USD worst case
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "cost_ceiling_exceeded"
    assert "retry-after" not in response.headers
    assert dev_upstream.stats()["requests"] == 1


def test_reservation_covers_the_dearest_fallback_model(steward_server, organisation, dev_upstream, api_key_factory,
                                                       system_actor):  # fmt: skip
    """A budget that fits the route's own model but not its dearer fallback admits nothing: a retry could
    land on the fallback, and the hard limit must hold whichever deployment answers."""
    from proxy.services import route_update
    from tests.helpers import route_with_deployments

    route_with_deployments(organisation, "dear", [{"api_base": dev_upstream.url, "model": "dev-large"}])
    cheap, _ = route_with_deployments(organisation, "cheap", [dev_upstream])
    key, secret = api_key_factory()
    # dev-small: 0.5/1.5 USD per million tokens in/out; dev-large: 3/15. With max_tokens=1000 the worst
    # case is about 0.0016 USD on dev-small and 0.016 USD on dev-large.
    budget_create(
        organisation=organisation, actor=system_actor, name="Tight", scope="api_key", api_key_id=key.pk,
        amount=Decimal("0.005"), period="day",
    )  # fmt: skip
    body = {"model": "cheap", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1000}
    headers = {"Authorization": f"Bearer {secret}"}
    alone = requests.post(f"{steward_server.url}/v1/chat/completions", json=body, headers=headers, timeout=15)
    assert alone.status_code == 200, alone.text

    route_update(route=cheap, actor=system_actor, fallbacks=["dear"])

    answers = []

    def refused() -> bool:
        answers.append(
            requests.post(f"{steward_server.url}/v1/chat/completions", json=body, headers=headers, timeout=15)
        )
        return answers[-1].status_code != 200

    # The route table reaches the server within the invalidation bound.
    wait_until(refused, timeout=5, interval=0.2)
    guarded = answers[-1]
    assert guarded.status_code == 429, guarded.text
    assert guarded.json()["error"]["code"] == "budget_exceeded"


def _counters(organisation, name: str) -> tuple[Decimal | None, Decimal]:
    """(spent, held) of one budget's current period, read from Redis."""
    from django.utils import timezone

    from billing.money import period_bounds
    from billing.services import billing_config_load, budget_counters_read

    config = billing_config_load(organisation.pk)
    [rule] = [r for r in config.rules if r.name == name]
    start, _end = period_bounds(rule.period, at=timezone.now(), time_zone=config.time_zone)
    return budget_counters_read(rule=rule, period_start=start)


def test_a_budget_refusal_gives_back_the_keys_in_flight_slot(gateway, organisation, system_actor, api_key_factory):
    """The reservation travels with the admission check; when the budget says no, the slot that
    admission took for the key is released, so the next request is judged on the budget alone."""
    from billing.models import Budget
    from billing.services import budget_update

    key, secret = api_key_factory(max_in_flight=1, tpm_limit=1_000_000)
    gateway = {**gateway, "key": key, "headers": {"Authorization": f"Bearer {secret}"}}
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Tight",
        scope="api_key",
        api_key_id=key.pk,
        amount=Decimal("0"),
        period="day",
    )
    for _ in range(3):
        refused = chat(gateway)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    budget_update(budget=Budget.objects.get(name="Tight"), actor=system_actor, amount=Decimal("5"))
    deadline = time.monotonic() + 5
    while (answer := chat(gateway)).status_code != 200 and time.monotonic() < deadline:
        assert answer.json()["error"]["code"] == "budget_exceeded", answer.text  # never key_in_flight
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text
    spent, held = _counters(organisation, "Tight")
    assert held == 0 and spent > 0


def test_a_rate_limit_refusal_leaves_no_reservation_behind(gateway, organisation, system_actor, api_key_factory,
                                                           dev_upstream):  # fmt: skip
    key, secret = api_key_factory(rpm_limit=1)
    gateway = {**gateway, "key": key, "headers": {"Authorization": f"Bearer {secret}"}}
    budget_create(
        organisation=organisation, actor=system_actor, name="Watched", scope="organisation", amount=Decimal("10")
    )
    assert chat(gateway).status_code == 200
    spent_after_one, _ = _counters(organisation, "Watched")
    limited = chat(gateway)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded", limited.text
    assert _counters(organisation, "Watched") == (spent_after_one, Decimal(0))
    assert dev_upstream.stats()["requests"] == 1


def test_budgets_hold_after_redis_forgets_its_scripts(gateway, organisation, system_actor):
    """Admission and reservation go out as EVALSHA in one pipeline; after SCRIPT FLUSH (a Redis
    restart does the same) each is sent again in full and the request is charged as usual."""
    from core.redis import redis_client

    budget_create(
        organisation=organisation, actor=system_actor, name="Flushed", scope="organisation", amount=Decimal("10")
    )
    assert chat(gateway).status_code == 200
    spent_before, _ = _counters(organisation, "Flushed")
    redis_client().script_flush()
    for stream in (False, True):
        response = chat(gateway, stream=stream)
        assert response.status_code == 200, response.text
    spent, held = _counters(organisation, "Flushed")
    assert held == 0 and spent > spent_before


def test_a_cache_hit_reserves_nothing_and_costs_nothing(gateway, organisation, system_actor, api_key_factory,
                                                        dev_upstream):  # fmt: skip
    key, secret = api_key_factory(cache_enabled=True)
    gateway = {**gateway, "key": key, "headers": {"Authorization": f"Bearer {secret}"}}
    budget_create(
        organisation=organisation, actor=system_actor, name="Cached", scope="organisation", amount=Decimal("10")
    )
    first = chat(gateway, temperature=0)
    assert first.status_code == 200 and first.headers["x-steward-cache"] == "miss"
    spent_after_miss, held = _counters(organisation, "Cached")
    assert held == 0 and spent_after_miss > 0
    hit = chat(gateway, temperature=0)
    assert hit.headers["x-steward-cache"] == "hit", hit.headers
    assert _counters(organisation, "Cached") == (spent_after_miss, Decimal(0))
    assert dev_upstream.stats()["requests"] == 1
