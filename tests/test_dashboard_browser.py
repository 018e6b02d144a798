"""The dashboard in real headless Chromium: its spend figures agree with the usage API called with
the same organisation's API key, before and after the panels refresh; and the demo dashboard with every
panel (saved as docs/screenshots/dashboard.png with STEWARD_SCREENSHOTS=1)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import requests
from django.utils import timezone

from billing.services import budget_create
from config.dashboard import usd
from tests.browser import screenshot
from tests.dashboard_data import eval_run, item_held, ledger_spend, promotion_pending
from tests.helpers import ACTOR, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _usage_api(live_server, secret: str) -> dict:
    today = timezone.now().date()
    response = requests.get(
        f"{live_server.url}/api/v1/billing/usage/",
        params={"date_from": today.replace(day=1).isoformat(), "date_to": today.isoformat()},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _figures(page) -> dict[str, tuple[str, Decimal]]:
    """What the page shows for spend: (text, exact value) for today and this month."""
    out = {}
    for name in ("spend-today", "spend-month"):
        figure = page.locator(f'[data-figure="{name}"]')
        out[name] = (figure.inner_text().strip(), Decimal(figure.get_attribute("data-value")))
    return out


def test_the_dashboards_spend_is_the_usage_apis(
    browser_open, live_server, organisation, other_organisation, admin, api_key_factory
):
    now = timezone.now()
    ledger_spend(organisation, n=4)  # 4 × (400 × 3e-6 + 900 × 15e-6) = 0.0588 today
    yesterday = now - dt.timedelta(days=1)
    ledger_spend(organisation, model="dev-small", prompt_tokens=2000, completion_tokens=1000, started_at=yesterday)
    ledger_spend(other_organisation, n=9)  # another organisation's spend counts nowhere here
    _, secret = api_key_factory(name="reporting", roles=["admin"])

    page = browser_open(admin, next_path="/")
    shown = _figures(page)
    api = _usage_api(live_server, secret)
    assert api["series"][-1]["label"] == now.date().isoformat()
    assert shown["spend-today"] == (usd(Decimal(api["series"][-1]["cost"])), Decimal(api["series"][-1]["cost"]))
    assert shown["spend-month"] == (usd(Decimal(api["total"]["cost"])), Decimal(api["total"]["cost"]))
    assert shown["spend-today"][0] == "$0.0588"
    # Yesterday's $0.0025 is this month's too, unless today is the first.
    assert shown["spend-month"][0] == ("$0.0613" if yesterday.month == now.month else "$0.0588")
    panel = page.locator("#panel-spend")
    assert panel.is_visible() and panel.bounding_box()["width"] > 250

    # New spend arrives; the panels' refresh (htmx, as its 30-second poll does) shows it, still the API's numbers.
    ledger_spend(organisation, n=1)
    page.evaluate("htmx.ajax('GET', '/', {target: '#dashboard-panels', swap: 'innerHTML'})")
    wait_until(lambda: page.locator('[data-figure="spend-today"]').inner_text().strip() == "$0.0735", timeout=10)
    shown = _figures(page)
    api = _usage_api(live_server, secret)
    assert shown["spend-today"][1] == Decimal(api["series"][-1]["cost"]) == Decimal("0.0735")
    assert shown["spend-month"][1] == Decimal(api["total"]["cost"])
    assert page.locator("#dashboard-panels > .cards").count() == 1  # the panels alone were swapped in, once


# --- the README's screenshot -------------------------------------------------------------------------


def _demo_data(organisation, *, engineer, dev_upstream, dev_upstream_b, settings):
    """A month of traffic on a small team's Steward: spend, budgets (one past its amount), requests with
    a few errors, two healthy deployments and one down, promotions, held items and runs to look at."""
    from proxy.health import deployments_check_all
    from proxy.models import RequestLog
    from registry.models import PromotionRequest
    from safety.models import ModerationItem
    from tests.helpers import free_port, route_with_deployments

    now = timezone.now()
    today = now.date()
    for days_ago in range(today.day):
        when = now - dt.timedelta(days=days_ago, hours=1)
        ledger_spend(
            organisation,
            model="dev-large",
            prompt_tokens=180_000,
            completion_tokens=30_000,
            started_at=when,
            n=3 + days_ago % 4,
        )
        ledger_spend(
            organisation, model="dev-small", prompt_tokens=400_000, completion_tokens=90_000, started_at=when, n=2
        )
    for name, amount, period, threshold in (
        ("Organisation monthly", "150", "month", 80),
        ("Support bot daily", "3", "day", 75),
        ("Experiments weekly", "40", "week", 80),
    ):
        budget_create(
            organisation=organisation,
            actor=ACTOR,
            name=name,
            scope="organisation",
            amount=Decimal(amount),
            period=period,
            soft_threshold_percent=threshold,
            hard_limit=name != "Support bot daily",
        )
    statuses = ["ok"] * 1180 + ["cached"] * 46 + ["error"] * 19 + ["rejected"] * 7
    RequestLog.objects.bulk_create(
        RequestLog(
            organisation=organisation,
            request_id=f"req-demo-{i:05d}",
            endpoint="chat.completions",
            model="chat-default",
            status=status,
            http_status=502 if status == "error" else 200,
            started_at=now - dt.timedelta(minutes=i),
        )
        for i, status in enumerate(statuses)
    )
    settings.STEWARD_PROXY_CIRCUIT_FAILURES = 1
    route_with_deployments(
        organisation,
        "chat-default",
        [{"api_base": dev_upstream.url, "name": "primary"}, {"api_base": dev_upstream_b.url, "name": "secondary"}],
    )
    route_with_deployments(
        organisation, "embeddings", [{"api_base": f"http://127.0.0.1:{free_port()}/v1", "name": "gpu-box"}]
    )
    deployments_check_all(timeout=1)
    for name, hours in (("support-reply", 3), ("refund-triage", 26)):
        promotion = promotion_pending(organisation, engineer, name=name)
        PromotionRequest.objects.filter(pk=promotion.pk).update(created_at=now - dt.timedelta(hours=hours))
    overdue = item_held(organisation, policy_name="pii-strict", priority=1, sla_seconds=60)
    ModerationItem.objects.filter(pk=overdue.pk).update(
        created_at=now - dt.timedelta(minutes=14), deadline=now - dt.timedelta(minutes=4)
    )
    item_held(organisation, policy_name="toxicity", priority=2)
    item_held(organisation, policy_name="pii-strict", priority=3)
    started = now - dt.timedelta(hours=5)
    eval_run(organisation, prompt_name="summarise-ticket", status="completed", verdict="regressed", created_at=started)
    eval_run(organisation, prompt_name="classify-intent", status="running", cells_total=120, cells_done=74)
    eval_run(organisation, prompt_name="draft-reply", status="failed", created_at=now - dt.timedelta(days=2))


def test_the_demo_dashboard_shows_every_panel(
    browser_open, organisation, owner, second_prompt_engineer, dev_upstream, dev_upstream_b, settings
):
    _demo_data(
        organisation,
        engineer=second_prompt_engineer,
        dev_upstream=dev_upstream,
        dev_upstream_b=dev_upstream_b,
        settings=settings,
    )
    page = browser_open(owner, next_path="/")  # 1280 wide
    for panel in ("spend", "requests", "health", "promotions", "moderation", "evals"):
        assert page.locator(f"#panel-{panel}").is_visible()
    assert page.locator('[data-figure="health-down"]').inner_text() == "1 down"
    screenshot(page, "dashboard.png")


def test_on_a_phone_the_panels_stack_within_the_screen(browser_open, organisation, viewer):
    from tests.browser import PHONE

    ledger_spend(organisation, n=2)
    budget_create(organisation=organisation, actor=ACTOR, name="A budget with a rather long name for a phone",
                  scope="organisation", amount=Decimal("0.01"))  # fmt: skip
    page = browser_open(viewer, viewport=PHONE, next_path="/")
    boxes = [page.locator(f"#panel-{name}").bounding_box() for name in ("spend", "requests", "health")]
    assert all(box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] for box in boxes)
    assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]  # one column
    assert page.locator('[data-figure="budget-percent"]').inner_text() == "294%"
