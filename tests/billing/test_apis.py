"""The management API: usage numbers, a key's own spend, prices, budgets, settings."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.roles import Role
from billing.models import Budget, KeyCostCeiling
from billing.services import budget_create, usage_lines_record
from tests.helpers import login

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def usage(organisation, record_factory, api_key_factory):
    key, secret = api_key_factory(name="svc-a")
    other, _ = api_key_factory(name="svc-b")
    usage_lines_record(
        records=[record_factory(model="dev-small", api_key_id=key.pk) for _ in range(2)]
        + [record_factory(model="dev-large", api_key_id=other.pk)]
    )
    return {"key": key, "secret": secret, "other": other}


def test_usage_report_matches_the_page_numbers_as_decimal_strings(client, viewer, usage):
    login(client, viewer)
    body = client.get("/api/v1/billing/usage/", {"breakdown": "model"}).json()
    assert body["total"]["cost"] == "0.000130000000"  # 2 × 0.0000125 + 0.000105 (exact, a string)
    assert {r["label"]: r["cost"] for r in body["breakdown"]} == {
        "dev-large": "0.000105000000",
        "dev-small": "0.000025000000",
    }
    assert len(body["series"]) == 30


def test_a_key_reads_only_its_own_spend(client, usage, organisation, system_actor):
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="svc-a budget",
        scope="api_key",
        api_key_id=usage["key"].pk,
        amount=Decimal("0.0001"),
    )
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="svc-b budget",
        scope="api_key",
        api_key_id=usage["other"].pk,
        amount=Decimal("1"),
    )
    body = client.get("/api/v1/billing/spend/", **bearer(usage["secret"])).json()
    assert body["api_key_id"] == usage["key"].pk
    assert body["today"] == "0.000025000000" and body["requests_this_month"] == 2
    [budget] = body["budgets"]
    assert budget["name"] == "svc-a budget" and budget["spent"] == "0.000025000000" and budget["percent"] == 25
    # Asking for another key's spend still answers for its own.
    assert (
        client.get("/api/v1/billing/spend/", {"api_key_id": usage["other"].pk}, **bearer(usage["secret"])).json()[
            "api_key_id"
        ]
        == usage["key"].pk
    )
    # Its spend is all a key without roles may read of the management API (the usage report needs a role).
    assert client.get("/api/v1/billing/usage/", **bearer(usage["secret"])).status_code == 403


def test_spend_for_a_member_needs_a_key_of_the_organisation(client, viewer, outsider, usage):
    login(client, viewer)
    response = client.get("/api/v1/billing/spend/")
    assert response.status_code == 400 and response.json()["error"]["details"]["param"] == "api_key_id"
    assert (
        client.get("/api/v1/billing/spend/", {"api_key_id": usage["key"].pk}).json()["this_month"] == "0.000025000000"
    )
    client.logout()
    login(client, outsider)
    assert client.get("/api/v1/billing/spend/", {"api_key_id": usage["key"].pk}).status_code == 404


def test_admin_manages_budgets_and_prices_through_the_api(client, admin, organisation):
    login(client, admin)
    created = client.post(
        "/api/v1/billing/budgets/",
        {"name": "API", "scope": "organisation", "amount": "5.25", "period": "day"},
        content_type="application/json",
    )
    assert created.status_code == 201 and created.json()["amount"] == "5.250000000000"
    budget_id = created.json()["id"]
    patched = client.patch(f"/api/v1/billing/budgets/{budget_id}/", {"amount": "6"}, content_type="application/json")
    assert patched.json()["amount"] == "6.000000000000"
    [status] = client.get("/api/v1/billing/budgets/").json()
    assert (status["resets_at"] is not None and status["spent"] == "0E-12") or Decimal(status["spent"]) == 0
    assert client.delete(f"/api/v1/billing/budgets/{budget_id}/").status_code == 204
    assert not Budget.objects.exists()

    price = client.post(
        "/api/v1/billing/prices/",
        {"model": "dev-large", "input_per_token": "0.000004", "output_per_token": "0.00002"},
        content_type="application/json",
    )
    assert price.status_code == 201 and price.json()["scope"] == "organisation"
    assert any(p["model"] == "dev-large" for p in client.get("/api/v1/billing/prices/", {"model": "dev-large"}).json())
    bad = client.post(
        "/api/v1/billing/prices/",
        {"model": "x", "input_per_token": "-1", "output_per_token": "0"},
        content_type="application/json",
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_settings_and_key_ceiling_through_the_api(client, admin, api_key_factory):
    login(client, admin)
    key, _ = api_key_factory()
    body = client.put(
        "/api/v1/billing/settings/",
        {"webhook_url": "https://hooks.example.com/x", "webhook_secret": "0123456789abcdef!"},
        content_type="application/json",
    ).json()
    assert body == {
        "fail_open": False,
        "webhook_url": "https://hooks.example.com/x",
        "webhook_secret_set": True,
        "webhook_secret_unreadable": False,
    }
    response = client.put(
        f"/api/v1/billing/api-keys/{key.pk}/cost-ceiling/", {"max_request_cost": "0.5"}, content_type="application/json"
    )
    assert response.json()["max_request_cost"] == "0.500000000000"
    assert KeyCostCeiling.objects.get(api_key=key).max_request_cost == Decimal("0.5")


def test_a_secret_that_no_longer_decrypts_is_reported_as_unreadable_not_set(client, admin, settings):
    # (A key of its own: secrets stored under the SECRET_KEY-derived default stay readable after a key is set.)
    settings.STEWARD_ENCRYPTION_KEY = "the key the secret was stored under"
    login(client, admin)
    client.put(
        "/api/v1/billing/settings/",
        {"webhook_url": "https://hooks.example.com/x", "webhook_secret": "0123456789abcdef!"},
        content_type="application/json",
    )
    settings.STEWARD_ENCRYPTION_KEY = "a different key, as after a rotation without re-encrypting"
    body = client.get("/api/v1/billing/settings/").json()
    assert (body["webhook_secret_set"], body["webhook_secret_unreadable"]) == (False, True)
    page = client.get("/usage/settings/").content.decode()
    assert "unreadable: set it again" in page and '<span class="badge">set</span>' not in page
    client.put(
        "/api/v1/billing/settings/", {"webhook_secret": "a new secret of 16+ chars"}, content_type="application/json"
    )
    body = client.get("/api/v1/billing/settings/").json()
    assert (body["webhook_secret_set"], body["webhook_secret_unreadable"]) == (True, False)
    assert '<span class="badge">set</span>' in client.get("/usage/settings/").content.decode()


def test_roles_and_organisations_are_enforced(client, viewer, outsider, api_key_factory, organisation, system_actor):
    budget = budget_create(
        organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("1")
    )
    login(client, viewer)
    assert client.post("/api/v1/billing/budgets/", {}, content_type="application/json").status_code == 403
    assert client.delete(f"/api/v1/billing/budgets/{budget.pk}/").status_code == 403
    assert client.get("/api/v1/billing/settings/").status_code == 403
    client.logout()
    login(client, outsider)
    assert client.get(f"/api/v1/billing/budgets/{budget.pk}/").status_code == 404
    assert client.delete(f"/api/v1/billing/budgets/{budget.pk}/").status_code == 404
    # A key without the admin role sees no other key's budget; one without any role sees no budget at all.
    _, secret = api_key_factory(roles=[Role.VIEWER.value])
    client.logout()
    assert client.get(f"/api/v1/billing/budgets/{budget.pk}/", **bearer(secret)).status_code == 404
    _, proxy_only_secret = api_key_factory(roles=[])
    assert client.get(f"/api/v1/billing/budgets/{budget.pk}/", **bearer(proxy_only_secret)).status_code == 403
    _, admin_secret = api_key_factory(roles=[Role.ADMIN.value])
    assert client.get(f"/api/v1/billing/budgets/{budget.pk}/", **bearer(admin_secret)).status_code == 200
