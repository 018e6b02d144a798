"""The billing forms pick prompts, versions, deployments and keys by name, never by a typed id,
and refuse (beside the field) anything the organisation does not own; budget shares are real."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import Budget, Price
from billing.services import budget_create, usage_lines_record
from tests.factories import DeploymentFactory, PromptFactory, RouteFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db

UPSTREAM = "http://127.0.0.1:9/v1"  # never called: the deployments only need to exist


def _error_beside(html: str, field_id: str) -> str:
    """The error text rendered beside the field (templates/partials/_field.html), or ""."""
    match = re.search(rf'id="{field_id}_error">([^<]*)<', html)
    return match.group(1) if match else ""


def _options(html: str, select_id: str) -> list[str]:
    select = re.search(rf'<select[^>]*id="{select_id}"[^>]*>(.*?)</select>', html, re.S)
    assert select, f"no select #{select_id}"
    return [label.strip() for label in re.findall(r"<option[^>]*>([^<]*)</option>", select.group(1))]


# --- usage filters: prompt by name, version by number within it --------------------------------


@pytest.fixture
def prompt_usage(organisation, other_organisation, record_factory):
    def line(org, prompt_id, version_id, name, number, model="dev-small"):
        return record_factory(
            organisation_id=org.pk,
            model=model,
            prompt_id=prompt_id,
            prompt_version_id=version_id,
            prompt_name=name,
            prompt_version_number=number,
        )

    usage_lines_record(
        records=[
            line(organisation, 501, 601, "summarise", 1),
            line(organisation, 501, 602, "summarise", 2, model="dev-large"),
            line(organisation, 502, 603, "classify", 7),
            line(other_organisation, 509, 609, "globex-secret", 1),
        ]
    )


def test_usage_filters_offer_prompts_by_name_and_the_chosen_prompts_versions(client, viewer, prompt_usage):
    login(client, viewer)
    html = client.get(reverse("billing:home")).content.decode()
    assert _options(html, "id_prompt") == ["All prompts", "classify", "summarise"]
    assert _options(html, "id_model") == ["All models", "dev-large", "dev-small"]
    assert _options(html, "id_prompt_version") == ["Choose a prompt first"]
    assert "Prompt id" not in html and "Version id" not in html

    html = client.get(reverse("billing:home"), {"prompt": 501, "breakdown": "model"}).content.decode()
    assert _options(html, "id_prompt_version") == ["All versions", "v2", "v1"]
    assert "<td>dev-large</td>" in html  # summarise's usage only

    response = client.get(reverse("billing:home"), {"prompt": 501, "prompt_version": 601, "breakdown": "model"})
    html = response.content.decode()
    assert "<td>dev-small</td>" in html and "<td>dev-large</td>" not in html
    assert _error_beside(html, "id_prompt_version") == ""


def test_usage_filters_refuse_another_prompts_version_and_another_organisations_prompt(client, viewer, prompt_usage):
    login(client, viewer)
    html = client.get(reverse("billing:home"), {"prompt": 502, "prompt_version": 601}).content.decode()
    assert _error_beside(html, "id_prompt_version") == "Choose a version of the chosen prompt."
    html = client.get(reverse("billing:home"), {"prompt": 509}).content.decode()
    assert _error_beside(html, "id_prompt") == "Choose a prompt this organisation&#x27;s usage names."
    assert "globex-secret" not in html


def test_usage_htmx_swap_carries_the_version_picker_of_the_new_prompt(client, viewer, prompt_usage):
    login(client, viewer)
    html = client.get(reverse("billing:home"), {"prompt": 502}, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in html and 'id="usage-filters"' in html
    assert _options(html, "id_prompt_version") == ["All versions", "v7"]


# --- budgets: prompt by name, no revoked key, errors beside the field --------------------------


def test_budget_for_a_prompt_picked_by_name(client, admin, organisation):
    prompt = PromptFactory(organisation=organisation, name="support-reply")
    login(client, admin)
    html = client.get(reverse("billing:budget_list")).content.decode()
    assert "support-reply" in _options(html, "id_prompt")
    response = client.post(
        reverse("billing:budget_list"),
        {"name": "Support", "scope": "prompt", "prompt": prompt.pk, "amount": "5", "period": "month"},
    )
    assert response.status_code == 302
    assert Budget.objects.get(name="Support").prompt_id == prompt.pk
    page = client.get(reverse("billing:budget_list")).content.decode()
    assert "Prompt: support-reply" in page


def test_budget_refuses_another_organisations_prompt_beside_the_field(client, admin, other_organisation):
    foreign = PromptFactory(organisation=other_organisation, name="globex-prompt")
    login(client, admin)
    response = client.post(
        reverse("billing:budget_list"),
        {"name": "Steal", "scope": "prompt", "prompt": foreign.pk, "amount": "5", "period": "month"},
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert _error_beside(html, "id_prompt") == "Choose a prompt of this organisation."
    assert "globex-prompt" not in html
    assert not Budget.objects.exists()


def test_budget_form_does_not_offer_or_accept_a_revoked_key(client, admin, api_key_factory, system_actor):
    from accounts.services import api_key_revoke

    api_key_factory(name="live-svc")
    gone, _ = api_key_factory(name="gone-svc")
    api_key_revoke(api_key=gone, actor=system_actor)
    login(client, admin)
    html = client.get(reverse("billing:budget_list")).content.decode()
    labels = _options(html, "id_api_key")
    assert any(label.startswith("live-svc") for label in labels)
    assert not any(label.startswith("gone-svc") for label in labels)
    response = client.post(
        reverse("billing:budget_list"),
        {"name": "Gone", "scope": "api_key", "api_key": gone.pk, "amount": "5", "period": "month"},
    )
    assert response.status_code == 400
    assert _error_beside(response.content.decode(), "id_api_key") == "Choose an active API key of this organisation."
    assert not Budget.objects.exists()


def test_budget_scope_without_its_target_errs_beside_that_field(client, admin):
    login(client, admin)
    response = client.post(
        reverse("billing:budget_list"), {"name": "T", "scope": "team", "amount": "1", "period": "month"}
    )
    assert _error_beside(response.content.decode(), "id_team") == "A team budget needs a team: choose one."


def test_budget_edit_errors_are_shown_beside_the_field_of_that_budget(client, admin, organisation, system_actor):
    budget = budget_create(
        organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("1")
    )
    login(client, admin)
    response = client.post(
        reverse("billing:budget_edit", args=[budget.pk]), {"name": "B", "amount": "-3", "period": "month"}
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert "greater than or equal to 0" in _error_beside(html, f"id_b{budget.pk}_amount")
    assert f'id="budget-edit-{budget.pk}" open' in html
    budget.refresh_from_db()
    assert budget.amount == Decimal("1")


# --- prices: deployment by "route / deployment" ------------------------------------------------


def test_price_for_a_deployment_picked_by_route_and_name(client, admin, organisation):
    route = RouteFactory(organisation=organisation, name="chat")
    deployment = DeploymentFactory(route=route, name="eu-west", model="dev-large", api_base=UPSTREAM)
    login(client, admin)
    html = client.get(reverse("billing:price_list")).content.decode()
    assert "chat / eu-west (dev-large)" in _options(html, "id_deployment")
    assert "Deployment id" not in html
    response = client.post(
        reverse("billing:price_list"),
        {"model": "dev-large", "deployment": deployment.pk, "input_per_million": "1", "output_per_million": "2"},
    )
    assert response.status_code == 302
    price = Price.objects.get(organisation=organisation, deployment_id=deployment.pk)
    assert price.model == "dev-large"
    page = client.get(reverse("billing:price_list"), {"q": "dev-large"}).content.decode()
    assert "<td>chat / eu-west</td>" in page


def test_price_refuses_another_organisations_deployment_and_a_model_it_does_not_serve(
    client, admin, organisation, other_organisation
):
    foreign = DeploymentFactory(
        route=RouteFactory(organisation=other_organisation, name="globex-route"), api_base=UPSTREAM
    )
    own = DeploymentFactory(
        route=RouteFactory(organisation=organisation, name="chat"), model="dev-large", api_base=UPSTREAM
    )
    login(client, admin)
    prices_before = Price.objects.filter(organisation=organisation).count()
    response = client.post(
        reverse("billing:price_list"),
        {"model": "dev-small", "deployment": foreign.pk, "input_per_million": "1", "output_per_million": "2"},
    )
    html = response.content.decode()
    assert response.status_code == 400
    assert _error_beside(html, "id_deployment") == "Choose a deployment of this organisation."
    assert "globex-route" not in html
    response = client.post(
        reverse("billing:price_list"),
        {"model": "dev-small", "deployment": own.pk, "input_per_million": "1", "output_per_million": "2"},
    )
    error = _error_beside(response.content.decode(), "id_deployment")
    assert error == "This deployment serves dev-large, not dev-small."
    assert Price.objects.filter(organisation=organisation).count() == prices_before


def test_price_service_errors_land_beside_their_field(client, admin):
    login(client, admin)
    response = client.post(
        reverse("billing:price_list"),
        {"model": "dev-small", "input_per_million": "1", "output_per_million": "2", "free": "on"},
    )
    assert "cannot have a input_per_token" in _error_beside(response.content.decode(), "id_input_per_million")


# --- budget shares past 100 % -------------------------------------------------------------------


def test_a_soft_budget_spent_twice_over_says_so(client, viewer, organisation, record_factory, system_actor):
    # dev-large: 10 in × 0.000003 + 5 out × 0.000015 = 0.000105 per call; twice is 198 % of 0.000106.
    usage_lines_record(records=[record_factory(model="dev-large") for _ in range(2)])
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Soft",
        scope="organisation",
        amount=Decimal("0.000106"),
        hard_limit=False,
        soft_threshold_percent=80,
    )
    login(client, viewer)
    html = client.get(reverse("billing:budget_list")).content.decode()
    row = html[html.index('data-budget="') :]
    assert '<small class="budget-percent">198%</small>' in row
    assert "over budget" in row
    assert 'style="width:100%' in row  # the bar stops at full width
    assert 'aria-valuetext="198% used, over budget"' in row
    assert "100%</small>" not in row
