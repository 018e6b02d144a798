"""Real headless Chromium: an admin builds a policy in the editor, adding a filter from the catalogue
through htmx (its kinds' action rows appear with it), choosing an action, and saving."""

from __future__ import annotations

import pytest

from safety.models import SafetyPolicy


@pytest.mark.browser
def test_admin_adds_filters_with_htmx_and_saves_a_policy(browser_open, admin):
    page = browser_open(admin, next_path="/moderation/policies/new/")
    page.fill("#id_name", "browser-built")
    page.select_option("#add_filter", "pii")
    page.click("button[name=add]")
    page.locator('#filter-entry-0[data-filter="pii"]').wait_for(timeout=10_000)
    page.locator('#action-rows tr[data-kind="email"]').wait_for(timeout=10_000)
    page.select_option("#add_filter", "injection")
    page.click("button[name=add]")
    page.locator('#filter-entry-1[data-filter="injection"]').wait_for(timeout=10_000)
    assert page.input_value("#next-index") == "2"
    page.fill("#f0-settings", '{"kinds": ["email", "phone"]}')
    page.select_option("select[name='action:email']", "redact")
    page.select_option("select[name='action:prompt_injection']", "block")
    page.click("button[name=save]")
    page.wait_for_url("**/moderation/policies/*/", timeout=10_000)
    assert "browser-built" in page.locator("h1").inner_text()
    assert page.locator('#filters tr[data-filter="pii"]').count() == 1
    policy = SafetyPolicy.objects.get(name="browser-built")
    assert [entry["filter"] for entry in policy.filters] == ["pii", "injection"]
    assert policy.filters[0]["settings"] == {"kinds": ["email", "phone"]}
    assert policy.actions == {"email": "redact", "prompt_injection": "block"}
