"""Real headless Chromium opens the usage page with ledger data: the chart and a budget bar render."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings as django_settings

from billing.services import budget_create, usage_lines_record

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.browser
def test_usage_page_shows_chart_and_budget_bar(
    live_server, client, viewer, organisation, record_factory, system_actor, monkeypatch, chromium_executable
):
    from playwright.sync_api import sync_playwright

    usage_lines_record(
        records=[
            record_factory(model="dev-large", usage={"prompt_tokens": 400, "completion_tokens": 900}) for _ in range(4)
        ]
    )
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Org monthly",
        scope="organisation",
        amount=Decimal("0.1"),
        soft_threshold_percent=20,
    )
    client.force_login(viewer.user)
    session_cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    # Playwright's sync API runs an event loop in this thread; the server thread does the database work.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.add_cookies(
                [{"name": django_settings.SESSION_COOKIE_NAME, "value": session_cookie, "url": live_server.url}]
            )
            page = context.new_page()
            page.goto(f"{live_server.url}/usage/")
            chart = page.locator("#cost-chart svg")
            chart.wait_for(state="visible", timeout=10_000)
            bars = page.locator("#cost-chart svg rect.bar")
            assert bars.count() == 30
            heights = [float(bars.nth(i).get_attribute("height")) for i in range(bars.count())]
            assert max(heights) > 0  # today's bar has data
            # 4 × (400 × 3e-6 + 900 × 15e-6) = 0.0588 USD
            values = [Decimal(bars.nth(i).get_attribute("data-value")) for i in range(bars.count())]
            assert sum(values) == Decimal("0.0588")
            box = chart.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 50

            bar = page.locator('[role="meter"][aria-label="Org monthly consumption"]')
            assert bar.get_attribute("aria-valuenow") == "58"
            fill = bar.locator(".budget-bar-fill").bounding_box()
            outer = bar.bounding_box()
            assert fill and outer and 0.5 < fill["width"] / outer["width"] < 0.65
            # Past the 20 % soft threshold: the banner says so.
            assert "Org monthly" in page.locator(".banner").inner_text()
        finally:
            browser.close()
