"""Real headless Chromium opens the usage page with ledger data: the chart and a budget bar render."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.services import budget_create, usage_lines_record


@pytest.mark.browser
def test_usage_page_shows_chart_and_budget_bar(browser_open, viewer, organisation, record_factory, system_actor):
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
    page = browser_open(viewer, next_path="/usage/")
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
