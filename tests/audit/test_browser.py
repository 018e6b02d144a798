"""Real headless Chromium on the audit page: htmx filtering (type select, target by name), changes
shown as JSON, and the verification status polling."""

from __future__ import annotations

import pytest

from audit.actions import Action
from audit.models import AuditVerification
from audit.services import audit_verification_run
from core.actors import Actor
from tests.browser import screenshot
from tests.helpers import record

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_filters_swap_results_and_verification_status_updates_itself(browser_open, admin, celery_worker_process):
    from playwright.sync_api import expect

    record(admin.organisation, 3, action=Action.ROUTE_UPDATED, target_type="route")
    record(admin.organisation, 2, actor=Actor.for_user(admin.user), action=Action.TEAM_CREATED)
    page = browser_open(admin, next_path="/audit/")
    rows = page.locator("#audit-results tbody tr[data-seq]")
    # Five recorded, the organisation's creation, and the admin's sign-in just now.
    expect(rows).to_have_count(8)
    page.evaluate("window.__marker = 'no full reload'")

    page.select_option("#id_action", "route.updated")
    expect(rows).to_have_count(3)
    assert page.evaluate("window.__marker") == "no full reload"
    assert "action=route.updated" in page.url
    expect(page.locator("#audit-results a", has_text="Export JSON Lines")).to_have_attribute(
        "href", "/audit/export.jsonl?action=route.updated"
    )

    # A pending verification: the partial polls until the outcome lands, without reloading.
    pending = AuditVerification.objects.create(organisation=admin.organisation, requested_by=admin.user)
    page.reload()
    page.evaluate("window.__marker = 'still this page'")
    row = page.locator(f'#audit-verifications tr[data-verification-id="{pending.id}"]')
    expect(row).to_have_attribute("data-verification-status", "pending")
    expect(page.locator("#audit-verifications[hx-trigger]")).to_have_count(1)
    audit_verification_run(verification_id=pending.id)
    expect(row).to_have_attribute("data-verification-status", "ok", timeout=10_000)
    assert page.evaluate("window.__marker") == "still this page"

    # The button: a real worker process picks the task up.
    page.get_by_role("button", name="Verify chain now").click()
    status = page.locator("#audit-verifications tr[data-verification-status]").first
    expect(status).to_have_attribute("data-verification-status", "ok", timeout=20_000)
    expect(page.locator("#audit-verifications[hx-trigger]")).to_have_count(0, timeout=5_000)


def test_target_by_type_and_name_and_changes_as_json(browser_open, admin):
    from playwright.sync_api import expect

    actor = Actor.system("tests")
    org = admin.organisation
    record(org, 1, actor=actor, action=Action.BUDGET_CREATED, target_type="budget", target_id=4, after={"name": "Ops"})
    updated = record(
        org,
        1,
        actor=actor,
        action=Action.BUDGET_UPDATED,
        target_type="budget",
        target_id=4,
        before={"name": "Ops", "amount": "1", "hard_limit": True},
        after={"name": "Ops", "amount": "2", "hard_limit": True},
    )[0]
    record(org, 1, actor=actor, action=Action.BUDGET_CREATED, target_type="budget", target_id=5, after={"name": "Dev"})
    page = browser_open(admin, next_path="/audit/")

    page.select_option("#id_target_type", label="Budget")
    rows = page.locator("#audit-results tbody tr[data-seq]")
    expect(rows).to_have_count(3)
    expect(page.locator("#audit-target-names option")).to_have_count(2)
    page.fill("#id_target", "ops")
    page.press("#id_target", "Enter")
    expect(rows).to_have_count(2)
    assert "target=ops" in page.url

    change = page.locator(f'tr[data-seq="{updated.seq}"] td.audit-change')
    expect(change.locator("dt")).to_have_text(["amount"])
    expect(change.locator("dd")).to_have_text('"1" → "2"')
    change.locator("summary", has_text="Full record").click()
    expect(change.locator("pre").first).to_contain_text('"hard_limit": true')
    screenshot(page, "audit.png")
