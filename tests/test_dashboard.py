"""The dashboard at "/" (config/dashboard.py): what each role sees, empty states, figures that agree
with the pages and API behind them, and no other organisation's data.

Data is made through the apps' services (ledger lines as the proxy's log consumer hands them over,
held moderation items as the safety stage holds them, promotions as a prompt engineer asks); the
request log and an evaluation run's end state are written as their consumers write them.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.roles import Role
from billing.services import budget_create
from config.dashboard import usd
from tests.dashboard_data import eval_run, item_held, ledger_spend, promotion_pending, request_logged
from tests.factories import PersonaFactory
from tests.helpers import ACTOR, login

pytestmark = pytest.mark.django_db

PANELS = ("panel-spend", "panel-requests", "panel-health", "panel-promotions", "panel-moderation", "panel-evals")


def _page(client, persona) -> str:
    login(client, persona)
    response = client.get(reverse("core:home"))
    assert response.status_code == 200
    return response.content.decode()


def _panels(html: str) -> set[str]:
    return {p for p in PANELS if f'id="{p}"' in html}


def _figure(html: str, name: str) -> str:
    found = re.search(rf'data-figure="{name}"[^>]*>([^<]*)<', html)
    assert found, f"no figure {name}"
    return found.group(1).strip()


def _figure_value(html: str, name: str) -> str:
    found = re.search(rf'data-figure="{name}" data-value="([^"]*)"', html)
    assert found, f"no figure {name}"
    return found.group(1)


# --- who sees what --------------------------------------------------------------------------------


def test_anonymous_callers_are_sent_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith(reverse("accounts:login"))


def test_each_role_sees_its_panels(client, organisation, admin, prompt_engineer, reviewer, viewer):
    assert _panels(_page(client, viewer)) == {"panel-spend", "panel-requests", "panel-health"}
    assert _panels(_page(client, reviewer)) == {"panel-spend", "panel-requests", "panel-health", "panel-moderation"}
    assert _panels(_page(client, prompt_engineer)) == {
        "panel-spend", "panel-requests", "panel-health", "panel-promotions", "panel-evals",
    }  # fmt: skip
    assert _panels(_page(client, admin)) == set(PANELS)


def test_panels_link_to_the_pages_behind_them(client, admin):
    html = _page(client, admin)
    for name in ("billing:home", "proxy:request_log_list", "proxy:route_list", "registry:prompt_list", "safety:home",
                 "evals:home"):  # fmt: skip
        assert f'href="{reverse(name)}' in html, name
    # The spend panel opens the usage page on this month.
    today = timezone.now().date()
    assert f"date_from={today.replace(day=1).isoformat()}&amp;date_to={today.isoformat()}" in html


def test_a_member_without_a_role_is_told_so_rather_than_refused(client, organisation):
    nobody = PersonaFactory(username="nora", organisation=organisation, roles=[])
    html = _page(client, nobody)
    assert "You hold no role in Acme" in html
    assert not _panels(html)


# --- empty states ----------------------------------------------------------------------------------


def test_an_admin_with_no_data_is_shown_where_to_start(client, admin):
    html = _page(client, admin)
    assert _figure(html, "spend-today") == "$0.00" and _figure(html, "spend-month") == "$0.00"
    budgets = reverse("billing:budget_list")
    assert "No budgets yet" in html and f'<a id="panel-budgets-link" href="{budgets}">set one</a>' in html
    assert "No requests in the last 24 hours" in html and reverse("accounts:api_key_list") in html
    assert "No deployments yet" in html and reverse("proxy:route_create") in html
    assert "No promotions waiting" in html
    assert "The queue is empty" in html
    assert "Nothing running, failed or regressed" in html


def test_a_viewer_with_no_data_gets_empty_states_without_admin_links(client, viewer):
    html = _page(client, viewer)
    assert "No budgets yet. An admin can set one." in html
    assert reverse("billing:budget_list") not in html
    assert reverse("accounts:api_key_list") not in html and reverse("proxy:route_create") not in html


# --- figures ------------------------------------------------------------------------------------------


def test_spend_matches_the_usage_api_today_and_this_month(client, organisation, viewer):
    now = timezone.now()
    ledger_spend(organisation, n=3)  # 3 × (400 × 3e-6 + 900 × 15e-6) = 0.0441
    earlier = now - dt.timedelta(days=1)  # 1000 × 0.5e-6 + 1000 × 1.5e-6 = 0.002, below
    same_month = earlier.date().month == now.date().month
    ledger_spend(
        organisation, model="dev-small", prompt_tokens=1000, completion_tokens=1000, started_at=earlier
    )  # 0.002
    html = _page(client, viewer)
    assert _figure_value(html, "spend-today") == "0.044100000000"
    assert _figure(html, "spend-today") == "$0.0441"
    assert _figure(html, "spend-month") == ("$0.0461" if same_month else "$0.0441")
    today = timezone.now().date()
    api = client.get(
        reverse("api-billing-usage"), {"date_from": today.replace(day=1).isoformat(), "date_to": today.isoformat()}
    ).json()
    assert Decimal(_figure_value(html, "spend-month")) == Decimal(api["total"]["cost"])
    assert Decimal(_figure_value(html, "spend-today")) == Decimal(api["series"][-1]["cost"])


def test_a_budget_past_its_amount_shows_the_real_percentage(client, organisation, admin):
    budget_create(organisation=organisation, actor=ACTOR, name="Org monthly", scope="organisation",
                  amount=Decimal("0.0225"), hard_limit=False)  # fmt: skip
    budget_create(organisation=organisation, actor=ACTOR, name="Roomy", scope="organisation", amount=Decimal("10"),
                  soft_threshold_percent=80)  # fmt: skip
    ledger_spend(organisation, n=3)  # 0.0441 of 0.0225: 196 %
    html = _page(client, admin)
    budgets = re.findall(r'<li data-budget="\d+">.*?</li>', html, re.S)
    assert "Org monthly" in budgets[0] and "Roomy" in budgets[1]  # fullest first
    assert '<span class="badge error" data-figure="budget-percent">196%</span>' in budgets[0]
    assert "$0.0441 of $0.0225" in budgets[0] and "soft: calls still pass" in budgets[0]
    assert 'style="width:100%"' in budgets[0]  # the bar stops at its end; the text says how far past
    assert '<span class="badge ok" data-figure="budget-percent">0%</span>' in budgets[1]


def test_requests_and_error_rate_cover_the_last_24_hours(client, organisation, viewer):
    for _ in range(37):
        request_logged(organisation)
    request_logged(organisation, status="error")
    request_logged(organisation, status="error")
    request_logged(organisation, status="rejected")
    request_logged(organisation, status="error", started_at=timezone.now() - dt.timedelta(hours=25))  # too old to count
    html = _page(client, viewer)
    assert _figure(html, "requests-total") == "40"
    assert _figure(html, "error-rate") == "5.0%"
    assert f'href="{reverse("proxy:request_log_list")}?status=error">2 errors</a>' in html
    assert "1 rejected" in html


def test_a_deployment_that_fails_its_health_check_is_shown_down(client, organisation, viewer, settings):
    from proxy.health import deployments_check_all
    from tests.helpers import free_port, route_with_deployments

    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    route, _ = route_with_deployments(
        organisation, "chat", [{"api_base": f"http://127.0.0.1:{free_port()}/v1", "name": "primary"}]
    )
    route_with_deployments(organisation, "embed", [{"api_base": "http://127.0.0.1:9/v1", "name": "spare"}])
    html = _page(client, viewer)
    # Never checked: unknown, not healthy.
    assert "2 unknown" in html and 'data-figure="health-down"' not in html
    deployments_check_all(timeout=1)  # nothing listens on either port: both circuits open
    html = _page(client, viewer)
    assert _figure(html, "health-down") == "2 down"
    assert f'href="{reverse("proxy:route_detail", args=[route.id])}">chat</a> / primary' in html
    assert ">down<" in html


def test_a_reviewer_sees_the_queue_head_with_overdue_items(client, organisation, reviewer):
    urgent = item_held(organisation, policy_name="pii-hold", priority=1, sla_seconds=1)
    item_held(organisation, policy_name="toxicity", priority=3)
    from safety.models import ModerationItem

    ModerationItem.objects.filter(pk=urgent.pk).update(deadline=timezone.now() - dt.timedelta(minutes=5))
    html = _page(client, reviewer)
    assert _figure(html, "moderation-depth") == "2"
    assert "1 past deadline" in html
    assert html.index(urgent.public_id) < html.index("toxicity")  # most urgent first
    assert reverse("safety:item_detail", args=[urgent.public_id]) in html
    assert "call me at" not in html  # the held text stays on the item page


def test_a_prompt_engineer_sees_pending_promotions_and_runs_needing_a_look(
    client, organisation, prompt_engineer, second_prompt_engineer
):
    promotion = promotion_pending(organisation, second_prompt_engineer)
    failed = eval_run(organisation, prompt_name="summarise", status="failed")
    regressed = eval_run(organisation, prompt_name="classify", status="completed", verdict="regressed")
    eval_run(organisation, prompt_name="translate", status="completed", verdict="improved")
    html = _page(client, prompt_engineer)
    assert _figure(html, "promotions-pending") == "1"
    prompt_page = reverse("registry:prompt_detail", args=["support-reply"])
    assert f'href="{prompt_page}">support-reply</a>: production → v2' in html
    assert promotion.requested_by_label in html
    assert reverse("evals:run_detail", args=[failed.pk]) in html
    assert reverse("evals:run_detail", args=[regressed.pk]) in html
    assert "1 failed" in html and _figure(html, "evals-regressed") == "1 regressed"
    assert "translate" not in html  # an improvement needs nobody


def test_a_run_that_failed_long_ago_no_longer_asks_for_attention(client, organisation, prompt_engineer):
    from evals.models import Run

    old = eval_run(organisation, status="failed")
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=8))
    html = _page(client, prompt_engineer)
    assert "Nothing running, failed or regressed in the last 7 days" in html


def test_runs_needing_attention_respects_an_api_keys_prompts(organisation):
    from evals.selectors import runs_needing_attention

    eval_run(organisation, prompt_name="summarise", status="failed")
    eval_run(organisation, prompt_name="classify", status="failed")
    since = timezone.now() - dt.timedelta(days=7)
    assert runs_needing_attention(organisation=organisation, since=since).failed_count == 2
    confined = runs_needing_attention(organisation=organisation, since=since, prompt_names=["classify"])
    assert [r.prompt_name for r in confined.failed] == ["classify"] and confined.failed_count == 1


# --- tenancy -----------------------------------------------------------------------------------------


def test_another_organisations_data_never_appears(client, organisation, other_organisation, owner, outsider):
    from tests.helpers import route_with_deployments

    ledger_spend(other_organisation, n=5)
    budget_create(organisation=other_organisation, actor=ACTOR, name="Globex secret budget", scope="organisation",
                  amount=Decimal("1"))  # fmt: skip
    for status in ("ok", "error", "error"):
        request_logged(other_organisation, status=status)
    route_with_deployments(other_organisation, "globex-route", [{"api_base": "http://127.0.0.1:9/v1"}])
    item_held(other_organisation, policy_name="globex-policy")
    globex_engineer = PersonaFactory(username="gina", organisation=other_organisation, roles=[Role.PROMPT_ENGINEER])
    promotion_pending(other_organisation, globex_engineer, name="globex-prompt")
    eval_run(other_organisation, prompt_name="globex-run", status="failed")

    html = _page(client, owner)  # every role in Acme, which has nothing
    assert _figure(html, "spend-today") == "$0.00"
    for foreign in ("Globex secret budget", "globex-route", "globex-policy", "globex-prompt", "globex-run"):
        assert foreign not in html
    assert "No requests in the last 24 hours" in html and "No deployments yet" in html
    assert "The queue is empty" in html and "No promotions waiting" in html

    # And Globex's own member sees Globex's figures, not Acme's emptiness.
    theirs = _page(client, outsider)
    assert _figure(theirs, "spend-today") == usd(Decimal("0.0735"))
    assert _figure(theirs, "requests-total") == "3" and "globex-policy" in theirs and "globex-prompt" in theirs


# --- refresh -------------------------------------------------------------------------------------------


def test_the_30_second_refresh_gets_the_panels_alone(client, viewer):
    login(client, viewer)
    page = client.get("/").content.decode()
    assert 'hx-trigger="every 30s' in page and 'id="dashboard-panels"' in page
    partial = client.get("/", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="dashboard-panels").content.decode()
    assert "<html" not in partial and 'id="panel-spend"' in partial and 'id="dashboard-panels"' not in partial
    # Every link in the swapped panels has an id, so steward.js can give focus back after the swap.
    links = re.findall(r"<a\b[^>]*>", partial)
    assert links and all(" id=" in link for link in links)


def test_usd_keeps_fractions_of_a_cent_visible():
    assert usd(Decimal("0")) == "$0.00"
    assert usd(Decimal("0.044100000000")) == "$0.0441"
    assert usd(Decimal("0.000012")) == "$0.000012"
    assert usd(Decimal("0.5")) == "$0.50"
    assert usd(Decimal("1234.5")) == "$1,234.50"


def test_the_number_of_queries_does_not_grow_with_the_data(client, organisation, admin, prompt_engineer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/").status_code == 200
        return len(captured)

    login(client, admin)

    def more(tag: str, n: int) -> None:
        ledger_spend(organisation, n=n)
        for i in range(n):
            request_logged(organisation, status="error" if i % 2 else "ok")
            item_held(organisation, policy_name=f"policy-{tag}-{i}")
        for i in range(2):
            promotion_pending(organisation, prompt_engineer, name=f"prompt-{tag}-{i}")
            eval_run(organisation, prompt_name=f"run-{tag}-{i}", status="failed")

    more("a", 2)
    few = queries()
    more("b", 8)
    assert queries() == few


def test_a_long_list_shows_its_count_and_the_newest_few(client, organisation, prompt_engineer, second_prompt_engineer):
    for i in range(7):
        promotion_pending(organisation, second_prompt_engineer, name=f"prompt-{i}")
    html = _page(client, prompt_engineer)
    assert _figure(html, "promotions-pending") == "7"
    listed = re.findall(r'id="panel-promotion-\d+" href="[^"]+">(prompt-\d)<', html)
    assert listed == ["prompt-6", "prompt-5", "prompt-4", "prompt-3", "prompt-2"]
