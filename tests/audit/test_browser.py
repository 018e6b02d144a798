"""Real headless Chromium on the audit page: htmx filtering and the verification status polling."""

from __future__ import annotations

import pytest
from django.db import connections

from audit.actions import Action
from audit.models import AuditVerification
from audit.services import audit_verification_run
from core.actors import Actor
from tests.helpers import record


@pytest.mark.browser
def test_filters_swap_results_and_verification_status_updates_itself(browser_open, admin, celery_worker_process):
    from playwright.sync_api import expect

    page = browser_open(admin, next_path="/audit/")
    try:
        rows = page.locator("#audit-results tbody tr[data-seq]")
        signed_in = rows.count()  # signing in through the form is audited too
        record(admin.organisation, 3, action=Action.ROUTE_UPDATED, target_type="route")
        record(admin.organisation, 2, actor=Actor.for_user(admin.user), action=Action.TEAM_CREATED)
        page.reload()
        expect(rows).to_have_count(signed_in + 5)
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
    finally:
        # Playwright's sync API runs this block in a greenlet, which Django gives its own connection.
        connections.close_all()
