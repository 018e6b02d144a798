from __future__ import annotations

import pytest

from accounts.models import ApiKey, Membership
from accounts.selectors import api_key_authenticate
from accounts.services import user_create
from tests.helpers import login

pytestmark = pytest.mark.django_db

LIST = "/api/v1/api-keys/"


def _bearer(secret: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def test_create_returns_the_secret_once_and_never_the_hash(client, admin):
    login(client, admin)
    team = client.post("/api/v1/teams/", {"name": "Platform"}, content_type="application/json").json()
    response = client.post(
        LIST,
        {
            "name": "search",
            "team_id": team["id"],
            "allowed_models": ["dev-small"],
            "roles": ["admin"],
            "rpm_limit": 100,
            "expires_at": "2099-01-01T00:00:00Z",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Cache-Control"] == "no-store"
    secret = body["secret"]
    key = ApiKey.objects.get(pk=body["id"])
    assert secret.startswith(f"stw_{key.prefix}_")
    assert "secret_hash" not in body and key.secret_hash not in response.content.decode()
    assert body["team_name"] == "Platform" and body["allowed_models"] == ["dev-small"]
    # The key works for the API (it holds the admin role) and its later views show no secret.
    listing = client.get(LIST, **_bearer(secret))
    assert listing.status_code == 200
    for url in (LIST, f"{LIST}{key.id}/"):
        text = client.get(url).content.decode()
        assert secret not in text and key.secret_hash not in text and "secret" not in text


def test_create_validates_input_with_the_error_shape(client, admin, other_organisation):
    from accounts.services import team_create
    from core.actors import Actor

    foreign = team_create(organisation=other_organisation, name="Theirs", actor=Actor.system())
    login(client, admin)
    bad = client.post(
        LIST, {"name": "", "roles": ["owner"], "rpm_limit": 0, "tpm_limit": 10**10}, content_type="application/json"
    )
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["code"] == "invalid_request"
    assert set(error["details"]) == {"name", "roles", "rpm_limit", "tpm_limit"}
    past = client.post(LIST, {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, content_type="application/json")
    assert past.status_code == 400 and past.json()["error"]["details"] == {"param": "expires_at"}
    assert error["request_id"]
    team = client.post(LIST, {"name": "x", "team_id": foreign.id}, content_type="application/json")
    assert team.status_code == 400
    assert team.json()["error"]["details"] == {"param": "team_id"}
    assert not ApiKey.objects.filter(organisation=admin.organisation).exists()


def test_retrieve_and_revoke(client, admin, api_key_factory):
    key, secret = api_key_factory(name="old")
    login(client, admin)
    detail = client.get(f"{LIST}{key.id}/").json()
    assert detail["name"] == "old" and detail["is_active"] is True and detail["revoked_at"] is None
    revoked = client.post(f"{LIST}{key.id}/revoke/")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None and revoked.json()["is_active"] is False
    assert api_key_authenticate(secret) is None
    # Idempotent.
    assert client.post(f"{LIST}{key.id}/revoke/").status_code == 200


def test_api_key_without_admin_role_is_refused_and_revoked_key_is_401(
    client, api_key_factory, django_capture_on_commit_callbacks
):
    _, viewer_secret = api_key_factory(roles=["viewer"])
    assert client.get(LIST, **_bearer(viewer_secret)).status_code == 403
    key, admin_secret = api_key_factory(roles=["admin"])
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"{LIST}{key.id}/revoke/", **_bearer(admin_secret)).status_code == 200
    response = client.get(LIST, **_bearer(admin_secret))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_member_without_role_403_outsider_404_anonymous_401(client, viewer, outsider, api_key_factory):
    key, _ = api_key_factory()
    login(client, viewer)
    assert client.get(LIST).status_code == 403
    assert client.post(f"{LIST}{key.id}/revoke/").status_code == 403
    client.logout()
    login(client, outsider)
    assert client.get(f"{LIST}{key.id}/").status_code == 404
    assert client.post(f"{LIST}{key.id}/revoke/").status_code == 404
    assert client.get(LIST).json()["results"] == []
    client.logout()
    assert client.get(LIST).status_code in (401, 403)
    key.refresh_from_db()
    assert key.revoked_at is None


def test_members_api(client, admin, viewer):
    user_create(username="nina", password="x" * 20)
    login(client, admin)
    names = [m["username"] for m in client.get("/api/v1/members/").json()["results"]]
    assert names == ["alice-admin", "victor-viewer"]
    # Nobody is added by user name any more: members join by accepting an invitation.
    added = client.post(
        "/api/v1/members/", {"username": "nina", "roles": ["reviewer"]}, content_type="application/json"
    )
    assert added.status_code == 405
    assert not Membership.objects.filter(user__username="nina").exists()
    membership = Membership.objects.get(user=viewer.user)
    changed = client.put(
        f"/api/v1/members/{membership.id}/roles/", {"roles": ["admin"]}, content_type="application/json"
    )
    assert changed.status_code == 200 and changed.json()["roles"] == ["admin"]


def test_patch_changes_scopes_and_limits_but_not_the_secret(
    client, admin, api_key_factory, django_capture_on_commit_callbacks
):
    from audit.models import AuditEvent

    key, secret = api_key_factory(name="search", rpm_limit=10, roles=["viewer"])
    login(client, admin)
    team = client.post("/api/v1/teams/", {"name": "Platform"}, content_type="application/json").json()
    assert api_key_authenticate(secret).rpm_limit == 10  # cached in this process
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch(
            f"{LIST}{key.id}/",
            {"rpm_limit": 50, "team_id": team["id"], "allowed_prompts": ["greeting"]},
            content_type="application/json",
        )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["rpm_limit"], body["team_name"], body["allowed_prompts"], body["name"]) == (
        50,
        "Platform",
        ["greeting"],
        "search",
    )
    assert "secret" not in body
    principal = api_key_authenticate(secret)
    assert principal.rpm_limit == 50 and principal.allowed_prompts == ("greeting",)
    event = AuditEvent.objects.get(action="api_key.updated", target_id=str(key.id))
    assert event.before == {"rpm_limit": 10, "team_id": None, "allowed_prompts": []}
    assert event.after == {"rpm_limit": 50, "team_id": team["id"], "allowed_prompts": ["greeting"]}
    # null clears a limit; an unknown team, a bad limit or a past expiry are 400s naming the field.
    assert (
        client.patch(f"{LIST}{key.id}/", {"rpm_limit": None}, content_type="application/json").json()["rpm_limit"]
        is None
    )
    bad = client.patch(f"{LIST}{key.id}/", {"team_id": 10**6}, content_type="application/json")
    assert bad.status_code == 400 and bad.json()["error"]["details"] == {"param": "team_id"}
    bad = client.patch(f"{LIST}{key.id}/", {"tpm_limit": 0, "name": ""}, content_type="application/json")
    assert bad.status_code == 400 and set(bad.json()["error"]["details"]) == {"tpm_limit", "name"}
    past = client.patch(f"{LIST}{key.id}/", {"expires_at": "2001-01-01T00:00:00Z"}, content_type="application/json")
    assert past.status_code == 400 and past.json()["error"]["details"] == {"param": "expires_at"}


def test_patch_refuses_a_revoked_key_and_other_organisations(client, admin, outsider, viewer, api_key_factory):
    key, _ = api_key_factory(name="search")
    login(client, viewer)
    assert client.patch(f"{LIST}{key.id}/", {"name": "x"}, content_type="application/json").status_code == 403
    client.logout()
    login(client, outsider)
    assert client.patch(f"{LIST}{key.id}/", {"name": "x"}, content_type="application/json").status_code == 404
    client.logout()
    login(client, admin)
    client.post(f"{LIST}{key.id}/revoke/")
    refused = client.patch(f"{LIST}{key.id}/", {"name": "x"}, content_type="application/json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "api_key_revoked"
    key.refresh_from_db()
    assert key.name == "search"


def test_patch_is_described_in_the_schema(client, admin):
    login(client, admin)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/api-keys/{key_id}/"]["patch"]
    assert operation["operationId"] == "api_keys_update"
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    properties = schema["components"]["schemas"][body]["properties"]
    assert {"name", "team_id", "expires_at", "allowed_models", "rpm_limit", "cache_enabled"} <= set(properties)
    assert "secret" not in properties and "prefix" not in properties
    assert {"200", "400", "404", "409"} <= set(operation["responses"])
    teams = schema["paths"]["/api/v1/members/{membership_id}/teams/"]["put"]
    assert teams["operationId"] == "members_teams_set"


def test_member_teams_api(client, admin, viewer, other_organisation):
    from accounts.services import team_create
    from core.actors import Actor

    theirs = team_create(organisation=other_organisation, name="Theirs", actor=Actor.system())
    login(client, admin)
    team = client.post("/api/v1/teams/", {"name": "Platform"}, content_type="application/json").json()
    membership = Membership.objects.get(user=viewer.user)
    url = f"/api/v1/members/{membership.id}/teams/"
    changed = client.put(url, {"team_ids": [team["id"]]}, content_type="application/json")
    assert changed.status_code == 200 and changed.json()["team_ids"] == [team["id"]]
    assert [m["team_ids"] for m in client.get("/api/v1/members/").json()["results"]] == [[], [team["id"]]]
    foreign = client.put(url, {"team_ids": [theirs.id]}, content_type="application/json")
    assert foreign.status_code == 400 and foreign.json()["error"]["details"] == {"param": "team_ids"}
    assert list(membership.teams.values_list("id", flat=True)) == [team["id"]]
    assert client.put(url, {"team_ids": []}, content_type="application/json").json()["team_ids"] == []
