from __future__ import annotations

import datetime as dt
import re

import orjson
import pytest
from django.urls import reverse

from audit.actions import Action
from audit.models import AuditEvent, AuditVerification
from audit.services import audit_chain_verify
from core.actors import Actor
from tests.helpers import login, record

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail(organisation, admin):
    """Events by two actors on two target types, one of them dated last year."""
    record(organisation, 3, actor=Actor.for_user(admin.user), action=Action.TEAM_CREATED, target_type="team")
    record(
        organisation, 2, actor=Actor.system("sweeper"), action=Action.ROUTE_UPDATED, target_type="route", target_id=7
    )
    return organisation


def _seqs(response) -> list[int]:
    return [e.seq for e in response.context["page"]]


def _error_beside(html: str, field_id: str) -> str:
    """The error rendered beside the field (templates/partials/_field.html), or ""."""
    match = re.search(rf'id="{field_id}_error">([^<]*)<', html)
    return match.group(1) if match else ""


def _change_cell(html: str, seq: int) -> str:
    row = re.search(rf'<tr data-seq="{seq}">(.*?)</tr>', html, re.S)
    assert row, f"no row for #{seq}"
    cell = re.search(r'<td class="audit-change">(.*?)</td>', row.group(1), re.S)
    return cell.group(1)


def test_target_type_is_a_select_of_the_recorded_types(client, admin, trail):
    login(client, admin)
    html = client.get(reverse("audit:event_list")).content.decode()
    select = re.search(r'<select name="target_type"[^>]*>(.*?)</select>', html, re.S).group(1)
    assert re.findall(r'<option value="([^"]*)"', select) == ["", "organisation", "route", "team", "user"]
    assert ">Any type<" in select
    bad = client.get(reverse("audit:event_list"), {"target_type": "nonsense"})
    assert bad.context["page"] is None
    assert _error_beside(bad.content.decode(), "id_target_type") == "Choose a type of target this trail records."


def test_target_is_found_by_the_name_its_events_record(client, admin, organisation, other_organisation):
    actor = Actor.system("tests")
    record(
        organisation,
        1,
        actor=actor,
        action=Action.TEAM_CREATED,
        target_type="team",
        target_id=5,
        after={"name": "Search"},
    )
    # A later event of the same team that does not name it is still that team's.
    record(
        organisation, 1, actor=actor, action=Action.TEAM_UPDATED, target_type="team", target_id=5, after={"members": 3}
    )
    record(
        organisation,
        1,
        actor=actor,
        action=Action.TEAM_CREATED,
        target_type="team",
        target_id=6,
        after={"name": "Billing"},
    )
    record(
        organisation,
        1,
        actor=actor,
        action=Action.BUDGET_CREATED,
        target_type="budget",
        target_id=5,
        after={"name": "Other budget"},
    )
    record(
        other_organisation,
        1,
        actor=actor,
        action=Action.TEAM_CREATED,
        target_type="team",
        target_id=5,
        after={"name": "Search"},
    )
    login(client, admin)
    url = reverse("audit:event_list")
    found = client.get(url, {"target_type": "team", "target": "searc"})
    assert {(e.target_type, e.target_id) for e in found.context["page"]} == {("team", "5")}
    assert len(_seqs(found)) == 2
    assert {e.organisation_id for e in found.context["page"]} == {organisation.id}
    assert 'Search <span class="muted">#5</span>' in found.content.decode()  # named in the Target column
    by_id = client.get(url, {"target_type": "team", "target": "6"})
    assert {e.target_id for e in by_id.context["page"]} == {"6"}
    # Names are suggested for the chosen type only.
    html = client.get(url, {"target_type": "team"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="audit-body").content
    datalist = re.search(rb'<datalist id="audit-target-names">(.*?)</datalist>', html, re.S).group(1).decode()
    assert re.findall(r'value="([^"]*)"', datalist) == ["Billing", "Search"]
    assert b'id="audit-filters"' in html and b"<html" not in html


def test_changes_show_json_and_only_the_fields_that_changed(client, admin, organisation):
    actor = Actor.system("tests")
    created = record(
        organisation,
        1,
        actor=actor,
        action=Action.PROMPT_CREATED,
        target_type="prompt",
        target_id=1,
        after={"name": "p", "variables": {"topic": {"type": "string", "required": True}}, "retired": None},
    )[0]
    updated = record(
        organisation,
        1,
        actor=actor,
        action=Action.BUDGET_UPDATED,
        target_type="budget",
        target_id=2,
        before={"name": "B", "amount": "1", "hard_limit": True, "limits": {"day": 1, "week": 5}},
        after={"name": "B", "amount": "20", "hard_limit": False, "limits": {"day": 1, "week": 7}, "note": "x"},
    )[0]
    login(client, admin)
    html = client.get(reverse("audit:event_list")).content.decode()
    assert "True" not in html and "None" not in html and "{&#x27;" not in html
    one_sided = _change_cell(html, created.seq)
    assert "&quot;required&quot;: true" in one_sided and "&quot;retired&quot;: null" in one_sided
    diff = _change_cell(html, updated.seq)
    fields = re.findall(r"<dt><code>([^<]*)</code></dt>", diff)
    assert fields == ["amount", "hard_limit", "limits.week", "note"]
    assert "<del><code>&quot;1&quot;</code></del> → <ins><code>&quot;20&quot;</code></ins>" in diff
    assert "<del><code>true</code></del> → <ins><code>false</code></ins>" in diff
    assert "(absent)</span> → <ins><code>&quot;x&quot;</code></ins>" in diff
    # The whole record stays one click away.
    full = diff[diff.index("<details>") :]
    assert "Full record" in full and "&quot;name&quot;: &quot;B&quot;" in full and "&quot;day&quot;: 1" in full


def test_admin_sees_events_newest_first_with_filters(client, admin, trail):
    login(client, admin)
    url = reverse("audit:event_list")
    everything = client.get(url)
    assert everything.status_code == 200
    all_seqs = _seqs(everything)
    assert all_seqs == sorted(all_seqs, reverse=True)
    assert len(all_seqs) == AuditEvent.objects.filter(organisation=trail).count()
    by_actor = client.get(url, {"actor": "alice-admin"})
    assert {e.actor_label for e in by_actor.context["page"]} == {"alice-admin"}
    assert len(_seqs(by_actor)) == 3
    by_action = client.get(url, {"action": "route.updated"})
    assert len(_seqs(by_action)) == 2
    by_target = client.get(url, {"target_type": "route", "target": "7"})
    assert len(_seqs(by_target)) == 2
    today = dt.date.today()
    assert len(_seqs(client.get(url, {"date_from": today.isoformat(), "date_to": today.isoformat()}))) == len(all_seqs)
    assert _seqs(client.get(url, {"date_to": (today - dt.timedelta(days=2)).isoformat()})) == []
    bad = client.get(url, {"date_from": "2030-01-02", "date_to": "2030-01-01"})
    assert bad.status_code == 200 and bad.context["page"] is None
    assert "must not be after" in _error_beside(bad.content.decode(), "id_date_from")


def test_htmx_request_gets_the_results_partial(client, admin, trail):
    login(client, admin)
    response = client.get(
        reverse("audit:event_list"), {"action": "team.created"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="audit-results"
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and "<table>" in html and "team.created" in html


def test_pagination(client, admin, organisation):
    record(organisation, 60)
    login(client, admin)
    first = client.get(reverse("audit:event_list"))
    assert len(_seqs(first)) == 50 and first.context["page"].has_next()
    second = client.get(reverse("audit:event_list"), {"page": 2})
    total = AuditEvent.objects.filter(organisation=organisation).count()
    assert _seqs(first) + _seqs(second) == list(range(total, 0, -1))


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_export_streams_the_filtered_events_as_json_lines(client, admin, trail):
    login(client, admin)
    response = client.get(reverse("audit:event_export"), {"action": "route.updated"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/jsonl"
    assert 'filename="audit-acme-' in response["Content-Disposition"]
    lines = b"".join(response).splitlines()
    rows = [orjson.loads(line) for line in lines]
    assert [r["action"] for r in rows] == ["route.updated", "route.updated"]
    stored = AuditEvent.objects.get(pk=rows[0]["id"])
    assert rows[0]["hash"] == stored.hash and rows[0]["prev_hash"] == stored.prev_hash
    assert rows[0]["seq"] > rows[1]["seq"]


def test_verify_button_queues_a_verification_that_the_task_completes(
    client, admin, trail, django_capture_on_commit_callbacks
):
    """The view creates a pending row and publishes the task on commit (to the real broker);
    running the task body, as the worker would, marks it ok. test_tasks.py uses a real worker."""
    from audit import tasks
    from tests.helpers import queued_tasks

    login(client, admin)
    response = client.post(reverse("audit:verification_create"))
    assert queued_tasks() == [], "nothing may be published before the transaction commits"
    assert response.status_code == 302
    verification = AuditVerification.objects.get(organisation=trail)
    assert verification.status == "pending" and verification.requested_by == admin.user
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        client.post(reverse("audit:verification_create"))
    assert len(callbacks) == 1
    second = AuditVerification.objects.exclude(pk=verification.pk).get()
    assert queued_tasks() == [("audit.chain_verify", [second.id])]
    partial = client.get(reverse("audit:verification_list")).content.decode()
    assert 'data-verification-status="pending"' in partial and 'hx-trigger="every 2s"' in partial
    tasks.chain_verify(verification.id)
    tasks.chain_verify(second.id)
    tasks.chain_verify(second.id)  # a redelivered message finds nothing to claim
    verification.refresh_from_db()
    assert verification.status == "ok"
    assert verification.events_checked == audit_chain_verify(organisation_ids=[trail.id]).events_checked
    page = client.get(reverse("audit:event_list")).content.decode()
    assert 'data-verification-status="ok"' in page and "every 2s" not in page


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous iterators")
def test_non_admin_403_outsider_sees_only_own_trail_anonymous_redirected(client, viewer, outsider, trail):
    login(client, viewer)
    for name in ("audit:event_list", "audit:event_export", "audit:verification_list"):
        assert client.get(reverse(name)).status_code == 403
    assert client.post(reverse("audit:verification_create")).status_code == 403
    client.logout()
    login(client, outsider)
    response = client.get(reverse("audit:event_list"))
    assert response.status_code == 200
    assert {e.organisation_id for e in response.context["page"]} == {outsider.organisation.id}
    exported = b"".join(client.get(reverse("audit:event_export")))
    assert b"alice-admin" not in exported and b"sweeper" not in exported
    client.logout()
    assert client.get(reverse("audit:event_list")).status_code == 302
    assert not AuditVerification.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_export_streams_under_asgi_in_batches(client, admin, steward_server, monkeypatch):
    """Through the real ASGI server: chunked JSON Lines, every event once, newest first, across batches."""
    import requests
    from django.db import connections

    from audit import views

    monkeypatch.setattr(views, "EXPORT_BATCH", 7)
    # The server thread's connection must close after the request, or the test database cannot be dropped.
    monkeypatch.setitem(connections.databases["default"], "CONN_MAX_AGE", 0)
    record(admin.organisation, 20)
    login(client, admin)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    with requests.get(f"{steward_server.url}/audit/export.jsonl", cookies=cookies, stream=True, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/jsonl"
        assert response.headers.get("Transfer-Encoding") == "chunked"
        rows = [orjson.loads(line) for line in response.iter_lines() if line]
    expected = list(AuditEvent.objects.filter(organisation=admin.organisation).values_list("seq", flat=True))
    assert [r["seq"] for r in rows] == sorted(expected, reverse=True)
    assert len(rows) == 22
