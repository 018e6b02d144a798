"""The request log in a real browser: keyset pages through htmx, and each request's cost in the list
(saved as docs/screenshots/request-log.png with STEWARD_SCREENSHOTS=1)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageLine
from proxy.models import RequestLog
from proxy.views import PAGE_SIZE
from tests.browser import DESKTOP, screenshot
from tests.factories import PromptFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


# (model, status, http, key name, prompt, version, tokens in, tokens out, latency ms, cost or None, basis)
DEMO = [
    ("gpt-4o-mini", "ok", 200, "support-bot", "support-reply", 3, 412, 188, 842.0, "0.000175", "priced"),
    ("claude-haiku", "ok", 200, "ticket-triage", "classify-intent", 2, 233, 12, 301.5, "0.000073", "priced"),
    ("gpt-4o-mini", "cached", 200, "support-bot", "support-reply", 3, 405, 190, 3.1, "0", "cached"),
    ("gpt-4o", "error", 502, "analytics", "", None, 1210, 0, 30012.0, "0", "no_usage"),
    ("llama-3.1-8b", "ok", 200, "ticket-triage", "summarise-ticket", 5, 1880, 240, 1290.0, "0", "no_price"),
    ("gpt-4o-mini", "ok", 200, "support-bot", "support-reply", 4, 398, 203, 910.2, "0.000182", "estimated"),
    ("gpt-4o-mini", "rejected", 429, "analytics", "", None, 0, 0, 1.2, None, ""),
    ("claude-haiku", "ok", 200, "ticket-triage", "classify-intent", 2, 241, 9, 288.0, "0.000072", "priced"),
    ("gpt-4o", "ok", 200, "analytics", "", None, 3020, 611, 4120.0, "0.013660", "priced"),
    ("gpt-4o-mini", "ok", 200, "support-bot", "support-reply", 3, 420, 176, 799.9, "0.000169", "priced"),
]


def _demo_rows(organisation, api_key_factory) -> None:
    keys = {name: api_key_factory(name=name)[0] for name in {row[3] for row in DEMO}}
    for name in ("support-reply", "classify-intent", "summarise-ticket"):
        PromptFactory(organisation=organisation, name=name)
    now = timezone.now().replace(microsecond=0)
    for n, (model, status, http, key, prompt, version, tokens_in, tokens_out, latency, cost, basis) in enumerate(DEMO):
        started = now - timedelta(seconds=37 * n + 5)
        log = RequestLog.objects.create(
            organisation=organisation,
            request_id=f"req_{(n + 1) * 2654435761 % 16**12:012x}",
            api_key_id=keys[key].id,
            endpoint="chat",
            model=model,
            deployment_name=f"{model}-primary" if status not in ("rejected", "cached") else "",
            prompt_name=prompt,
            prompt_version_number=version,
            status=status,
            http_status=http,
            error_type="upstream_error" if status == "error" else ("rate_limited" if status == "rejected" else ""),
            cache_hit=status == "cached",
            started_at=started,
            latency_ms=latency,
            overhead_ms=0.8 + n / 10,
            upstream_ms=max(latency - 0.8, 0),
            prompt_tokens=tokens_in,
            completion_tokens=tokens_out,
            usage_estimated=basis == "estimated",
            attempts=[] if status in ("rejected", "cached") else [{"n": 1, "status": status, "http_status": http}],
        )
        if cost is not None:
            UsageLine.objects.create(
                request_id=log.request_id,
                attempt=0 if status == "cached" else 1,
                organisation_id=organisation.pk,
                api_key_id=keys[key].id,
                model=model,
                status=status,
                cost=Decimal(cost),
                basis=basis,
                started_at=started,
            )


def test_older_and_newer_pages_swap_in_place_and_keep_the_url(browser_open, viewer, organisation):
    now = timezone.now()
    RequestLog.objects.bulk_create(
        RequestLog(organisation=organisation, request_id=f"page-{n:03d}", endpoint="chat", model="gpt-small",
                   status="ok", http_status=200, started_at=now - timedelta(seconds=n))
        for n in range(PAGE_SIZE + 3)
    )  # fmt: skip
    page = browser_open(viewer, viewport=DESKTOP, next_path="/proxy/requests/")
    assert page.locator("#request-results tbody tr").count() == PAGE_SIZE
    page.click("#page-older")
    page.wait_for_url("**cursor=**")
    page.wait_for_function("document.querySelectorAll('#request-results tbody tr').length === 3")
    assert page.locator("tr[data-request-id='page-052']").count() == 1
    page.click("#page-newer")
    page.wait_for_function(f"document.querySelectorAll('#request-results tbody tr').length === {PAGE_SIZE}")
    assert page.locator("tr[data-request-id='page-000']").count() == 1


def test_the_request_log_shows_each_requests_cost(browser_open, admin, organisation, api_key_factory):
    _demo_rows(organisation, api_key_factory)
    page = browser_open(admin, viewport=DESKTOP, next_path="/proxy/requests/")
    assert "0.01366 USD" in page.locator("#request-results").inner_text()
    screenshot(page, "request-log.png")
