from __future__ import annotations

import pytest

from audit.models import AuditEvent
from core.actors import Actor
from core.crypto import secret_decrypt
from core.errors import Conflict, ValidationFailed
from proxy.models import Deployment, ModelRoute
from proxy.selectors import routing_table
from proxy.services import (
    deployment_create,
    deployment_delete,
    deployment_public,
    deployment_update,
    proxy_settings_update,
    route_create,
    route_delete,
    route_update,
)

ACTOR = Actor.system("tests")


@pytest.fixture
def route(organisation):
    return route_create(organisation=organisation, name="gpt-small", actor=ACTOR)


def test_route_create_is_audited(organisation):
    route = route_create(organisation=organisation, name="m1", actor=ACTOR, cache_enabled=True)
    event = AuditEvent.objects.get(organisation_id=organisation.id, action="route.created")
    assert event.target_id == str(route.id)
    assert event.after["cache_enabled"] is True


def test_route_name_unique_per_organisation(organisation, other_organisation, route):
    with pytest.raises(Conflict):
        route_create(organisation=organisation, name="gpt-small", actor=ACTOR)
    route_create(organisation=other_organisation, name="gpt-small", actor=ACTOR)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "ok", "strategy": "random"}, "strategy"),
        ({"name": "ok", "deadline_seconds": 0}, "deadline_seconds"),
        ({"name": "ok", "cache_ttl_seconds": 1.5}, "cache_ttl_seconds"),
        ({"name": "ok", "fallbacks": ["missing"]}, "fallbacks"),
        ({"name": "ok", "fallbacks": ["ok"]}, "fallbacks"),
    ],
)
def test_route_create_validates(organisation, kwargs, param):
    with pytest.raises(ValidationFailed) as exc:
        route_create(organisation=organisation, actor=ACTOR, **kwargs)
    assert exc.value.param == param
    assert not ModelRoute.objects.filter(organisation=organisation, name=kwargs["name"]).exists()


def test_fallback_must_be_same_organisation(organisation, other_organisation):
    route_create(organisation=other_organisation, name="theirs", actor=ACTOR)
    with pytest.raises(ValidationFailed):
        route_create(organisation=organisation, name="mine", fallbacks=["theirs"], actor=ACTOR)


def test_route_delete_refused_while_used_as_fallback(organisation, route):
    big = route_create(organisation=organisation, name="gpt-big", fallbacks=["gpt-small"], actor=ACTOR)
    with pytest.raises(Conflict):
        route_delete(route=route, actor=ACTOR)
    with pytest.raises(Conflict):
        route_update(route=route, name="renamed", actor=ACTOR)
    route_update(route=big, fallbacks=[], actor=ACTOR)
    route_delete(route=route, actor=ACTOR)
    assert not ModelRoute.objects.filter(pk=route.pk).exists()
    assert AuditEvent.objects.filter(action="route.deleted", target_id=str(route.pk)).exists()


def test_route_update_without_change_writes_no_event(route):
    before = AuditEvent.objects.count()
    route_update(route=route, strategy="weighted", actor=ACTOR)
    assert AuditEvent.objects.count() == before
    route_update(route=route, strategy="least_in_flight", actor=ACTOR)
    assert AuditEvent.objects.count() == before + 1


def test_deployment_secret_encrypted_and_never_public(route):
    d = deployment_create(
        route=route,
        name="a",
        model="gpt-4o-mini",
        api_base="https://api.example.com/v1/",
        credential_secret="sk-very-secret",
        actor=ACTOR,
    )
    d.refresh_from_db()
    assert d.api_base == "https://api.example.com/v1"
    assert "sk-very-secret" not in d.credential_encrypted
    assert secret_decrypt(d.credential_encrypted) == "sk-very-secret"
    public = deployment_public(d)
    assert public["credential"] == {"type": "secret", "env": None}
    assert "sk-very-secret" not in str(public)
    for event in AuditEvent.objects.filter(target_type="deployment"):
        assert "sk-very-secret" not in str(event.after) and d.credential_encrypted not in str(event.after)
    deployment_update(deployment=d, credential_secret="sk-other", actor=ACTOR)
    event = AuditEvent.objects.filter(action="deployment.updated").latest("seq")
    assert event.after["credential"]["secret_changed"] is True
    assert "sk-other" not in str(event.after)


def test_deployment_env_credential_resolved_in_routing_table(route, monkeypatch):
    monkeypatch.setenv("STEWARD_UPSTREAM_TEST_KEY", "from-env")
    deployment_create(
        route=route,
        name="a",
        model="openai/dev-small",
        api_base="http://127.0.0.1:9/v1",
        credential_env="STEWARD_UPSTREAM_TEST_KEY",
        actor=ACTOR,
    )
    deployment_create(route=route, name="off", model="x", api_base="http://127.0.0.1:9/v1", enabled=False, actor=ACTOR)
    table = routing_table(organisation_id=route.organisation_id)
    (target,) = table.routes["gpt-small"].deployments
    assert target.api_key == "from-env"
    assert target.model == "dev-small"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"api_base": ""}, "api_base"),
        ({"api_base": "ftp://x"}, "api_base"),
        ({"weight": 0}, "weight"),
        ({"timeout_seconds": -1}, "timeout_seconds"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"kind": "grpc"}, "kind"),
        ({"credential_env": "not a name"}, "credential_env"),
        ({"credential_env": "A", "credential_secret": "b"}, "credential_secret"),
    ],
)
def test_deployment_create_validates(route, kwargs, param):
    base = {"name": "d", "model": "m", "api_base": "http://127.0.0.1:1/v1"}
    with pytest.raises(ValidationFailed) as exc:
        deployment_create(route=route, actor=ACTOR, **{**base, **kwargs})
    assert exc.value.param == param
    assert not Deployment.objects.filter(route=route).exists()


def test_litellm_deployment_needs_no_api_base(route):
    from tests.helpers import free_unless_priced

    # litellm's bundled cost map no longer lists this model: it needs a price to be enabled.
    free_unless_priced(route.organisation, "anthropic/claude-3-5-haiku")
    d = deployment_create(route=route, name="claude", kind="litellm", model="anthropic/claude-3-5-haiku", actor=ACTOR)
    assert d.api_base == ""


def test_deployment_delete_audited_and_routing_table_invalidated(route, django_capture_on_commit_callbacks):
    d = deployment_create(route=route, name="a", model="dev-small", api_base="http://127.0.0.1:1/v1", actor=ACTOR)
    assert len(routing_table(organisation_id=route.organisation_id).routes["gpt-small"].deployments) == 1
    with django_capture_on_commit_callbacks(execute=True):
        deployment_delete(deployment=d, actor=ACTOR)
    assert routing_table(organisation_id=route.organisation_id).routes["gpt-small"].deployments == ()
    assert AuditEvent.objects.filter(action="deployment.deleted", target_id=str(d.pk)).exists()


def test_proxy_settings_update(organisation, django_capture_on_commit_callbacks):
    assert routing_table(organisation_id=organisation.id).store_bodies is False
    with django_capture_on_commit_callbacks(execute=True):
        row = proxy_settings_update(organisation=organisation, store_bodies=True, body_retention_days=7, actor=ACTOR)
    assert row.store_bodies and row.body_retention_days == 7
    assert routing_table(organisation_id=organisation.id).store_bodies is True
    with pytest.raises(ValidationFailed):
        proxy_settings_update(organisation=organisation, body_retention_days=0, actor=ACTOR)
