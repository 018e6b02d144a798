"""The request log's keyset pages (UI and /api/v1/request-logs/), its costs, prompt/version filter and
stage order, all through HTTP on the real database."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageLine
from proxy.models import RequestLog
from proxy.request_log_selectors import request_log_recent_counts
from proxy.views import PAGE_SIZE
from tests.factories import PromptFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db

LIST = "proxy:request_log_list"


def _logs(organisation, count: int, *, prefix: str, at=None, **kwargs) -> list[RequestLog]:
    """`count` rows; every three share one started_at (ties broken by id)."""
    at = at or timezone.now() - timedelta(minutes=5)
    rows = [
        RequestLog(
            organisation=organisation,
            request_id=f"{prefix}-{n:04d}",
            endpoint="chat",
            model=kwargs.get("model", "gpt-small"),
            status=kwargs.get("status", "ok"),
            http_status=200,
            started_at=at - timedelta(seconds=n // 3),
            prompt_name=kwargs.get("prompt_name", ""),
            prompt_version_number=kwargs.get("prompt_version_number"),
            timings=kwargs.get("timings", {}),
        )
        for n in range(count)
    ]
    return RequestLog.objects.bulk_create(rows)


def _newest_first(**filters) -> list[str]:
    return list(
        RequestLog.objects.filter(**filters).order_by("-started_at", "-id").values_list("request_id", flat=True)
    )


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-request-id="([^"]+)"', html)


def _link(html: str, link_id: str) -> str | None:
    found = re.search(rf'id="{link_id}"[^>]*href="([^"]*)"', html)
    return unescape(found.group(1)) if found else None


def _walk(client, first_params: dict, direction: str) -> tuple[list[list[str]], str]:
    url = reverse(LIST)
    response = client.get(url, first_params)
    assert response.status_code == 200
    pages = [_rows(response.content.decode())]
    html = response.content.decode()
    while (href := _link(html, direction)) is not None:
        response = client.get(url + href)
        assert response.status_code == 200, response.content
        html = response.content.decode()
        pages.append(_rows(html))
    return pages, html


def test_older_and_newer_walk_every_row_once_with_ties_and_filters(client, viewer, organisation):
    _logs(organisation, 2 * PAGE_SIZE + 7, prefix="ok")
    _logs(organisation, PAGE_SIZE + 4, prefix="err", status="error", at=timezone.now() - timedelta(minutes=4))
    login(client, viewer)

    for params, filters in (({}, {}), ({"status": "error"}, {"status": "error"})):
        expected = _newest_first(organisation=organisation, **filters)
        pages, last_html = _walk(client, params, "page-older")
        assert [rid for page in pages for rid in page] == expected
        assert all(len(page) == PAGE_SIZE for page in pages[:-1])
        assert _link(last_html, "page-older") is None  # the oldest page offers no older one

        # Back up from the oldest page: the same pages in reverse, ending on the newest (which has no newer).
        html = last_html
        back = []
        while (href := _link(html, "page-newer")) is not None:
            assert ("status=error" in href) == bool(filters)  # the filter travels with the cursor
            html = client.get(reverse(LIST) + href).content.decode()
            back.append(_rows(html))
        assert back == list(reversed(pages[:-1]))


def test_a_newer_page_at_the_top_is_the_full_newest_page(client, viewer, organisation):
    _logs(organisation, PAGE_SIZE + 10, prefix="r")
    login(client, viewer)
    pages, html = _walk(client, {}, "page-older")
    assert len(pages) == 2 and len(pages[1]) == 10
    newer = client.get(reverse(LIST) + _link(html, "page-newer")).content.decode()
    assert _rows(newer) == _newest_first(organisation=organisation)[:PAGE_SIZE]
    assert _link(newer, "page-newer") is None


def test_a_tampered_cursor_is_a_clear_400(client, viewer, organisation):
    _logs(organisation, PAGE_SIZE + 1, prefix="t")
    login(client, viewer)
    html = client.get(reverse(LIST)).content.decode()
    href = _link(html, "page-older")
    cursor = href.split("cursor=", 1)[1]
    for bad in (cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB"), "not-a-cursor", cursor[5:]):
        response = client.get(reverse(LIST), {"cursor": bad})
        assert response.status_code == 400
        body = response.content.decode()
        assert "This page link is not valid" in body and 'id="cursor-error"' in body
        assert "<tr data-request-id" not in body


def test_costs_come_from_the_ledger_in_one_query_per_page(client, viewer, organisation):
    logs = _logs(organisation, 30, prefix="c")
    at = timezone.now()
    lines = [
        UsageLine(
            request_id=log.request_id,
            attempt=1,
            organisation_id=organisation.pk,
            model="gpt-small",
            status="ok",
            cost=Decimal("0.000123"),
            basis="priced",
            started_at=at,
        )
        for log in logs[1:]
    ]
    # A second attempt adds to the first; a model without a price is flagged, not shown as free.
    lines.append(
        UsageLine(request_id=logs[1].request_id, attempt=2, organisation_id=organisation.pk, model="gpt-small",
                  status="ok", cost=Decimal("0.000100"), basis="priced", started_at=at)
    )  # fmt: skip
    lines[1].basis, lines[1].cost = "no_price", Decimal(0)
    UsageLine.objects.bulk_create(lines)
    login(client, viewer)

    response = client.get(reverse(LIST))
    html = response.content.decode()
    row = {rid: cells for rid, cells in re.findall(r'<tr data-request-id="([^"]+)">(.*?)</tr>', html, re.S)}
    assert "0.000223 USD" in row[logs[1].request_id]
    assert "0.000123 USD" in row[logs[3].request_id]
    assert "unpriced" in row[logs[2].request_id]
    assert "USD" not in row[logs[0].request_id]  # no ledger line: refused before any attempt

    detail = client.get(reverse("proxy:request_log_detail", args=[logs[1].request_id])).content.decode()
    assert re.search(r'id="request-cost">0\.000223 USD', detail)

    # The page's queries do not grow with its rows (no query per row for the cost).
    RequestLog.objects.filter(request_id__in=[log.request_id for log in logs[5:]]).delete()
    with CaptureQueriesContext(connection) as few:
        client.get(reverse(LIST))
    _logs(organisation, 40, prefix="more")
    with CaptureQueriesContext(connection) as many:
        assert len(_rows(client.get(reverse(LIST)).content.decode())) == 45
    assert len(many.captured_queries) == len(few.captured_queries)
    assert sum("billing_usageline" in q["sql"] for q in many.captured_queries) == 1


def test_filter_by_prompt_name_and_version(client, viewer, organisation):
    PromptFactory(organisation=organisation, name="support-reply")
    PromptFactory(organisation=organisation, name="summarise")
    _logs(organisation, 3, prefix="v1", prompt_name="support-reply", prompt_version_number=1)
    _logs(organisation, 2, prefix="v2", prompt_name="support-reply", prompt_version_number=2)
    _logs(organisation, 2, prefix="sum", prompt_name="summarise", prompt_version_number=2)
    _logs(organisation, 2, prefix="none")
    login(client, viewer)
    url = reverse(LIST)

    page = client.get(url).content.decode()
    assert '<option value="support-reply">support-reply</option>' in page  # a picker by name

    def shown(**params) -> set[str]:
        response = client.get(url, params)
        assert response.status_code == 200
        return set(_rows(response.content.decode()))

    assert shown(prompt="support-reply") == {"v1-0000", "v1-0001", "v1-0002", "v2-0000", "v2-0001"}
    assert shown(prompt="support-reply", version=2) == {"v2-0000", "v2-0001"}
    assert shown(prompt="summarise", version=2) == {"sum-0000", "sum-0001"}

    alone = client.get(url, {"version": 2}).content.decode()
    assert re.search(r'id="id_version_error"[^>]*>choose a prompt for this version number', alone)
    unknown = client.get(url, {"prompt": "no-such-prompt"}).content.decode()
    assert 'id="id_prompt_error"' in unknown and not _rows(unknown)
    bad_version = client.get(url, {"prompt": "summarise", "version": "0"}).content.decode()
    assert 'id="id_version_error"' in bad_version


def test_stage_timings_are_in_pipeline_order(client, viewer, organisation):
    timings = {"log": 0.05, "call_upstream": 11.4, "authenticate": 0.11, "zz_new_stage": 1.0, "admit": 0.01,
               "settle_cost": 0.2, "pre_filters": 0.3, "resolve_prompt": 0.02}  # fmt: skip
    _logs(organisation, 1, prefix="stages", timings=timings)
    login(client, viewer)
    html = client.get(reverse("proxy:request_log_detail", args=["stages-0000"])).content.decode()
    order = re.findall(r'<tr data-stage="([^"]+)"', html)
    assert order == ["admit", "authenticate", "resolve_prompt", "pre_filters", "call_upstream", "settle_cost",
                     "log", "zz_new_stage"]  # fmt: skip
    assert "<meter" in html


def test_recent_counts_are_capped(organisation):
    _logs(organisation, 5, prefix="recent")
    _logs(organisation, 2, prefix="recent-err", status="error")
    counts = request_log_recent_counts(organisation=organisation, since=timezone.now() - timedelta(days=1), cap=3)
    assert counts["ok"] == 4 and counts["error"] == 2 and counts["cached"] == 0


# --- API ----------------------------------------------------------------------------------------

API = "api-request-log-list"


def test_api_pages_by_cursor_links_across_ties_and_filters(client, admin, organisation, other_organisation):
    _logs(organisation, 11, prefix="a")
    _logs(organisation, 4, prefix="b", model="big")
    _logs(other_organisation, 3, prefix="foreign")
    login(client, admin)

    for params, filters in (({}, {}), ({"model": "big"}, {"model": "big"})):
        expected = _newest_first(organisation=organisation, **filters)
        response = client.get(reverse(API), {**params, "page_size": 3})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"next", "previous", "results"} and body["previous"] is None
        pages = [[r["request_id"] for r in body["results"]]]
        while body["next"]:
            assert "page_size=3" in body["next"] and all(f"{k}={v}" in body["next"] for k, v in params.items())
            body = client.get(body["next"]).json()
            pages.append([r["request_id"] for r in body["results"]])
        assert [rid for page in pages for rid in page] == expected
        back = []
        while body["previous"]:
            body = client.get(body["previous"]).json()
            back.append([r["request_id"] for r in body["results"]])
        assert back[-1] == expected[:3] if back else len(pages) == 1


def test_api_cursor_errors_use_the_error_envelope(client, admin, organisation):
    _logs(organisation, 4, prefix="e")
    login(client, admin)
    body = client.get(reverse(API), {"page_size": 2}).json()
    cursor = body["next"].split("cursor=", 1)[1].split("&", 1)[0]
    response = client.get(reverse(API), {"cursor": cursor[:-3] + "xyz"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["details"] == {"param": "cursor"}
    assert "not valid" in error["message"]
    too_big = client.get(reverse(API), {"page_size": 501})
    assert too_big.status_code == 400 and "page_size" in too_big.json()["error"]["details"]


def test_api_filters_by_prompt_and_shows_cost_and_stages(client, admin, organisation):
    _logs(organisation, 2, prefix="p1", prompt_name="support-reply", prompt_version_number=1)
    _logs(organisation, 1, prefix="p2", prompt_name="support-reply", prompt_version_number=2,
          timings={"log": 0.1, "authenticate": 0.2, "call_upstream": 3.0})  # fmt: skip
    UsageLine.objects.create(request_id="p2-0000", attempt=1, organisation_id=organisation.pk, model="gpt-small",
                             status="ok", cost=Decimal("0.5"), basis="priced", started_at=timezone.now())  # fmt: skip
    login(client, admin)
    listed = client.get(reverse(API), {"prompt": "support-reply", "prompt_version": 2}).json()["results"]
    assert [r["request_id"] for r in listed] == ["p2-0000"]
    assert listed[0]["cost"]["total"] == "0.500000000000" and listed[0]["cost"]["unpriced"] is False
    assert len(client.get(reverse(API), {"prompt": "support-reply"}).json()["results"]) == 3
    alone = client.get(reverse(API), {"prompt_version": 2})
    assert alone.status_code == 400 and "prompt_version" in alone.json()["error"]["details"]

    detail = client.get(reverse("api-request-log-detail", args=["p2-0000"])).json()
    assert [s["stage"] for s in detail["stages"]] == ["authenticate", "call_upstream", "log"]
    assert detail["cost"]["currency"] == "USD"
    assert client.get(reverse("api-request-log-detail", args=["p1-0000"])).json()["cost"] is None
