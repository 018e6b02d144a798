"""The playground's "Run": a version goes through the proxy pipeline in-process, as the playground key.

The pipeline reads routes and prompts on other threads, so these tests commit their rows
(transactional_db). The model is the development upstream over real HTTP.
"""

from decimal import Decimal

import pytest
from django.urls import reverse

from accounts.models import ApiKey
from audit.models import AuditEvent
from billing.models import UsageLine
from billing.services import budget_create, price_set
from proxy.invoke import PLAYGROUND_KEY_NAME
from proxy.models import RequestLog
from tests.browser import DESKTOP, sign_in
from tests.factories import PromptVersionFactory
from tests.helpers import ACTOR, log_of, login, playground_run, request_id_in_page, route_with_deployments

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def routed(organisation, dev_upstream):
    route, _ = route_with_deployments(organisation, "dev-small", [dev_upstream])
    return route


def test_run_goes_through_the_proxy_and_shows_output_tokens_cost_latency(
    client, organisation, prompt_engineer, prompt, routed, dev_upstream
):
    price_set(
        organisation=organisation,
        model="dev-small",
        actor=ACTOR,
        input_per_token=Decimal("0.000001"),
        output_per_token=Decimal("0.000002"),
    )
    version = PromptVersionFactory(prompt=prompt)
    login(client, prompt_engineer)

    response = playground_run(client, prompt, customer_name="Ada {{ 7*7 }}")

    assert response.status_code == 200
    page = response.content.decode()
    stats = dev_upstream.stats()
    assert stats["requests"] == 1
    sent = stats["last_request"]
    assert sent["model"] == "dev-small" and sent["temperature"] == 0.2
    # The rendered messages reached the model; the value stayed data, not a template.
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello Ada {{ 7*7 }}"},
    ]
    assert "Steward dev reply" in page

    request_id = request_id_in_page(page)
    log = log_of(request_id)
    key = ApiKey.objects.get(pk=log.api_key_id)
    assert key.name == PLAYGROUND_KEY_NAME and key.created_by is None and key.organisation_id == organisation.id
    assert log.prompt_version_id == version.id and log.status == "ok"
    assert log.prompt_tokens > 0 and log.completion_tokens > 0
    assert f'<span data-figure="prompt-tokens">{log.prompt_tokens}</span>' in page
    assert f'<span data-figure="completion-tokens">{log.completion_tokens}</span>' in page
    assert '<span data-figure="latency">' in page and " ms</span>" in page
    assert reverse("proxy:request_log_detail", args=[request_id]) in page
    # The cost shown is the one the usage ledger recorded for the request.
    line = UsageLine.objects.get(request_id=request_id)
    assert line.cost > 0 and line.api_key_id == key.id
    shown = page.split('data-figure="cost">', 1)[1].split("</td>", 1)[0]
    amount, currency = shown.split()[:2]
    assert Decimal(amount) == line.cost and currency == "USD"


def test_the_playground_key_is_created_once_by_the_system(client, organisation, prompt_engineer, admin, prompt, routed):
    PromptVersionFactory(prompt=prompt)
    login(client, prompt_engineer)
    first = request_id_in_page(playground_run(client, prompt, customer_name="a").content.decode())
    login(client, admin)
    second = request_id_in_page(playground_run(client, prompt, customer_name="b").content.decode())

    keys = ApiKey.objects.filter(organisation=organisation, name=PLAYGROUND_KEY_NAME)
    assert keys.count() == 1
    assert {log_of(first).api_key_id, log_of(second).api_key_id} == {keys.get().id}
    created = AuditEvent.objects.get(action="api_key.created", target_id=str(keys.get().id))
    assert created.actor_type == "system"


def test_missing_variable_is_shown_and_no_model_is_called(client, prompt_engineer, prompt, routed, dev_upstream):
    PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }} about {{ topic }}")
    login(client, prompt_engineer)

    page = playground_run(client, prompt).content.decode()

    assert 'role="alert"' in page
    assert "Missing variables: customer_name, topic" in page
    assert dev_upstream.stats()["requests"] == 0


def test_upstream_failure_is_shown_not_raised(client, prompt_engineer, prompt, routed, dev_upstream):
    PromptVersionFactory(prompt=prompt)
    dev_upstream.control(fail_status=500)
    login(client, prompt_engineer)

    response = playground_run(client, prompt, customer_name="Ada")

    assert response.status_code == 200
    page = response.content.decode()
    assert (
        'role="alert"' in page and "The model&#x27;s upstream failed: Upstream d0: injected failure from dev-a" in page
    )
    log = log_of(request_id_in_page(page))
    assert log.status == "error"


def test_an_exhausted_budget_is_shown_and_no_model_is_called(
    client, organisation, prompt_engineer, prompt, routed, dev_upstream
):
    price_set(
        organisation=organisation,
        model="dev-small",
        actor=ACTOR,
        input_per_token=Decimal("0.01"),
        output_per_token=Decimal("0.01"),
    )
    budget_create(organisation=organisation, actor=ACTOR, name="Tiny", scope="organisation", amount=Decimal("0.000001"))
    PromptVersionFactory(prompt=prompt, params={"max_tokens": 50})
    login(client, prompt_engineer)

    response = playground_run(client, prompt, customer_name="Ada")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'role="alert"' in page and "budget_exceeded" in page and "Tiny" in page
    assert dev_upstream.stats()["requests"] == 0


def test_a_model_without_route_names_it(client, prompt_engineer, prompt, routed, dev_upstream):
    PromptVersionFactory(prompt=prompt, model="nowhere-model")
    login(client, prompt_engineer)

    page = playground_run(client, prompt, customer_name="Ada").content.decode()

    models = reverse("proxy:route_list")
    assert f'No route for model <code>nowhere-model</code>: create one under <a href="{models}">Models</a>.' in page
    assert dev_upstream.stats()["requests"] == 0


def test_without_htmx_the_page_keeps_the_inputs(client, prompt_engineer, prompt, routed, dev_upstream):
    PromptVersionFactory(prompt=prompt)
    login(client, prompt_engineer)
    calls = dev_upstream.stats()["requests"]

    response = playground_run(client, prompt, htmx=False, customer_name="Grace Hopper")
    # POST-redirect-GET: the result is shown once on the version page, and a reload calls no model.
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "<h1" in page and "Grace Hopper</textarea>" in page and "Steward dev reply" in page
    reloaded = client.get(response["Location"]).content.decode()
    assert "<h1" in reloaded and "Steward dev reply" not in reloaded
    assert dev_upstream.stats()["requests"] == calls + 1


def test_viewer_is_forbidden_and_outsider_gets_404(client, viewer, outsider, prompt, routed, dev_upstream):
    PromptVersionFactory(prompt=prompt)
    login(client, viewer)
    page = client.get(reverse("registry:version_detail", args=[prompt.name, 1])).content.decode()
    assert 'id="playground-run"' not in page
    assert playground_run(client, prompt, customer_name="Ada").status_code == 403
    login(client, outsider)
    assert playground_run(client, prompt, customer_name="Ada").status_code == 404
    assert dev_upstream.stats()["requests"] == 0
    assert not RequestLog.objects.exists()


def test_run_under_the_asgi_server(client, steward_server, prompt_engineer, prompt, routed, dev_upstream):
    """The production path: Django's sync view inside uvicorn, whose request thread waits for the run."""
    import requests

    PromptVersionFactory(prompt=prompt)
    login(client, prompt_engineer)
    http = requests.Session()
    http.cookies.set("sessionid", client.cookies["sessionid"].value)
    page_url = steward_server.url + reverse("registry:version_detail", args=[prompt.name, 1])
    assert http.get(page_url, timeout=10).status_code == 200
    token = http.cookies["csrftoken"]

    response = http.post(
        steward_server.url + reverse("registry:version_run", args=[prompt.name, 1]),
        data={"var_customer_name": "Ada", "csrfmiddlewaretoken": token},
        headers={"HX-Request": "true", "X-CSRFToken": token, "Referer": page_url},
        timeout=20,
    )

    assert response.status_code == 200
    assert "Steward dev reply" in response.text
    assert dev_upstream.stats()["last_request"]["messages"][-1] == {"role": "user", "content": "Hello Ada"}


@pytest.mark.browser
def test_run_in_the_browser_swaps_the_result_and_keeps_inputs(
    steward_server, prompt_engineer, prompt, routed, dev_upstream, chromium
):
    """Real Chromium on the ASGI server: the Run button posts the playground's variables with htmx."""
    PromptVersionFactory(prompt=prompt)
    page = chromium.new_context(base_url=steward_server.url, viewport=DESKTOP).new_page()
    page.set_default_timeout(15_000)
    sign_in(page, prompt_engineer, reverse("registry:version_detail", args=[prompt.name, 1]))
    page.wait_for_selector("#playground-run")
    page.fill("#pg-customer_name", "Lin")
    page.click("#playground-run button")
    page.wait_for_selector("#playground-run-result pre.playground-output")
    assert "Steward dev reply" in page.inner_text("#playground-run-result")
    assert page.input_value("#pg-customer_name").strip() == "Lin"
    assert dev_upstream.stats()["last_request"]["messages"][-1] == {"role": "user", "content": "Hello Lin"}


def test_a_revoked_playground_key_is_replaced(client, organisation, prompt_engineer, prompt, routed):
    from accounts.services import api_key_revoke

    PromptVersionFactory(prompt=prompt)
    login(client, prompt_engineer)
    first = log_of(request_id_in_page(playground_run(client, prompt, customer_name="a").content.decode())).api_key_id
    api_key_revoke(api_key=ApiKey.objects.get(pk=first), actor=ACTOR)

    second = log_of(request_id_in_page(playground_run(client, prompt, customer_name="b").content.decode())).api_key_id

    assert second != first
    assert ApiKey.objects.filter(name=PLAYGROUND_KEY_NAME, revoked_at__isnull=True).get().id == second
