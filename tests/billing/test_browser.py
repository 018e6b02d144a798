"""Real headless Chromium on the usage pages: the chart with round ticks (or none in an empty period),
budget bars past 100 % and the prompt picker whose versions follow it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.services import budget_create, usage_lines_record
from tests.browser import PHONE, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_usage_page_shows_chart_and_budget_bar(browser_open, viewer, organisation, record_factory, system_actor):
    from playwright.sync_api import expect

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
    budget_create(
        organisation=organisation,
        actor=system_actor,
        name="Tiny soft",
        scope="organisation",
        amount=Decimal("0.0297"),
        hard_limit=False,
    )
    page = browser_open(viewer, next_path="/usage/")
    chart = page.locator("#cost-chart svg")
    expect(chart).to_be_visible()
    bars = page.locator("#cost-chart svg rect.bar")
    expect(bars).to_have_count(30)
    heights = [float(bars.nth(i).get_attribute("height")) for i in range(bars.count())]
    assert max(heights) > 0  # today's bar has data
    # 4 × (400 × 3e-6 + 900 × 15e-6) = 0.0588 USD: the axis goes to $0.06 in steps of $0.02.
    values = [Decimal(bars.nth(i).get_attribute("data-value")) for i in range(bars.count())]
    assert sum(values) == Decimal("0.0588")
    assert page.locator("#cost-chart svg text.tick").all_text_contents() == ["$0", "$0.02", "$0.04", "$0.06"]
    box = chart.bounding_box()
    assert box and box["width"] > 300 and box["height"] > 50

    bar = page.locator('[role="meter"][aria-label="Org monthly consumption"]')
    assert bar.get_attribute("aria-valuenow") == "58"
    fill = bar.locator(".budget-bar-fill").bounding_box()
    outer = bar.bounding_box()
    assert fill and outer and 0.5 < fill["width"] / outer["width"] < 0.65
    # Past the 20 % soft threshold: the banner says so.
    assert "Org monthly" in page.locator(".banner").inner_text()

    # 0.0588 of 0.0297 is 197 %: the text says so, the bar is full (not wider) and marked over.
    over = page.locator('tr:has([aria-label="Tiny soft consumption"])')
    expect(over.locator(".budget-percent")).to_have_text("197%")
    expect(over.locator(".badge.error")).to_have_text("over budget")
    fill = over.locator(".budget-bar-fill").bounding_box()
    outer = over.locator(".budget-bar").bounding_box()
    assert fill and outer and abs(fill["width"] - outer["width"]) < 1
    screenshot(page, "usage.png")
    page.goto("/usage/budgets/")
    screenshot(page, "budgets.png")


def test_empty_period_says_no_usage_rather_than_an_axis_of_zeros(browser_open, viewer):
    from playwright.sync_api import expect

    page = browser_open(viewer, viewport=PHONE, next_path="/usage/")
    expect(page.locator("#cost-chart")).to_have_text("No usage in this period")
    expect(page.locator("#cost-chart svg")).to_have_count(0)


def test_version_picker_follows_the_chosen_prompt(browser_open, viewer, organisation, record_factory):
    from playwright.sync_api import expect

    def line(prompt_id, version_id, name, number, model):
        return record_factory(
            model=model,
            prompt_id=prompt_id,
            prompt_version_id=version_id,
            prompt_name=name,
            prompt_version_number=number,
        )

    usage_lines_record(
        records=[
            line(501, 601, "summarise", 1, "dev-small"),
            line(501, 602, "summarise", 2, "dev-large"),
            line(502, 603, "classify", 7, "dev-small"),
        ]
    )
    page = browser_open(viewer, next_path="/usage/")
    page.evaluate("window.__marker = 'no full reload'")
    versions = page.locator("#id_prompt_version option")
    expect(versions).to_have_text(["Choose a prompt first"])

    page.select_option("#id_prompt", label="summarise")
    expect(versions).to_have_text(["All versions", "v2", "v1"])
    page.select_option("#id_prompt_version", label="v1")
    expect(page.locator("#usage-report")).not_to_contain_text("dev-large")
    assert "prompt_version=601" in page.url

    # Another prompt: its own versions, and the previous prompt's version is not carried over.
    page.select_option("#id_prompt", label="classify")
    expect(versions).to_have_text(["All versions", "v7"])
    expect(page.locator("#id_prompt_version")).to_have_value("")
    expect(page.locator(".field-error")).to_have_count(0)
    assert page.evaluate("window.__marker") == "no full reload"
