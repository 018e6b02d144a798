"""The management API for model routes, deployments and the request log (/api/v1/)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.roles import Role
from audit.models import AuditEvent
from core.actors import Actor
from proxy.models import Deployment, ModelRoute, RequestLog
from proxy.services import deployment_create
from tests.factories import RouteFactory
from tests.helpers import login

ACTOR = Actor.system("tests")
SECRET = "sk-live-THIS-MUST-NEVER-LEAK-0123456789"


@pytest.fixture
def route(organisation):
    return RouteFactory(organisation=organisation, name="gpt-small")


@pytest.fixture
def deployment(route):
    return deployment_create(
        route=route,
        name="primary",
        model="dev-small",
        api_base="http://127.0.0.1:9/v1",
        credential_secret=SECRET,
        actor=ACTOR,
    )


@pytest.fixture
def foreign_route(other_organisation):
    route = RouteFactory(organisation=other_organisation, name="theirs")
    deployment_create(route=route, name="d", model="m", api_base="http://127.0.0.1:9/v1", actor=ACTOR)
    return route


def _json(client, method: str, url: str, data=None, **extra):
    body = json.dumps(data) if data is not None else None
    return getattr(client, method)(url, data=body, content_type="application/json", **extra)


def test_admin_creates_route_and_it_is_audited(client, admin, organisation):
    login(client, admin)
    response = _json(
        client,
        "post",
        reverse("api-model-route-create"),
        {"name": "gpt-4o-mini", "description": "cheap", "strategy": "least_in_flight", "deadline_seconds": 20},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "gpt-4o-mini"
    assert body["strategy"] == "least_in_flight"
    assert body["deployments"] == []
    route = ModelRoute.objects.get(organisation=organisation, name="gpt-4o-mini")
    event = AuditEvent.objects.get(organisation_id=organisation.id, action="route.created")
    assert event.target_id == str(route.id)
    assert event.actor_label == admin.user.get_username()


def test_route_list_and_detail_show_deployments_without_credentials(client, admin, route, deployment):
    login(client, admin)
    listing = client.get(reverse("api-model-route-list"))
    detail = client.get(reverse("api-model-route-detail", args=[route.id]))
    deployments = client.get(reverse("api-deployment-list", args=[route.id]))
    one = client.get(reverse("api-deployment-detail", args=[deployment.id]))
    for response in (listing, detail, deployments, one):
        assert response.status_code == 200
        assert SECRET not in response.content.decode()
        assert deployment.credential_encrypted not in response.content.decode()
    assert listing.json()["results"][0]["deployments"][0]["credential"] == {"type": "secret", "env": None}
    assert one.json()["name"] == "primary"
    assert one.json()["health"]["state"] in {"unknown", "closed", "open", "half_open"}


def test_deployment_secret_is_write_only_everywhere(client, admin, organisation, route):
    login(client, admin)
    created = _json(
        client,
        "post",
        reverse("api-deployment-create", args=[route.id]),
        {
            "name": "openai",
            "model": "gpt-4o-mini",
            "api_base": "https://api.example.com/v1",
            "credential_secret": SECRET,
        },
    )
    assert created.status_code == 201, created.content
    assert SECRET not in created.content.decode()
    assert created.json()["credential"]["type"] == "secret"
    deployment = Deployment.objects.get(pk=created.json()["id"])
    assert deployment.credential_encrypted and SECRET not in deployment.credential_encrypted

    rotated = _json(
        client,
        "patch",
        reverse("api-deployment-update", args=[deployment.id]),
        {"credential_secret": SECRET + "-rotated", "weight": 3},
    )
    assert rotated.status_code == 200, rotated.content
    assert SECRET not in rotated.content.decode()
    assert rotated.json()["weight"] == 3
    events = AuditEvent.objects.filter(organisation_id=organisation.id, target_type="deployment")
    assert events.count() == 2
    for event in events:
        assert SECRET not in json.dumps([event.before, event.after])
    assert events.get(action="deployment.updated").after["credential"]["secret_changed"] is True

    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "model_routes_create" in text and "deployments_update" in text


def test_deployment_with_env_credential_shows_only_the_variable_name(client, admin, route):
    login(client, admin)
    response = _json(
        client,
        "post",
        reverse("api-deployment-create", args=[route.id]),
        {
            "name": "env",
            "model": "dev-small",
            "api_base": "http://127.0.0.1:9/v1",
            "credential_env": "STEWARD_UPSTREAM_OPENAI_KEY",
        },
    )
    assert response.status_code == 201
    assert response.json()["credential"] == {"type": "env", "env": "STEWARD_UPSTREAM_OPENAI_KEY"}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"name": "bad name with spaces"}, "name"),
        ({"name": "ok", "fallbacks": ["nope"]}, "fallbacks"),
        ({"name": "ok", "deadline_seconds": 0}, "deadline_seconds"),
    ],
)
def test_route_create_service_validation_uses_the_error_shape(client, admin, organisation, payload, param):
    login(client, admin)
    response = _json(client, "post", reverse("api-model-route-create"), payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["status"] == 400
    assert error["details"]["param"] == param
    assert error["message"]
    assert not ModelRoute.objects.filter(organisation=organisation).exists()


def test_route_create_input_validation_names_the_field(client, admin):
    login(client, admin)
    response = _json(client, "post", reverse("api-model-route-create"), {"strategy": "random"})
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert "name" in details and "strategy" in details


def test_duplicate_route_is_a_conflict(client, admin, route):
    login(client, admin)
    response = _json(client, "post", reverse("api-model-route-create"), {"name": route.name})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_deployment_create_rejects_bad_api_base(client, admin, route):
    login(client, admin)
    response = _json(
        client,
        "post",
        reverse("api-deployment-create", args=[route.id]),
        {"name": "x", "model": "m", "api_base": "ftp://nope"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["param"] == "api_base"
    assert not route.deployments.exists()


def test_route_update_changes_only_given_fields_and_is_audited(client, admin, organisation, route):
    login(client, admin)
    response = _json(client, "patch", reverse("api-model-route-update", args=[route.id]), {"cache_enabled": True})
    assert response.status_code == 200
    route.refresh_from_db()
    assert route.cache_enabled is True
    assert route.name == "gpt-small"
    event = AuditEvent.objects.get(organisation_id=organisation.id, action="route.updated")
    assert event.before["cache_enabled"] is False and event.after["cache_enabled"] is True


def test_route_delete_removes_deployments_and_refuses_while_a_fallback(client, admin, organisation, route, deployment):
    other = RouteFactory(organisation=organisation, name="big", fallbacks=[route.name])
    login(client, admin)
    refused = client.delete(reverse("api-model-route-delete", args=[route.id]))
    assert refused.status_code == 409
    assert ModelRoute.objects.filter(pk=route.pk).exists()

    assert client.delete(reverse("api-model-route-delete", args=[other.id])).status_code == 204
    assert client.delete(reverse("api-model-route-delete", args=[route.id])).status_code == 204
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert AuditEvent.objects.filter(organisation_id=organisation.id, action="route.deleted").count() == 2


def test_deployment_delete(client, admin, organisation, deployment):
    login(client, admin)
    assert client.delete(reverse("api-deployment-delete", args=[deployment.id])).status_code == 204
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert AuditEvent.objects.filter(organisation_id=organisation.id, action="deployment.deleted").exists()


def test_outsider_gets_404_for_another_organisations_objects(client, outsider, route, deployment):
    login(client, outsider)
    assert client.get(reverse("api-model-route-detail", args=[route.id])).status_code == 404
    assert _json(client, "patch", reverse("api-model-route-update", args=[route.id]), {"name": "x"}).status_code == 404
    assert client.delete(reverse("api-model-route-delete", args=[route.id])).status_code == 404
    assert client.get(reverse("api-deployment-list", args=[route.id])).status_code == 404
    create = _json(client, "post", reverse("api-deployment-create", args=[route.id]), {"name": "x", "model": "m"})
    assert create.status_code == 404
    assert client.get(reverse("api-deployment-detail", args=[deployment.id])).status_code == 404
    assert client.delete(reverse("api-deployment-delete", args=[deployment.id])).status_code == 404
    assert client.get(reverse("api-model-route-list")).json()["results"] == []
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    route.refresh_from_db()
    assert route.name == "gpt-small"


@pytest.mark.parametrize("persona", ["viewer", "prompt_engineer", "reviewer"])
def test_members_without_admin_get_403(client, request, persona, route, deployment):
    login(client, request.getfixturevalue(persona))
    assert client.get(reverse("api-model-route-list")).status_code == 403
    assert client.get(reverse("api-model-route-detail", args=[route.id])).status_code == 403
    assert _json(client, "post", reverse("api-model-route-create"), {"name": "x"}).status_code == 403
    patch = _json(client, "patch", reverse("api-deployment-update", args=[deployment.id]), {"weight": 5})
    assert patch.status_code == 403
    assert patch.json()["error"]["code"] == "permission_denied"
    assert client.get(reverse("api-request-log-list")).status_code == 403
    deployment.refresh_from_db()
    assert deployment.weight == 1


def test_api_key_with_admin_role_may_manage_and_is_the_audited_actor(client, api_key_factory, organisation):
    key, secret = api_key_factory(roles=[Role.ADMIN])
    response = _json(
        client, "post", reverse("api-model-route-create"), {"name": "via-key"}, HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 201
    event = AuditEvent.objects.get(organisation_id=organisation.id, action="route.created")
    assert event.actor_type == "api_key" and event.actor_id == str(key.id)


def test_api_key_without_roles_and_anonymous_are_refused(client, api_key_factory):
    _, secret = api_key_factory()
    assert client.get(reverse("api-model-route-list"), HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 403
    assert client.get(reverse("api-model-route-list")).status_code in (401, 403)


# --- request log -----------------------------------------------------------------------------


def _log(organisation, request_id: str, **kwargs) -> RequestLog:
    defaults = {
        "endpoint": "chat.completions",
        "model": "gpt-small",
        "status": "ok",
        "http_status": 200,
        "started_at": timezone.now(),
        "attempts": [{"n": 1, "deployment": "primary", "status": "ok", "http_status": 200}],
        "timings": {"authenticate": 0.1, "call_upstream": 4.2},
    }
    return RequestLog.objects.create(organisation=organisation, request_id=request_id, **{**defaults, **kwargs})


def test_request_log_api_filters_and_scopes(client, admin, organisation, other_organisation, api_key_factory):
    key, _ = api_key_factory()
    _log(organisation, "req-ok", api_key_id=key.id)
    _log(organisation, "req-err", status="error", http_status=502, model="big")
    _log(organisation, "req-old", started_at=timezone.now() - timedelta(days=3))
    _log(other_organisation, "req-foreign")
    login(client, admin)
    url = reverse("api-request-log-list")

    def ids(**params):
        response = client.get(url, params)
        assert response.status_code == 200, response.content
        return {r["request_id"] for r in response.json()["results"]}

    assert ids() == {"req-ok", "req-err", "req-old"}
    assert ids(status="error") == {"req-err"}
    assert ids(model="big") == {"req-err"}
    assert ids(api_key_id=key.id) == {"req-ok"}
    assert ids(date_from=(timezone.now() - timedelta(days=1)).date().isoformat()) == {"req-ok", "req-err"}
    bad = client.get(url, {"status": "bogus"})
    assert bad.status_code == 400 and "status" in bad.json()["error"]["details"]

    detail = client.get(reverse("api-request-log-detail", args=["req-ok"]))
    assert detail.status_code == 200
    assert detail.json()["attempts"][0]["deployment"] == "primary"
    assert client.get(reverse("api-request-log-detail", args=["req-foreign"])).status_code == 404


def test_proxy_settings_api_turns_body_storage_on_and_is_audited(client, admin, viewer, organisation):
    login(client, admin)
    assert client.get(reverse("api-proxy-settings-detail")).json() == {"store_bodies": False, "body_retention_days": 30}
    url = reverse("api-proxy-settings-update")
    response = _json(client, "patch", url, {"store_bodies": True, "body_retention_days": 7})
    assert response.status_code == 200
    assert response.json() == {"store_bodies": True, "body_retention_days": 7}
    event = AuditEvent.objects.get(organisation_id=organisation.id, action="proxy.settings_changed")
    assert event.after == {"store_bodies": True, "body_retention_days": 7}
    assert _json(client, "patch", url, {"body_retention_days": 0}).status_code == 400
    login(client, viewer)
    assert _json(client, "patch", url, {"store_bodies": False}).status_code == 403
    assert client.get(reverse("api-proxy-settings-detail")).json()["error"]["status"] == 403
