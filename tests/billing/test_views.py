"""The usage page, CSV export, budgets, prices and settings pages."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from billing.models import BillingSettings, Budget, Price
from billing.services import budget_create, usage_lines_record
from tests.helpers import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def seeded(organisation, record_factory, api_key_factory, system_actor):
    from accounts.services import team_create

    team = team_create(organisation=organisation, name="Search", actor=system_actor)
    key, _ = api_key_factory(name="search-svc", team=team)
    other, _ = api_key_factory(name="batch-svc")
    usage_lines_record(
        records=[record_factory(model="dev-large", api_key_id=key.pk, team_id=team.pk) for _ in range(3)]
        + [record_factory(model="dev-small", api_key_id=other.pk)]
    )
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Search monthly",
        scope="team",
        team_id=team.pk,
        amount=Decimal("0.0002"),
        soft_threshold_percent=50,
    )
    return {"team": team, "key": key, "other": other}


def test_usage_page_shows_chart_breakdown_spenders_budgets_and_banner(client, viewer, seeded):
    login(client, viewer)
    response = client.get(reverse("billing:home"))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<svg class="chart cost"' in html and 'class="bar"' in html
    assert "dev-large" in html and "dev-small" in html
    assert "search-svc" in html  # top spender
    assert "Search monthly" in html and 'class="budget-bar over"' in html
    # 3 × dev-large(10 in, 5 out) = 0.000315 > 50 % of 0.0002: the banner shows, with the real share.
    assert 'data-budget-alert="' in html
    assert "has used 157% of" in html


def test_usage_page_filters_by_key_and_renders_htmx_partial(client, viewer, seeded):
    login(client, viewer)
    response = client.get(
        reverse("billing:home"), {"api_key": seeded["other"].pk, "breakdown": "api_key"}, HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert "<html" not in html
    report = html[html.index('id="usage-report"') :]
    assert "batch-svc" in report and "dev-large" not in report


def test_usage_page_rejects_a_reversed_date_range(client, viewer, seeded):
    login(client, viewer)
    response = client.get(reverse("billing:home"), {"date_from": "2026-05-02", "date_to": "2026-05-01"})
    assert response.status_code == 200 and "must not be after" in response.content.decode()


def test_csv_export_of_each_view(client, viewer, seeded):
    login(client, viewer)
    rows = list(csv.reader(io.StringIO(client.get(reverse("billing:export"), {"view": "breakdown"}).content.decode())))
    assert rows[0] == ["model", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
    by_model = {r[0]: r for r in rows[1:]}
    assert Decimal(by_model["dev-large"][4]) == 3 * (10 * Decimal("0.000003") + 5 * Decimal("0.000015"))
    assert Decimal(by_model["total"][4]) == Decimal("0.000315") + Decimal("0.0000125")
    daily = list(csv.reader(io.StringIO(client.get(reverse("billing:export")).content.decode())))
    assert daily[0][0] == "day" and len(daily) == 1 + 30 + 1
    budgets = list(csv.reader(io.StringIO(client.get(reverse("billing:export"), {"view": "budgets"}).content.decode())))
    assert budgets[1][0] == "Search monthly"


def test_admin_creates_edits_and_deletes_a_budget(client, admin, organisation):
    login(client, admin)
    response = client.post(
        reverse("billing:budget_list"),
        {"name": "Org", "scope": "organisation", "amount": "12.5", "period": "week", "hard_limit": "on"},
    )
    assert response.status_code == 302
    budget = Budget.objects.get(organisation=organisation)
    assert (budget.amount, budget.period, budget.hard_limit) == (Decimal("12.5"), "week", True)
    client.post(reverse("billing:budget_edit", args=[budget.pk]), {"name": "Org", "amount": "20", "period": "month"})
    budget.refresh_from_db()
    assert (budget.amount, budget.hard_limit) == (Decimal("20"), False)
    client.post(reverse("billing:budget_delete", args=[budget.pk]))
    assert not Budget.objects.exists()
    actions = set(AuditEvent.objects.filter(organisation_id=organisation.pk).values_list("action", flat=True))
    assert {"budget.created", "budget.updated", "budget.deleted"} <= actions


def test_budget_form_errors_are_shown(client, admin):
    login(client, admin)
    response = client.post(
        reverse("billing:budget_list"), {"name": "T", "scope": "team", "amount": "1", "period": "month"}
    )
    assert response.status_code == 400 and "needs a team" in response.content.decode()


def test_admin_sets_a_price_per_million_exactly(client, admin, organisation):
    login(client, admin)
    response = client.post(
        reverse("billing:price_list"), {"model": "dev-small", "input_per_million": "0.7", "output_per_million": "2.1"}
    )
    assert response.status_code == 302
    price = Price.objects.get(organisation=organisation)
    assert price.input_per_token == Decimal("0.0000007") and price.output_per_token == Decimal("0.0000021")
    assert AuditEvent.objects.filter(action="price.changed").exists()
    page = client.get(reverse("billing:price_list"), {"q": "dev-small"}).content.decode()
    assert "0.7" in page and "override" in page


def test_settings_fail_open_is_audited(client, admin, organisation):
    login(client, admin)
    assert client.get(reverse("billing:settings")).status_code == 200
    client.post(reverse("billing:settings"), {"fail_open": "on"})
    assert BillingSettings.objects.get(organisation=organisation).fail_open is True
    assert AuditEvent.objects.filter(action="budget.fail_mode_changed").exists()


def test_member_without_admin_role_cannot_change_budgets_prices_or_settings(client, viewer, organisation, system_actor):
    login(client, viewer)
    budget = budget_create(
        organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("1")
    )
    assert client.post(reverse("billing:budget_list"), {"name": "X"}).status_code == 403
    assert client.post(reverse("billing:price_list"), {"model": "x"}).status_code == 403
    assert client.post(reverse("billing:budget_delete", args=[budget.pk])).status_code == 403
    assert client.get(reverse("billing:settings")).status_code == 403
    assert Budget.objects.count() == 1


def test_outsider_gets_404_for_another_organisations_budget(client, outsider, organisation, system_actor):
    budget = budget_create(
        organisation=organisation, actor=system_actor, name="B", scope="organisation", amount=Decimal("1")
    )
    login(client, outsider)
    assert client.post(reverse("billing:budget_delete", args=[budget.pk])).status_code == 404
    assert client.post(reverse("billing:budget_edit", args=[budget.pk]), {"name": "x"}).status_code == 404
    # Their usage page shows only their own (empty) organisation.
    assert "No budgets yet" in client.get(reverse("billing:home")).content.decode()


def test_breakdown_by_prompt_version_names_the_version_from_the_ledger(client, viewer, organisation, record_factory):
    """The names come from the ledger (as the proxy recorded them), not the registry: this prompt
    no longer exists there, and a renamed one shows its latest recorded name."""
    yesterday = timezone.now() - dt.timedelta(days=1)
    usage_lines_record(
        records=[
            record_factory(prompt_id=9001, prompt_version_id=9002, prompt_name="summarise", prompt_version_number=3),
            record_factory(prompt_id=9001, prompt_version_id=9003, prompt_name="digest", prompt_version_number=4),
            record_factory(
                prompt_id=9001,
                prompt_version_id=9002,
                prompt_name="summarise-old",
                prompt_version_number=3,
                started_at=yesterday,
            ),
        ]
    )
    login(client, viewer)
    html = client.get(reverse("billing:home"), {"breakdown": "prompt_version"}).content.decode()
    assert "<td>summarise v3</td>" in html
    assert "<td>digest v4</td>" in html
    assert "summarise-old" not in html
    html = client.get(reverse("billing:home"), {"breakdown": "prompt", "prompt": 9001}).content.decode()
    assert "<td>digest</td>" in html or "<td>summarise</td>" in html
    assert "summarise-old" not in html


def test_csv_cells_cannot_become_spreadsheet_formulas(client, viewer, organisation, system_actor):
    budget_create(
        organisation=organisation, actor=system_actor, name="=HYPERLINK(1)", scope="organisation", amount=Decimal("1")
    )
    login(client, viewer)
    rows = list(csv.reader(io.StringIO(client.get(reverse("billing:export"), {"view": "budgets"}).content.decode())))
    assert rows[1][0] == "'=HYPERLINK(1)"
