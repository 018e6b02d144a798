"""Hard budgets count every choice, the request as sent and every attempt; unpriced models fail closed.

Everything goes through Steward's HTTP server (`steward_server`) to the development upstream; the
budgets' Redis counters and the ledger are read afterwards to show that nothing was spent beyond them.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
import requests
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from billing.models import UsageLine
from billing.money import period_bounds
from billing.services import billing_config_get, budget_counters_read, budget_create, price_set
from core.actors import Actor
from core.invalidation import invalidate
from tests.factories import PromptFactory, RouteFactory
from tests.helpers import ledger_lines, login, wait_until

ACTOR = Actor.system("tests")
# An organisation price for dev-small that makes every token count: input 1e-6, output 1e-3 USD.
INPUT = Decimal("0.000001")
OUTPUT = Decimal("0.001")


def drain_all() -> None:
    from proxy.requestlog import request_log_drain

    request_log_drain()


def counters(organisation, name: str) -> tuple[Decimal | None, Decimal]:
    """(settled spend, held reservations) of budget `name` in its current period."""
    rule = next(r for r in billing_config_get(organisation.pk).rules if r.name == name)
    start, _ = period_bounds(rule.period, at=timezone.now(), time_zone=organisation.time_zone)
    return budget_counters_read(rule=rule, period_start=start)


def ledger_total(organisation) -> Decimal:
    return UsageLine.objects.filter(organisation_id=organisation.pk).aggregate(t=Sum("cost"))["t"] or Decimal(0)


@pytest.fixture
def dear_prices(organisation):
    price_set(
        organisation=organisation,
        model="dev-small",
        actor=ACTOR,
        input_per_token=INPUT,
        output_per_token=OUTPUT,
        effective_from=timezone.now() - dt.timedelta(seconds=5),
    )


@pytest.fixture
def gateway(steward_server, organisation, dev_upstream, api_key_factory, dear_prices):
    from tests.helpers import route_with_deployments

    route_with_deployments(organisation, "dev-small", [dev_upstream])
    key, secret = api_key_factory()
    return {"url": f"{steward_server.url}/v1", "key": key, "headers": {"Authorization": f"Bearer {secret}"}}


def key_budget(organisation, key, amount: str, name: str = "Hard") -> None:
    budget_create(
        organisation=organisation,
        actor=ACTOR,
        name=name,
        scope="api_key",
        api_key_id=key.pk,
        amount=Decimal(amount),
        period="day",
    )


def post(gateway, path: str, body: dict) -> requests.Response:
    return requests.post(f"{gateway['url']}/{path}", json=body, headers=gateway["headers"], timeout=30)


# --- every choice counts ------------------------------------------------------------------------


def test_n_choices_are_reserved_against_a_hard_budget(gateway, organisation, dev_upstream):
    key_budget(organisation, gateway["key"], "1")
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}

    # 100 choices of up to 500 tokens at 0.001 USD: up to 50 USD against a 1 USD budget.
    refused = post(gateway, "chat/completions", {**body, "n": 100})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert dev_upstream.stats()["requests"] == 0

    # One choice of 500 tokens (0.5 USD at most) fits: the budget itself is not what refused.
    served = post(gateway, "chat/completions", body)
    assert served.status_code == 200, served.text
    ledger_lines(served.headers["x-request-id"])
    spent, held = counters(organisation, "Hard")
    assert spent == ledger_total(organisation) and 0 < spent <= Decimal("1") and held == 0


def test_best_of_candidates_are_reserved_for_text_completions(gateway, organisation, dev_upstream):
    key_budget(organisation, gateway["key"], "1")
    body = {"model": "dev-small", "prompt": "hi", "max_tokens": 500}
    refused = post(gateway, "completions", {**body, "best_of": 100})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert dev_upstream.stats()["requests"] == 0
    assert ledger_total(organisation) == 0
    assert counters(organisation, "Hard")[1] == 0


# --- the request as sent upstream ---------------------------------------------------------------


@pytest.fixture
def long_prompt(organisation):
    from registry import services as registry

    prompt = PromptFactory(organisation=organisation, name="long-brief")
    version = registry.prompt_version_create(
        prompt=prompt,
        messages=[{"role": "system", "content": "policy " * 4000}, {"role": "user", "content": "{{ q }}"}],
        model="dev-small",
        params={"max_tokens": 1},
        variables=[{"name": "q", "type": "string", "required": True}],
        commit_message="v1",
        actor=ACTOR,
    )
    registry.label_move(prompt=prompt, label="production", version=version, reason="ship", actor=ACTOR)
    return prompt


def test_rendered_prompt_is_sized_as_sent_not_as_the_client_sent_it(gateway, organisation, dev_upstream, long_prompt):
    # The client's body is ~100 bytes; the rendered system message alone is 28,000. At 1e-3 USD per
    # input byte, only the rendered size exceeds 1 USD.
    price_set(organisation=organisation, model="dev-small", actor=ACTOR, input_per_token=OUTPUT, output_per_token=0)
    key_budget(organisation, gateway["key"], "1")
    short = post(
        gateway,
        "chat/completions",
        {"model": "dev-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    )
    assert short.status_code == 200, short.text

    body = {"prompt": {"name": "long-brief", "label": "production", "variables": {"q": "hi"}}}
    assert len(json.dumps(body)) < 200
    refused = post(gateway, "chat/completions", body)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert dev_upstream.stats()["requests"] == 1  # only the short request reached it


# --- every attempt counts -----------------------------------------------------------------------


@pytest.fixture
def flaky_gateway(steward_server, organisation, dev_upstream, dev_upstream_b, api_key_factory, dear_prices):
    """`flaky` times out on its one deployment (the first dev upstream hangs for 3 s, its timeout
    is 0.5 s) and falls back to `dev-small` on the second dev upstream."""
    from tests.helpers import route_with_deployments

    route_with_deployments(organisation, "dev-small", [dev_upstream_b])
    route_with_deployments(
        organisation,
        "flaky",
        [{"api_base": dev_upstream.url, "timeout_seconds": 0.5}],
        fallbacks=["dev-small"],
    )
    dev_upstream.control(delay_ms=3000)
    key, secret = api_key_factory()
    return {"url": f"{steward_server.url}/v1", "key": key, "headers": {"Authorization": f"Bearer {secret}"}}


FLAKY = {"model": "flaky", "messages": [{"role": "user", "content": "hello " * 50}], "max_tokens": 200}


def _worst_case() -> Decimal:
    # Every byte of the body as sent an input token (+16), all 200 output tokens.
    return (len(json.dumps(FLAKY).encode()) + 16) * INPUT + 200 * OUTPUT


def test_retry_after_a_timeout_is_refused_when_the_budget_cannot_hold_it_too(
    flaky_gateway, organisation, dev_upstream, dev_upstream_b
):
    # Room for one attempt's worst case (~0.2 USD) but not two.
    key_budget(organisation, flaky_gateway["key"], "0.3")
    assert _worst_case() < Decimal("0.3") < 2 * _worst_case()
    response = post(flaky_gateway, "chat/completions", FLAKY)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert dev_upstream_b.stats()["requests"] == 0  # the retry was never sent

    # The timed-out attempt reached the provider: its prompt is charged (estimated), within budget.
    [line] = ledger_lines(response.headers["x-request-id"])
    assert line.attempt == 1 and line.basis == "estimated" and line.cost > 0 and line.prompt_tokens > 0
    spent, held = counters(organisation, "Hard")
    assert spent == line.cost == ledger_total(organisation) and held == 0
    assert spent <= Decimal("0.3")


def test_retry_after_a_timeout_holds_a_worst_case_of_its_own_and_all_attempts_are_charged(
    flaky_gateway, organisation, dev_upstream, dev_upstream_b
):
    key_budget(organisation, flaky_gateway["key"], "0.5")
    assert 2 * _worst_case() <= Decimal("0.5")
    response = post(flaky_gateway, "chat/completions", FLAKY)
    assert response.status_code == 200, response.text
    assert dev_upstream_b.stats()["requests"] == 1
    lines = ledger_lines(response.headers["x-request-id"])
    assert [(ln.attempt, ln.basis) for ln in lines] == [(1, "estimated"), (2, "priced")]
    assert all(ln.cost > 0 for ln in lines)
    spent, held = counters(organisation, "Hard")
    assert spent == sum(ln.cost for ln in lines) == ledger_total(organisation)
    assert held == 0 and spent <= Decimal("0.5")


def test_retry_after_a_timeout_stays_within_the_keys_cost_ceiling(
    flaky_gateway, organisation, dev_upstream, dev_upstream_b
):
    from billing.services import key_cost_ceiling_set

    # One attempt's worst case fits the ceiling, two do not: the retry could take the request past it.
    ceiling = (_worst_case() * Decimal("1.5")).quantize(Decimal("0.000001"))
    key_cost_ceiling_set(api_key=flaky_gateway["key"], actor=ACTOR, max_request_cost=ceiling)
    response = post(flaky_gateway, "chat/completions", FLAKY)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "cost_ceiling_exceeded" and "after an attempt that timed out" in error["message"]
    assert dev_upstream_b.stats()["requests"] == 0  # the retry was never sent

    key_cost_ceiling_set(api_key=flaky_gateway["key"], actor=ACTOR, max_request_cost=2 * ceiling)
    wait_until(lambda: post(flaky_gateway, "chat/completions", FLAKY).status_code == 200, timeout=10)
    assert dev_upstream_b.stats()["requests"] == 1


# --- unpriced models ----------------------------------------------------------------------------


def _legacy_unpriced_deployment(route, dev_upstream, model: str):
    """A deployment enabled before prices were required (or whose price litellm's map dropped)."""
    from proxy.models import Deployment
    from proxy.services import ROUTES_NAMESPACE

    deployment = Deployment.objects.create(route=route, name="legacy", model=model, api_base=dev_upstream.url)
    invalidate(ROUTES_NAMESPACE)
    return deployment


@pytest.fixture
def unpriced_gateway(steward_server, organisation, dev_upstream, api_key_factory):

    dev_upstream.upstream.models = (*dev_upstream.upstream.models, "retired-model")
    route = RouteFactory(organisation=organisation, name="retired")
    _legacy_unpriced_deployment(route, dev_upstream, "retired-model")
    key, secret = api_key_factory()
    yield {"url": f"{steward_server.url}/v1", "key": key, "headers": {"Authorization": f"Bearer {secret}"}}
    dev_upstream.upstream.models = tuple(m for m in dev_upstream.upstream.models if m != "retired-model")


RETIRED = {"model": "retired", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def test_unpriced_model_is_refused_where_a_hard_budget_applies(unpriced_gateway, organisation, dev_upstream):
    key_budget(organisation, unpriced_gateway["key"], "0.01")
    for _ in range(3):
        response = post(unpriced_gateway, "chat/completions", RETIRED)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "price_unknown" and error["param"] == "model"
        assert "retired-model" in error["message"] and error["model"] == "retired-model"
    assert dev_upstream.stats()["requests"] == 0
    drain_all()
    assert ledger_total(organisation) == 0


def test_unpriced_call_without_hard_budget_is_marked_unpriced(
    unpriced_gateway, organisation, dev_upstream, client, admin
):
    response = post(unpriced_gateway, "chat/completions", RETIRED)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    [line] = ledger_lines(request_id)
    assert line.basis == "no_price" and line.cost == 0 and line.completion_tokens > 0

    login(client, admin)
    page = client.get(reverse("proxy:request_log_list"))
    assert page.status_code == 200
    assert b"unpriced" in page.content
    detail = client.get(reverse("proxy:request_log_detail", args=[request_id]))
    assert b"unpriced" in detail.content and b"retired-model" in detail.content
    usage = client.get(reverse("billing:home"))
    assert b"unpriced" in usage.content


def test_models_page_lists_unpriced_models_with_a_way_to_price_them(unpriced_gateway, organisation, client, admin):
    login(client, admin)
    page = client.get(reverse("proxy:route_list"))
    assert page.status_code == 200
    text = page.content.decode()
    assert "retired-model" in text and "no price" in text.lower()
    assert reverse("billing:price_list") + "?model=retired-model" in text
    form = client.get(reverse("billing:price_list") + "?model=retired-model")
    assert b'value="retired-model"' in form.content  # the price form starts filled in


def test_unpriced_model_is_refused_under_a_cost_ceiling_alone(unpriced_gateway, organisation, dev_upstream):
    from billing.services import key_cost_ceiling_set

    key_cost_ceiling_set(api_key=unpriced_gateway["key"], actor=ACTOR, max_request_cost=Decimal("0.01"))
    response = post(unpriced_gateway, "chat/completions", RETIRED)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "price_unknown"
    assert dev_upstream.stats()["requests"] == 0


def test_models_page_unpriced_list_is_scoped_to_the_organisation(unpriced_gateway, client, outsider):
    login(client, outsider)
    page = client.get(reverse("proxy:route_list"))
    assert page.status_code == 200
    assert b"retired-model" not in page.content


def test_free_on_purpose_is_audited_and_serves_at_zero_under_a_hard_budget(
    unpriced_gateway, organisation, dev_upstream, client, admin
):
    key_budget(organisation, unpriced_gateway["key"], "0.01")
    login(client, admin)
    response = client.post(
        reverse("api-billing-prices"),
        data=json.dumps({"model": "retired-model", "input_per_token": "0", "output_per_token": "0", "free": True}),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["free"] is True
    event = AuditEvent.objects.filter(organisation_id=organisation.pk, action="price.changed").latest("id")
    assert event.after["model"] == "retired-model" and event.after["free"] is True

    served = post(unpriced_gateway, "chat/completions", RETIRED)
    assert served.status_code == 200, served.text
    [line] = ledger_lines(served.headers["x-request-id"])
    assert line.basis == "priced" and line.cost == 0


def test_free_price_refuses_non_zero_rates(client, admin):
    login(client, admin)
    response = client.post(
        reverse("api-billing-prices"),
        data=json.dumps({"model": "x-model", "input_per_token": "0.1", "output_per_token": "0", "free": True}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["param"] == "input_per_token"


# --- deployments of unpriced models ---------------------------------------------------------------


def _json(client, method: str, url: str, data=None):
    return getattr(client, method)(url, data=json.dumps(data), content_type="application/json")


def test_enabled_deployment_needs_a_price_for_its_model(client, admin, organisation):
    from proxy.models import Deployment

    route = RouteFactory(organisation=organisation, name="self-hosted")
    login(client, admin)
    create = reverse("api-deployment-create", args=[route.id])
    body = {"name": "gpu", "model": "my-llama", "api_base": "http://127.0.0.1:9/v1"}
    refused = _json(client, "post", create, body)
    assert refused.status_code == 400, refused.content
    error = refused.json()["error"]
    assert error["details"]["param"] == "model"
    assert "my-llama" in error["message"] and "price" in error["message"] and "free" in error["message"]
    assert not route.deployments.exists()

    # Disabled, it may wait for its price; enabling it is refused the same way.
    waiting = _json(client, "post", create, {**body, "enabled": False})
    assert waiting.status_code == 201, waiting.content
    deployment = Deployment.objects.get(route=route)
    update = reverse("api-deployment-update", args=[deployment.id])
    assert _json(client, "patch", update, {"enabled": True}).status_code == 400
    assert not Deployment.objects.get(pk=deployment.pk).enabled

    # A priced model (the global table's dev-large) may be enabled; switching to an unpriced one may not.
    assert _json(client, "patch", update, {"enabled": True, "model": "dev-large"}).status_code == 200
    switched = _json(client, "patch", update, {"model": "my-llama"})
    assert switched.status_code == 400 and switched.json()["error"]["details"]["param"] == "model"

    price_set(
        organisation=organisation, model="my-llama", actor=ACTOR, input_per_token=0, output_per_token=0, free=True
    )
    assert _json(client, "patch", update, {"model": "my-llama"}).status_code == 200


def test_deployment_price_check_is_per_organisation(client, admin, organisation, other_organisation):

    price_set(organisation=other_organisation, model="their-model", actor=ACTOR, input_per_token=0, output_per_token=0)
    route = RouteFactory(organisation=organisation, name="mine")
    login(client, admin)
    refused = _json(
        client,
        "post",
        reverse("api-deployment-create", args=[route.id]),
        {"name": "d", "model": "their-model", "api_base": "http://127.0.0.1:9/v1"},
    )
    assert refused.status_code == 400
