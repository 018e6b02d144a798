"""Revoking the playground's system key never lifts the limits an admin put on it: the key that
replaces it carries them over (scopes, rate limits, cost ceiling, its budgets), audited."""

from decimal import Decimal

import pytest

from accounts.models import ApiKey
from accounts.services import api_key_revoke
from audit.models import AuditEvent
from billing.models import Budget, KeyCostCeiling
from billing.services import budget_create, key_cost_ceiling_set
from proxy.invoke import PLAYGROUND_KEY_NAME
from tests.factories import PromptVersionFactory
from tests.helpers import ACTOR, log_of, login, playground_run, request_id_in_page, route_with_deployments

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_re_created_playground_key_keeps_the_limits_of_the_revoked_one(
    client, organisation, prompt_engineer, prompt, dev_upstream
):
    route_with_deployments(organisation, "dev-small", [dev_upstream])
    PromptVersionFactory(prompt=prompt)
    login(client, prompt_engineer)
    first_id = log_of(request_id_in_page(playground_run(client, prompt, customer_name="a").content.decode())).api_key_id
    # An admin confines the playground key (as in the Django admin) and caps its cost.
    ApiKey.objects.filter(pk=first_id).update(
        allowed_models=["dev-large"], rpm_limit=7, tpm_limit=7000, max_in_flight=2, overridable_params=["temperature"]
    )
    first = ApiKey.objects.get(pk=first_id)
    key_cost_ceiling_set(api_key=first, actor=ACTOR, max_request_cost=Decimal("0.01"))
    budget_create(
        organisation=organisation, actor=ACTOR, name="playground cap", scope="api_key", api_key_id=first_id,
        amount=Decimal("5"), hard_limit=True,
    )  # fmt: skip
    api_key_revoke(api_key=first, actor=ACTOR)
    requests_before = dev_upstream.stats()["requests"]

    page = playground_run(client, prompt, customer_name="b").content.decode()

    second = ApiKey.objects.get(organisation=organisation, name=PLAYGROUND_KEY_NAME, revoked_at__isnull=True)
    assert second.id != first_id
    # The model restriction still holds: the run is refused before any upstream call.
    assert log_of(request_id_in_page(page)).api_key_id == second.id
    assert log_of(request_id_in_page(page)).status != "ok"
    assert dev_upstream.stats()["requests"] == requests_before
    assert (second.allowed_models, second.rpm_limit, second.tpm_limit, second.max_in_flight) == (
        ["dev-large"], 7, 7000, 2,
    )  # fmt: skip
    assert second.overridable_params == ["temperature"]
    assert KeyCostCeiling.objects.get(api_key=second).max_request_cost == Decimal("0.01")
    [budget] = Budget.objects.filter(api_key=second)
    assert (budget.amount, budget.hard_limit, budget.scope) == (Decimal("5"), True, "api_key")
    carried = AuditEvent.objects.get(
        action="api_key.updated", target_id=str(second.id), after__carried_over_from=first_id
    )
    assert carried.actor_type == "system" and carried.after["rpm_limit"] == 7
    assert Decimal(carried.after["max_request_cost"]) == Decimal("0.01") and carried.after["budgets"] == [budget.id]
