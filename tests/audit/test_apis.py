from __future__ import annotations

import pytest

from audit.actions import Action
from audit.models import AuditVerification
from core.actors import Actor
from tests.helpers import login, record

pytestmark = pytest.mark.django_db

URL = "/api/v1/audit-events/"


def test_list_with_filters_and_pagination(client, admin, organisation):
    record(organisation, 3, actor=Actor.for_user(admin.user), action=Action.TEAM_CREATED)
    record(organisation, 2, action=Action.ROUTE_UPDATED, target_type="route", target_id=9)
    login(client, admin)
    body = client.get(URL).json()
    assert body["count"] >= 6
    seqs = [e["seq"] for e in body["results"]]
    assert seqs == sorted(seqs, reverse=True)
    assert {"hash", "prev_hash", "request_id", "before", "after"} <= set(body["results"][0])
    assert client.get(URL, {"actor": "alice-admin"}).json()["count"] == 3
    assert client.get(URL, {"action": "route.updated", "target_type": "route", "target_id": "9"}).json()["count"] == 2
    assert client.get(URL, {"date_to": "2000-01-01"}).json()["count"] == 0
    page = client.get(URL, {"page_size": 2, "page": 2}).json()
    assert [e["seq"] for e in page["results"]] == seqs[2:4]
    bad = client.get(URL, {"action": "no.such", "date_from": "x"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]["details"]) == {"action", "date_from"}


def test_api_key_with_admin_role_can_read_the_trail(client, api_key_factory):
    _, secret = api_key_factory(roles=["admin"])
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    assert response.json()["results"][0]["action"] == "api_key.created"


def test_verification_create_and_retrieve(client, admin, organisation):
    from audit import tasks

    login(client, admin)
    created = client.post("/api/v1/audit-verifications/")
    assert created.status_code == 202
    body = created.json()
    assert body["status"] == "pending" and body["requested_by"] == "alice-admin"
    tasks.chain_verify(body["id"])
    done = client.get(f"/api/v1/audit-verifications/{body['id']}/").json()
    assert done["status"] == "ok" and done["events_checked"] >= 2


def test_roles_and_organisations(client, reviewer, outsider, organisation):
    verification = AuditVerification.objects.create(organisation=organisation)
    login(client, reviewer)
    assert client.get(URL).status_code == 403
    assert client.post("/api/v1/audit-verifications/").status_code == 403
    client.logout()
    login(client, outsider)
    assert client.get(f"/api/v1/audit-verifications/{verification.id}/").status_code == 404
    assert {e["target_id"] for e in client.get(URL).json()["results"]} <= {
        str(outsider.organisation.id),
        str(outsider.user.pk),
    }
    client.logout()
    assert client.get(URL).status_code in (401, 403)
